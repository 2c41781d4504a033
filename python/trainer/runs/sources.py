"""Where a run's examples come from, and how a run's params say so.

Three sources give the same kind of examples (the columns and types of
``datasets.training_examples``, in annotation_id order):

- the database: the views dbt built, or the same models compiled for a point
  in time (``--as-of``);
- a snapshot an earlier run stored (``--from-snapshot <run id or fingerprint>``),
  read without touching the views;
- the legacy CSV export (``--from-csv PATH``), split by the same rule.

Each source is recorded in the run's params (``source`` and what identifies it),
so a queued run can be rebuilt from its params and an auditor can see the origin.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from trainer.core.blob_store import ArtifactStore
from trainer.core.db import Database
from trainer.core.errors import ConfigurationError, DatasetError, InputFileError, NotFound
from trainer.data.dataset import STREAM_BATCH_ROWS
from trainer.results.store import ResultsStore

_HEX = re.compile(r"^[0-9a-f]+$")
MIN_FINGERPRINT_PREFIX = 8


@dataclass(frozen=True)
class LoadedExamples:
    examples: pa.Table
    # The point in time the examples describe, when there is one.
    as_of: datetime | None = None


@dataclass(frozen=True)
class ExampleStream:
    """The examples as record batches (EXAMPLE_SCHEMA, annotation_id order), to be
    read once inside the ``stream()`` block that made them."""

    batches: Iterator[pa.RecordBatch]
    as_of: datetime | None = None


class ExampleSource(Protocol):
    def params(self) -> dict[str, Any]: ...

    def load(self, database: Database, store: ResultsStore, artifacts: ArtifactStore) -> LoadedExamples: ...

    def stream(
        self, database: Database, store: ResultsStore, artifacts: ArtifactStore, batch_rows: int = ...
    ) -> AbstractContextManager[ExampleStream]: ...

    def live_pages(
        self, database: Database, store: ResultsStore, artifacts: ArtifactStore
    ) -> AbstractContextManager[Iterator[pa.RecordBatch] | None]:
        """The segments around the examples on their pages: every live segment now
        (trainer.data.live_segments) when the examples are the live views'; for a
        snapshot, the page context its run stored; None when there is none."""
        ...


@contextmanager
def _no_live_pages(*_args) -> Iterator[None]:
    yield None


@contextmanager
def _table_stream(loaded: LoadedExamples, batch_rows: int) -> Iterator[ExampleStream]:
    """A source that reads a whole table (a snapshot, the legacy CSV) streams its batches."""
    yield ExampleStream(iter(loaded.examples.to_batches(max_chunksize=batch_rows)), loaded.as_of)


@dataclass(frozen=True)
class DatabaseSource:
    """``datasets.training_examples`` now, or as of a UTC moment."""

    as_of: datetime | None = None

    def params(self) -> dict[str, Any]:
        return {"source": "database", "as_of": None if self.as_of is None else self.as_of.isoformat()}

    def load(self, database: Database, store: ResultsStore, artifacts: ArtifactStore) -> LoadedExamples:
        from trainer.data.dataset import read_training_examples

        query = None
        if self.as_of is not None:
            from trainer.data.point_in_time import training_examples_query

            query = training_examples_query(database.settings, self.as_of)
        with database.session() as session:
            examples = read_training_examples(session, query)
        if examples.num_rows == 0:
            self._nothing_as_of()
        return LoadedExamples(examples, self.as_of)

    @contextmanager
    def stream(
        self, database: Database, store: ResultsStore, artifacts: ArtifactStore, batch_rows: int = STREAM_BATCH_ROWS
    ) -> Iterator[ExampleStream]:
        """The examples straight from the database, batch by batch, sorted by it;
        the session (one transaction, one consistent state) lasts the whole block."""
        from trainer.data.dataset import stream_training_examples

        query = None
        if self.as_of is not None:
            from trainer.data.point_in_time import training_examples_query

            query = training_examples_query(database.settings, self.as_of)
        with database.session() as session:

            def batches() -> Iterator[pa.RecordBatch]:
                rows = 0
                for batch in stream_training_examples(session, query, batch_rows):
                    rows += batch.num_rows
                    yield batch
                if rows == 0:
                    self._nothing_as_of()

            yield ExampleStream(batches(), self.as_of)

    @contextmanager
    def live_pages(
        self, database: Database, store: ResultsStore, artifacts: ArtifactStore
    ) -> Iterator[Iterator[pa.RecordBatch] | None]:
        if self.as_of is not None:
            yield None  # the live pages are today's, not the point in time's
            return
        from trainer.data.live_segments import stream_live_segments

        with database.session() as session:
            yield stream_live_segments(session)

    def _nothing_as_of(self) -> None:
        if self.as_of is not None:
            raise DatasetError(
                f"no training examples as of {self.as_of:%Y-%m-%d %H:%M:%S} UTC: no annotation had a deciding "
                "acceptance by then (the event log may start later)"
            )


@dataclass(frozen=True)
class SnapshotSource:
    """The snapshot of an earlier run, named by run id or dataset fingerprint (prefix)."""

    reference: str

    def __post_init__(self) -> None:
        text = self.reference.strip().lower()
        if not text.isdigit() and not (_HEX.match(text) and len(text) >= MIN_FINGERPRINT_PREFIX):
            raise ConfigurationError(
                f"snapshot {self.reference!r} is neither a run id nor a dataset fingerprint "
                f"(at least {MIN_FINGERPRINT_PREFIX} hex digits)"
            )

    def params(self) -> dict[str, Any]:
        return {"source": "snapshot", "snapshot_of": self.reference.strip().lower()}

    def load(self, database: Database, store: ResultsStore, artifacts: ArtifactStore) -> LoadedExamples:
        from trainer.data.snapshots import read_snapshot

        run = self._run(store)
        examples = read_snapshot(artifacts, run.snapshot_uri, run.snapshot_sha256, run.dataset_fingerprint)
        return LoadedExamples(examples, run.dataset_as_of)

    def _run(self, store: ResultsStore, succeeded_only: bool = False):
        text = self.reference.strip().lower()
        if text.isdigit():
            run = store.get_run(int(text))
            if run.snapshot_uri is None:
                raise DatasetError(f"training run {run.run_id} recorded no snapshot ({run.status})")
            return run
        return store.find_snapshot(text, succeeded_only)

    def stream(
        self, database: Database, store: ResultsStore, artifacts: ArtifactStore, batch_rows: int = STREAM_BATCH_ROWS
    ) -> AbstractContextManager[ExampleStream]:
        return _table_stream(self.load(database, store, artifacts), batch_rows)

    @contextmanager
    def live_pages(
        self, database: Database, store: ResultsStore, artifacts: ArtifactStore
    ) -> Iterator[Iterator[pa.RecordBatch] | None]:
        """The page context the snapshot's run stored beside its model, if any. A
        fingerprint names a dataset, not a run: the pages are those of the latest
        succeeded run of it (the run being trained has recorded the same dataset by now)."""
        from trainer.results.run_outputs import read_page_context

        try:
            run = self._run(store, succeeded_only=True)
        except NotFound:  # only failed runs recorded it: they stored no pages
            yield None
            return
        table = read_page_context(artifacts, run)
        yield None if table is None else iter(table.to_batches())


@dataclass(frozen=True)
class CsvSource:
    """The legacy CSV export (one row per annotation), behind ``--from-csv``."""

    path: Path
    # The file's sha256 when the run was recorded (a queued run's params); by
    # default, the file's sha256 now, hashed once.
    recorded_sha256: str | None = None

    @functools.cached_property
    def _sha256(self) -> str | None:
        if self.recorded_sha256 is not None:
            return self.recorded_sha256
        try:
            return hashlib.sha256(Path(self.path).expanduser().resolve().read_bytes()).hexdigest()
        except OSError:
            return None  # the run then fails with the reason, when it loads

    def params(self) -> dict[str, Any]:
        return {"source": "csv", "csv_path": str(Path(self.path).expanduser().resolve()), "csv_sha256": self._sha256}

    def load(self, database: Database, store: ResultsStore, artifacts: ArtifactStore) -> LoadedExamples:
        from trainer.data.legacy_csv import read_legacy_csv
        from trainer.data.split_rule import SplitRule

        # read_legacy_csv hashes the bytes it parses: they must be the ones recorded.
        expected = self._sha256
        rule = SplitRule.from_project(overrides=read_split_overrides(database))
        legacy = read_legacy_csv(Path(self.path), rule)
        if expected is not None and legacy.sha256 != expected:
            raise InputFileError(f"{self.path}: the file changed while the run started; run it again")
        return LoadedExamples(legacy.examples)

    def stream(
        self, database: Database, store: ResultsStore, artifacts: ArtifactStore, batch_rows: int = STREAM_BATCH_ROWS
    ) -> AbstractContextManager[ExampleStream]:
        return _table_stream(self.load(database, store, artifacts), batch_rows)

    live_pages = _no_live_pages


def read_split_overrides(database: Database) -> dict[str, str]:
    """``training.split_overrides`` as {document_id: split}, read the way dbt reads
    it: unknown split values ignored, eval winning over train."""
    with database.session() as session:
        if not session.relation_exists("training", "split_overrides"):
            return {}
        rows = session.fetchall(
            "select document_id, split from training.split_overrides "
            "where document_id is not null and split in ('train', 'eval')"
        )
    pinned: dict[str, str] = {}
    for document_id, split in rows:
        if pinned.get(document_id) != "eval":
            pinned[document_id] = split
    return pinned


def source_from_params(params: dict[str, Any]) -> ExampleSource:
    """Rebuild the source a (queued) run was requested with."""
    kind = params.get("source", "database")
    if kind == "database":
        from trainer.data.point_in_time import parse_as_of

        as_of = params.get("as_of")
        return DatabaseSource(None if as_of is None else parse_as_of(as_of))
    if kind == "snapshot":
        return SnapshotSource(str(params.get("snapshot_of", "")))
    if kind == "csv":
        return CsvSource(Path(params["csv_path"]), params.get("csv_sha256"))
    raise ConfigurationError(f"unknown example source {kind!r} in the run's params")
