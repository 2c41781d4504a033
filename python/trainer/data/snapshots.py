"""Dataset snapshots: the exact examples of a run, stored as Parquet in the blob store.

A snapshot lives at ``snapshots/<dataset fingerprint>/<sha256 of the file>.parquet``.
The fingerprint (CONTRACT §5) covers ids, texts, labels and splits; the file also
holds what the fingerprint leaves out (page, boxes, who accepted and when), so the
file's own hash completes the address. Runs on the same examples write the same
bytes to the same place: one file, shared. The Parquet bytes depend only on the
rows, because the rows are put into one schema and one order first.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from trainer.core.blob_store import CHUNK_SIZE, ArtifactStore, sha256_hex
from trainer.core.errors import ArtifactError
from trainer.data.dataset import EXAMPLE_SCHEMA, as_examples, dataset_fingerprint

SNAPSHOTS_PREFIX = "snapshots"
# Fixed writer options: the same rows must always give the same bytes.
_PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "version": "2.6"}
ROW_GROUP_ROWS = 64 * 1024


@dataclass(frozen=True)
class Snapshot:
    uri: str
    sha256: str
    fingerprint: str
    # False when an earlier run had written the same file already.
    written: bool


def snapshot_bytes(examples: pa.Table) -> bytes:
    buffer = io.BytesIO()
    for _ in write_parquet(as_examples(examples).to_batches(), buffer):
        pass
    return buffer.getvalue()


def write_parquet(batches: Iterable[pa.RecordBatch], sink) -> Iterator[None]:
    """Write examples (already in EXAMPLE_SCHEMA and in order) as a snapshot file to
    ``sink``, one row group of ROW_GROUP_ROWS at a time, pausing after each so a
    caller can pass the bytes on. The bytes depend only on the rows, never on how
    they were batched: whole tables and streams of any batch size give the same file."""
    with pq.ParquetWriter(sink, EXAMPLE_SCHEMA, **_PARQUET_OPTIONS) as writer:
        for group in _row_groups(batches):
            # One contiguous chunk per column: the writer cuts data pages at chunk
            # boundaries too, so a row group made of small batches would otherwise
            # give other pages (other bytes) than the same rows read at once.
            writer.write_table(group.combine_chunks(), row_group_size=ROW_GROUP_ROWS)
            yield
    yield


def _row_groups(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= ROW_GROUP_ROWS:
            table = pa.Table.from_batches(pending, schema=EXAMPLE_SCHEMA)
            yield table.slice(0, ROW_GROUP_ROWS)
            rest = table.slice(ROW_GROUP_ROWS)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending, schema=EXAMPLE_SCHEMA)


def write_snapshot(store: ArtifactStore, examples: pa.Table, fingerprint: str) -> Snapshot:
    """Store the examples unless the identical file is stored already."""
    data = snapshot_bytes(examples)
    digest = sha256_hex(data)
    relative = f"{SNAPSHOTS_PREFIX}/{fingerprint}/{digest}.parquet"
    if store.exists(relative):
        return Snapshot(store.uri(relative), digest, fingerprint, written=False)
    uri, written_digest = store.write_bytes(relative, data)
    return Snapshot(uri, written_digest, fingerprint, written=True)


def spool_snapshot(batches: Iterable[pa.RecordBatch], directory: str | None = None) -> tuple[Path, str]:
    """Write examples (EXAMPLE_SCHEMA batches, in order) as a snapshot file to a new
    local temporary file (in ``directory``, by default TMPDIR), one row group at a
    time; return its path and sha256. The caller deletes the file."""
    with tempfile.NamedTemporaryFile(prefix="snapshot-", suffix=".parquet", dir=directory, delete=False) as handle:
        path = Path(handle.name)
        try:
            for _ in write_parquet(batches, handle):
                pass
        except BaseException:
            handle.close()
            path.unlink(missing_ok=True)
            raise
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as written:
            while chunk := written.read(CHUNK_SIZE):
                digest.update(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, digest.hexdigest()


def store_snapshot_file(store: ArtifactStore, path: Path, sha256: str, fingerprint: str) -> Snapshot:
    """Copy a spooled snapshot file (:func:`spool_snapshot`) into the store, unless
    the identical file is stored already; the same address as :func:`write_snapshot`."""
    relative = f"{SNAPSHOTS_PREFIX}/{fingerprint}/{sha256}.parquet"
    if store.exists(relative):
        return Snapshot(store.uri(relative), sha256, fingerprint, written=False)
    uri, written_digest = store.write_file(relative, path)
    if written_digest != sha256:
        store.delete(uri)
        raise ArtifactError(f"snapshot file {path} changed while it was being stored")
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
