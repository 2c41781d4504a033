"""Datasets on their way out: a run's snapshot (the exact examples it trained and
evaluated on) or the live ``datasets.training_examples``, as Parquet, JSONL or CSV.

Everything streams in record batches, so a dataset of any size leaves with flat
memory. Parquet of a whole snapshot is the stored file itself, byte for byte
(its sha256 is the one the run recorded). CSV and JSONL keep every text
byte-exact: newlines, carriage returns, quotes, commas, right-to-left marks and
emoji come back unchanged through any RFC 4180 reader or JSON parser.

The CLI (`export`) and the audit API both go through :func:`open_run_dataset`
and :func:`open_current_dataset`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.core.blob_store import ArtifactStore, verified_chunks
from trainer.core.db import Database
from trainer.core.errors import ArtifactError, ConfigurationError, DatasetError, InputFileError, NotFound
from trainer.core.settings import Settings
from trainer.data.dataset import (
    BUILD_HINT,
    DATASETS_SCHEMA,
    EXAMPLE_COLUMNS,
    EXAMPLE_SCHEMA,
    TRAINING_EXAMPLES,
    Fingerprint,
    as_example_batch,
)
from trainer.results.store import ResultsStore, TrainingRun

FORMATS = ("parquet", "jsonl", "csv")
SPLITS = ("all", "train", "eval")
MEDIA_TYPES = {
    "parquet": "application/vnd.apache.parquet",
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
}
BATCH_ROWS = 8192  # rows encoded at a time
READ_CHUNK = 1024 * 1024  # bytes of a stored file sent at a time


@dataclass
class DatasetStream:
    """One dataset in one format, as chunks of bytes; close it when done (or abandoned)."""

    format: str
    split: str
    rows: int
    fingerprint: str | None
    # The stored snapshot's sha256 (a run's dataset), whatever the format.
    snapshot_sha256: str | None
    # The sha256 of the bytes this stream yields, when known before sending.
    content_sha256: str | None
    chunks: Iterator[bytes]
    _cleanups: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    def close(self) -> None:
        close = getattr(self.chunks, "close", None)
        try:
            if close is not None:
                close()
        except ValueError:  # still running in another thread; its finally cleans up
            pass
        for cleanup in self._cleanups:
            cleanup()
        self._cleanups.clear()

    def __enter__(self) -> DatasetStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def check_choice(fmt: str, split: str) -> None:
    if fmt not in FORMATS:
        raise ConfigurationError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if split not in SPLITS:
        raise ConfigurationError(f"split {split!r} is not one of {', '.join(SPLITS)}")


def open_run_dataset(settings: Settings, run_id: int, fmt: str, split: str = "all") -> DatasetStream:
    """Stream run ``run_id``'s snapshot, produced only from bytes hashed as they were read.

    The file is opened once. Parquet of the whole snapshot is hashed through that
    handle (an altered file is refused before the first byte), then sent from the
    same handle while hashed again: bytes that differ cut the stream off before
    its end. Other formats are copied through that handle into an anonymous spool
    (no path reaches it) and checked before a byte is encoded, so the examples
    encoded are exactly the ones whose sha256 matched.
    """
    check_choice(fmt, split)
    run = ResultsStore(Database(settings)).get_run(run_id)
    if run.snapshot_uri is None or run.snapshot_sha256 is None:
        reason = f"{run.status}{': ' + run.error if run.error else ''}"
        raise NotFound(f"training run {run_id} recorded no dataset snapshot ({reason})")
    artifacts = ArtifactStore(settings.artifacts_url)
    rows = _split_rows(run, split)
    altered = (
        f"snapshot of training run {run_id} does not match its recorded sha256 {run.snapshot_sha256[:12]}…: "
        "it was altered"
    )
    whole_file = fmt == "parquet" and split == "all"
    handle = artifacts.open_read(run.snapshot_uri)
    spool = None
    try:
        # The store's read errors (a vanished file, S3 away) as one line naming the file.
        with artifacts._failures("read", run.snapshot_uri):
            if whole_file:
                if _sha256_of_handle(handle) != run.snapshot_sha256:
                    raise ArtifactError(altered)
                handle.seek(0)
            else:
                spool = tempfile.TemporaryFile(prefix="snapshot-")
                if _copy_hashing(handle, spool) != run.snapshot_sha256:
                    raise ArtifactError(altered)
                spool.seek(0)
    except BaseException:
        handle.close()
        if spool is not None:
            spool.close()
        raise
    if whole_file:
        chunks = verified_chunks(handle, run.snapshot_sha256, f"snapshot of training run {run_id}")
        stream = DatasetStream(fmt, split, rows, run.dataset_fingerprint, run.snapshot_sha256, run.snapshot_sha256, chunks)
        stream._cleanups.append(handle.close)
        return stream
    handle.close()
    batches = _parquet_batches(lambda: contextlib.nullcontext(spool), split, f"snapshot of training run {run_id}")
    stream = DatasetStream(fmt, split, rows, run.dataset_fingerprint, run.snapshot_sha256, None, encode_batches(batches, fmt))
    stream._cleanups.append(spool.close)
    return stream


def open_current_dataset(settings: Settings, fmt: str, split: str = "all") -> DatasetStream:
    """Stream ``datasets.training_examples`` as it is now.

    The view is read once, in annotation_id order, into a temporary Parquet file
    (TMPDIR), so the database is held only for that read and the answer is one
    consistent state however slowly it is sent. Its fingerprint is the one a run
    trained now would record, and its Parquet is the snapshot such a run would store.
    """
    check_choice(fmt, split)
    from trainer.data.snapshots import write_parquet

    database = Database(settings)
    # Anonymous (no path): nothing can swap the spool between its hash and its reading.
    handle = tempfile.TemporaryFile(prefix="training-examples-", suffix=".parquet")
    try:
        fingerprint = Fingerprint()
        counts: Counter[str] = Counter()
        digest = hashlib.sha256()

        def counted(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                fingerprint.update(batch)
                counts.update(batch.column("split").to_pylist())
                yield batch

        with database.session() as session:
            if not session.relation_exists(DATASETS_SCHEMA, TRAINING_EXAMPLES):
                raise DatasetError(
                    f"{DATASETS_SCHEMA}.{TRAINING_EXAMPLES} does not exist; " + BUILD_HINT.format(target=session.dialect)
                )
            # Byte order whatever the database's locale: the fingerprint's order.
            collate = session.bytewise_collation()
            query = (
                f"select {', '.join(EXAMPLE_COLUMNS)} from {DATASETS_SCHEMA}.{TRAINING_EXAMPLES} "
                f"order by annotation_id{collate}"
            )
            sink = _HashingFile(handle, digest)
            for _ in write_parquet(counted(session.stream_arrow(query, EXAMPLE_SCHEMA)), sink):
                pass
            handle.flush()
        handle.seek(0)
        if _sha256_of_handle(handle) != digest.hexdigest():
            raise DatasetError("the live dataset's spool changed after it was written")
        handle.seek(0)
    except BaseException:
        handle.close()
        raise
    rows = sum(counts.values()) if split == "all" else counts[split]
    if fmt == "parquet" and split == "all":
        chunks = verified_chunks(handle, digest.hexdigest(), "the live dataset")
        content_sha256 = digest.hexdigest()
    else:
        chunks = encode_batches(_parquet_batches(lambda: contextlib.nullcontext(handle), split), fmt)
        content_sha256 = None
    stream = DatasetStream(fmt, split, rows, fingerprint.hexdigest(), None, content_sha256, chunks)
    stream._cleanups.append(handle.close)
    return stream


def encode_batches(batches: Iterable[pa.RecordBatch], fmt: str) -> Iterator[bytes]:
    """Examples (EXAMPLE_SCHEMA batches) as chunks of ``fmt``."""
    if fmt == "parquet":
        from trainer.data.snapshots import write_parquet

        sink = _ChunkSink()
        for _ in write_parquet(batches, sink):
            if chunk := sink.take():
                yield chunk
    elif fmt == "jsonl":
        for batch in batches:
            yield "".join(
                json.dumps(_jsonable(row), ensure_ascii=False, separators=(",", ":")) + "\n"
                for row in batch.to_pylist()
            ).encode("utf-8")
    elif fmt == "csv":
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)  # RFC 4180: CRLF rows, quotes around fields with , " CR or LF
        writer.writerow(EXAMPLE_COLUMNS)
        yield buffer.getvalue().encode("utf-8")
        for batch in batches:
            buffer = io.StringIO(newline="")
            writer = csv.writer(buffer)
            for row in batch.to_pylist():
                writer.writerow(["" if row[name] is None else _text(row[name]) for name in EXAMPLE_COLUMNS])
            yield buffer.getvalue().encode("utf-8")
    else:
        raise ConfigurationError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")


def encode_examples(examples: pa.Table, fmt: str) -> Iterator[bytes]:
    """A table of examples as chunks of ``fmt``."""
    return encode_batches(examples.to_batches(max_chunksize=BATCH_ROWS), fmt)


@dataclass(frozen=True)
class ExportReport:
    run_id: int
    output: Path
    rows: int
    sha256: str
    fingerprint: str


def export_run(settings: Settings, run_id: int, fmt: str, output: Path, split: str = "all") -> ExportReport:
    """Write run ``run_id``'s snapshot to ``output`` (atomically: a failure leaves nothing)."""
    output = Path(output)
    if output.is_dir():
        raise InputFileError(f"{output}: is a directory; give a file name")
    with open_run_dataset(settings, run_id, fmt, split) as stream:
        digest = write_local_file(output, stream.chunks)
    return ExportReport(run_id, output, stream.rows, digest, stream.fingerprint)


def _split_rows(run: TrainingRun, split: str) -> int:
    if split == "train":
        return run.train_examples or 0
    if split == "eval":
        return run.eval_examples or 0
    return (run.train_examples or 0) + (run.eval_examples or 0)


def _sha256_of_handle(handle) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(READ_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _copy_hashing(source, target) -> str:
    digest = hashlib.sha256()
    while chunk := source.read(READ_CHUNK):
        digest.update(chunk)
        target.write(chunk)
    target.flush()
    return digest.hexdigest()


def _parquet_batches(opener: Callable, split: str, name: str = "dataset") -> Iterator[pa.RecordBatch]:
    with opener() as handle:
        try:
            # pre_buffer (pyarrow's default) keeps every block read ahead until the file
            # closes: memory would grow with the snapshot (apache/arrow#39808).
            parquet = pq.ParquetFile(handle, pre_buffer=False)
        except (pa.ArrowException, OSError) as exc:
            raise ArtifactError(f"{name} is not a readable Parquet file: {exc}") from exc
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            batch = as_example_batch(batch)
            if split != "all":
                batch = batch.filter(pc.equal(batch.column("split"), split))
            if batch.num_rows:
                yield batch


def write_local_file(output: Path, chunks: Iterable[bytes]) -> str:
    """Write ``chunks`` to a local file whole or not at all (a reader never sees half of
    it); return their sha256. An OSError becomes one InputFileError line naming the file."""
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


class _ChunkSink(io.RawIOBase):
    """A write-only file that keeps what was written until :meth:`take` hands it on."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        self._parts.append(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


class _HashingFile(io.RawIOBase):
    """Writes through to a file while hashing what goes in; closing it leaves the
    file open for its owner to read back."""

    def __init__(self, handle, digest) -> None:
        super().__init__()
        self._handle = handle
        self._digest = digest

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._digest.update(data)
        return self._handle.write(data)

    def tell(self) -> int:
        return self._handle.tell()

    def flush(self) -> None:
        self._handle.flush()


def _text(value) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _jsonable(row: dict) -> dict:
    return {name: (row[name].isoformat() if isinstance(row[name], datetime) else row[name]) for name in EXAMPLE_COLUMNS}
