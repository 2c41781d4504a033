"""Reading the dataset relations built by dbt, and fingerprinting what was read."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from trainer.core.db import Session
from trainer.core.errors import DatasetError

DATASETS_SCHEMA = "datasets"
TRAINING_EXAMPLES = "training_examples"
EXAMPLE_COLUMNS = (
    "annotation_id",
    "document_id",
    "page",
    "x0",
    "y0",
    "x1",
    "y1",
    "text",
    "label",
    "accepted_at",
    "accepted_by",
    "accepted_event_id",
    "split",
)
# The fields that identify an example for the fingerprint (CONTRACT §5: ids,
# texts, labels, splits). Boxes and acceptance metadata are deliberately out:
# the legacy CSV export, which has no boxes, must fingerprint the same.
FINGERPRINT_FIELDS = ("annotation_id", "document_id", "split", "label", "text")
# The examples' Arrow types, the same whatever the engine (or CSV) they came from,
# so a snapshot of the same rows is the same file.
EXAMPLE_SCHEMA = pa.schema(
    [
        ("annotation_id", pa.string()),
        ("document_id", pa.string()),
        ("page", pa.int32()),
        ("x0", pa.float64()),
        ("y0", pa.float64()),
        ("x1", pa.float64()),
        ("y1", pa.float64()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("accepted_at", pa.timestamp("us")),
        ("accepted_by", pa.string()),
        ("accepted_event_id", pa.int64()),
        ("split", pa.string()),
    ]
)
assert tuple(EXAMPLE_SCHEMA.names) == EXAMPLE_COLUMNS
_FINGERPRINT_DOMAIN = b"training-db-pipeline/training-examples/v1\n"

BUILD_HINT = "build the datasets first: dbt build --profiles-dir profiles --target {target}"


# Rows per record batch when the examples are read as a stream.
STREAM_BATCH_ROWS = 65_536


def _examples_relation(session: Session, query: str | None) -> str:
    if query is None:
        if not session.relation_exists(DATASETS_SCHEMA, TRAINING_EXAMPLES):
            raise DatasetError(
                f"{DATASETS_SCHEMA}.{TRAINING_EXAMPLES} does not exist; " + BUILD_HINT.format(target=session.dialect)
            )
        return f"{DATASETS_SCHEMA}.{TRAINING_EXAMPLES}"
    return f"({query}) as training_examples"


def read_training_examples(session: Session, query: str | None = None) -> pa.Table:
    """All rows of ``datasets.training_examples`` (or of ``query``, the same
    models compiled inline for a point in time), sorted by annotation_id (bytewise)."""
    relation = _examples_relation(session, query)
    columns = ", ".join(EXAMPLE_COLUMNS)
    return as_examples(session.fetch_arrow(f"select {columns} from {relation}"))


def stream_training_examples(
    session: Session, query: str | None = None, batch_rows: int = STREAM_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The rows :func:`read_training_examples` returns, in the same order, as record
    batches of :data:`EXAMPLE_SCHEMA` (at most ``batch_rows`` rows each), never more
    than one batch at a time in this process. The database sorts them, in byte order
    whatever its locale; :class:`Fingerprint` refuses them if it did not."""
    relation = _examples_relation(session, query)
    collate = session.bytewise_collation()
    sql = f"select {', '.join(EXAMPLE_COLUMNS)} from {relation} order by annotation_id{collate}"
    for batch in session.stream_arrow(sql, EXAMPLE_SCHEMA, batch_rows):
        if batch.num_rows:
            yield batch.replace_schema_metadata(None)


def as_examples(table: pa.Table) -> pa.Table:
    """The examples in :data:`EXAMPLE_SCHEMA` types and annotation_id order."""
    try:
        table = table.select(list(EXAMPLE_COLUMNS)).cast(EXAMPLE_SCHEMA)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DatasetError(f"the examples do not have the expected columns and types: {exc}") from exc
    return sort_examples(table.replace_schema_metadata(None))


def sort_examples(table: pa.Table) -> pa.Table:
    """Sort by annotation_id in byte order, which no database locale can change."""
    if table.num_rows == 0:
        return table
    return table.take(pc.sort_indices(table, sort_keys=[("annotation_id", "ascending")]))


def dataset_fingerprint(table: pa.Table) -> str:
    """sha256 over the examples' ids, texts, labels and splits, in annotation_id order.

    Each field is length-prefixed, so no two different datasets share an encoding.
    """
    fingerprint = Fingerprint()
    for batch in sort_examples(table).to_batches():
        fingerprint.update(batch)
    return fingerprint.hexdigest()


class Fingerprint:
    """:func:`dataset_fingerprint` computed batch by batch, for datasets read as a
    stream in annotation_id byte order (refused when they are not in that order)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256(_FINGERPRINT_DOMAIN)
        self._last_id: str | None = None

    def update(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        columns = [batch.column(name).to_pylist() for name in FINGERPRINT_FIELDS]
        ids = columns[0]
        # Python compares str by code point, which is UTF-8 byte order.
        if (self._last_id is not None and ids[0] < self._last_id) or any(a > b for a, b in zip(ids, ids[1:])):
            raise DatasetError("examples streamed for fingerprinting are not in annotation_id order")
        self._last_id = ids[-1]
        digest = self._digest
        for values in zip(*columns):
            for value in values:
                encoded = value.encode("utf-8")
                digest.update(len(encoded).to_bytes(8, "big"))
                digest.update(encoded)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def as_example_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """One batch of examples in :data:`EXAMPLE_SCHEMA` types (order untouched)."""
    try:
        return batch.select(list(EXAMPLE_COLUMNS)).cast(EXAMPLE_SCHEMA)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DatasetError(f"the examples do not have the expected columns and types: {exc}") from exc


@dataclass(frozen=True)
class DatasetSummary:
    """Examples and distinct documents per split and label."""

    examples: dict[tuple[str, str], int]
    documents: dict[tuple[str, str], int]

    def split_size(self, split: str) -> int:
        return sum(count for (side, _), count in self.examples.items() if side == split)

    def labels(self, split: str) -> list[str]:
        return sorted(label for (side, label) in self.examples if side == split)

    def to_rows(self) -> list[dict]:
        """One dict per (split, label), like ``datasets.dataset_summary``, for JSON."""
        return [
            {"split": split, "label": label, "examples": count, "documents": self.documents[(split, label)]}
            for (split, label), count in sorted(self.examples.items())
        ]


def summarize(table: pa.Table) -> DatasetSummary:
    counter = SummaryCounter()
    for batch in table.to_batches():
        counter.update(batch)
    return counter.summary()


class SummaryCounter:
    """:func:`summarize` computed batch by batch (any order, any batching)."""

    def __init__(self) -> None:
        self._examples: Counter[tuple[str, str]] = Counter()
        self._documents: set[tuple[str, str, str]] = set()

    def update(self, batch: pa.RecordBatch) -> None:
        splits = batch.column("split").to_pylist()
        labels = batch.column("label").to_pylist()
        documents = batch.column("document_id").to_pylist()
        self._examples.update(zip(splits, labels))
        self._documents.update(zip(splits, labels, documents))

    def summary(self) -> DatasetSummary:
        distinct = Counter({key: 0 for key in self._examples})
        for key in self._documents:
            distinct[key[:2]] += 1
        return DatasetSummary(examples=dict(self._examples), documents=dict(distinct))


def check_trainable(summary: DatasetSummary) -> None:
    """Refuse datasets no classifier can be fitted or measured on, saying why."""
    total = sum(summary.examples.values())
    if total == 0:
        raise DatasetError(
            "no training examples: datasets.training_examples is empty (no annotation's deciding event "
            "is an acceptance of a non-blank label on a live document with non-blank text)"
        )
    train, evaluation = summary.split_size("train"), summary.split_size("eval")
    if train == 0:
        raise DatasetError(f"the train split is empty: all {total} examples are in eval (lower eval_percent)")
    if evaluation == 0:
        raise DatasetError(
            f"the eval split is empty: all {total} examples are in train; add documents or raise eval_percent"
        )
    train_labels = summary.labels("train")
    if len(train_labels) < 2:
        raise DatasetError(
            f"the train split has only one label ({train_labels[0]!r}); a classifier needs at least two"
        )
