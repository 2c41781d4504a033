"""Exporting a run's snapshot: the exact examples it trained and evaluated on.

Parquet of the whole snapshot is the stored file itself, byte for byte (its
sha256 is the one the run recorded). CSV and JSONL keep every text byte-exact:
newlines, carriage returns, quotes, commas, right-to-left marks and emoji come
back unchanged through any RFC 4180 reader or JSON parser.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from trainer.artifacts import ArtifactStore
from trainer.dataset import EXAMPLE_COLUMNS
from trainer.db import Database
from trainer.errors import ConfigurationError, DatasetError, InputFileError
from trainer.results_store import ResultsStore
from trainer.settings import Settings

FORMATS = ("parquet", "jsonl", "csv")
SPLITS = ("all", "train", "eval")


@dataclass(frozen=True)
class ExportReport:
    run_id: int
    output: Path
    rows: int
    sha256: str
    fingerprint: str


def load_run_snapshot(settings: Settings, run_id: int) -> tuple[bytes, pa.Table, str]:
    """The stored snapshot of a run: its raw bytes, its examples and its fingerprint."""
    from trainer.snapshots import decode_snapshot, read_snapshot_bytes

    store = ResultsStore(Database(settings))
    run = store.get_run(run_id)
    if run.snapshot_uri is None:
        raise DatasetError(f"training run {run_id} recorded no snapshot ({run.status}{': ' + run.error if run.error else ''})")
    raw = read_snapshot_bytes(ArtifactStore(settings.artifacts_url), run.snapshot_uri, run.snapshot_sha256)
    return raw, decode_snapshot(raw, run.snapshot_uri, run.dataset_fingerprint), run.dataset_fingerprint


def select_split(examples: pa.Table, split: str) -> pa.Table:
    if split not in SPLITS:
        raise ConfigurationError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if split == "all":
        return examples
    return examples.filter(pc.equal(examples.column("split"), split))


def encode_examples(examples: pa.Table, fmt: str) -> Iterator[bytes]:
    """The examples in ``fmt`` as chunks of bytes (streamable)."""
    if fmt == "parquet":
        from trainer.snapshots import snapshot_bytes

        yield snapshot_bytes(examples)
    elif fmt == "jsonl":
        for batch in examples.to_batches(max_chunksize=4096):
            yield "".join(
                json.dumps(_jsonable(row), ensure_ascii=False, separators=(",", ":")) + "\n"
                for row in batch.to_pylist()
            ).encode("utf-8")
    elif fmt == "csv":
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)  # RFC 4180: CRLF rows, quotes around fields with , " CR or LF
        writer.writerow(EXAMPLE_COLUMNS)
        yield buffer.getvalue().encode("utf-8")
        for batch in examples.to_batches(max_chunksize=4096):
            buffer = io.StringIO(newline="")
            writer = csv.writer(buffer)
            for row in batch.to_pylist():
                writer.writerow(["" if row[name] is None else _text(row[name]) for name in EXAMPLE_COLUMNS])
            yield buffer.getvalue().encode("utf-8")
    else:
        raise ConfigurationError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")


def export_run(settings: Settings, run_id: int, fmt: str, output: Path, split: str = "all") -> ExportReport:
    """Write run ``run_id``'s snapshot to ``output`` (atomically: a failure leaves nothing)."""
    if fmt not in FORMATS:
        raise ConfigurationError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    raw, examples, fingerprint = load_run_snapshot(settings, run_id)
    selected = select_split(examples, split)
    chunks = iter([raw]) if fmt == "parquet" and split == "all" else encode_examples(selected, fmt)
    output = Path(output)
    digest = _write_atomically(output, chunks)
    return ExportReport(run_id, output, selected.num_rows, digest, fingerprint)


def _write_atomically(output: Path, chunks: Iterator[bytes]) -> str:
    if output.is_dir():
        raise InputFileError(f"{output}: is a directory; give a file name")
    temporary = output.with_name(f".{output.name}.partial-{uuid.uuid4().hex}")
    digest = hashlib.sha256()
    try:
        with open(temporary, "wb") as handle:
            for chunk in chunks:
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(output)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise InputFileError(f"{output}: cannot write: {exc.strerror or exc}") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def _text(value) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _jsonable(row: dict) -> dict:
    return {name: (row[name].isoformat() if isinstance(row[name], datetime) else row[name]) for name in EXAMPLE_COLUMNS}
