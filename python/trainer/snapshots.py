"""Dataset snapshots: the exact examples of a run, stored as Parquet in the blob store.

A snapshot lives at ``snapshots/<dataset fingerprint>/<sha256 of the file>.parquet``.
The fingerprint (CONTRACT §5) covers ids, texts, labels and splits; the file also
holds what the fingerprint leaves out (page, boxes, who accepted and when), so the
file's own hash completes the address. Runs on the same examples write the same
bytes to the same place: one file, shared. The Parquet bytes depend only on the
rows, because the rows are put into one schema and one order first.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from trainer.artifacts import ArtifactStore, sha256_hex
from trainer.dataset import as_examples, dataset_fingerprint
from trainer.errors import ArtifactError

SNAPSHOTS_PREFIX = "snapshots"
# Fixed writer options: the same rows must always give the same bytes.
_PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "row_group_size": 64 * 1024, "version": "2.6"}


@dataclass(frozen=True)
class Snapshot:
    uri: str
    sha256: str
    fingerprint: str
    # False when an earlier run had written the same file already.
    written: bool


def snapshot_bytes(examples: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(as_examples(examples), buffer, **_PARQUET_OPTIONS)
    return buffer.getvalue()


def write_snapshot(store: ArtifactStore, examples: pa.Table, fingerprint: str) -> Snapshot:
    """Store the examples unless the identical file is stored already."""
    data = snapshot_bytes(examples)
    digest = sha256_hex(data)
    relative = f"{SNAPSHOTS_PREFIX}/{fingerprint}/{digest}.parquet"
    if store.exists(relative):
        return Snapshot(store.uri(relative), digest, fingerprint, written=False)
    uri, written_digest = store.write_bytes(relative, data)
    return Snapshot(uri, written_digest, fingerprint, written=True)


def read_snapshot(store: ArtifactStore, uri: str, sha256: str, fingerprint: str | None = None) -> pa.Table:
    """Read a snapshot back, refusing it when its bytes or its examples are not
    the ones recorded."""
    return decode_snapshot(read_snapshot_bytes(store, uri, sha256), uri, fingerprint)


def read_snapshot_bytes(store: ArtifactStore, uri: str, sha256: str) -> bytes:
    """The stored file, refused when it is not the one recorded."""
    data = store.read_bytes(uri)
    if sha256_hex(data) != sha256:
        raise ArtifactError(f"snapshot {uri} does not match its recorded sha256 {sha256[:12]}…: it was altered")
    return data


def decode_snapshot(data: bytes, uri: str, fingerprint: str | None = None) -> pa.Table:
    try:
        examples = as_examples(pq.read_table(io.BytesIO(data)))
    except (pa.ArrowException, OSError) as exc:
        raise ArtifactError(f"snapshot {uri} is not a readable Parquet file: {exc}") from exc
    if fingerprint is not None and dataset_fingerprint(examples) != fingerprint:
        raise ArtifactError(f"snapshot {uri} does not hold the examples of dataset {fingerprint[:12]}…")
    return examples
