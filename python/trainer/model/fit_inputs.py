"""What a training run keeps of its examples, taken from them in one streamed pass.

The examples arrive as record batches (EXAMPLE_SCHEMA, annotation_id order) and go,
batch by batch and never all at once, into:

- the snapshot file (spooled to a local temporary file, then stored: the same bytes
  as a snapshot written from the whole table),
- the incremental :class:`~trainer.data.dataset.Fingerprint` (which refuses them out of order),
- the dataset summary (examples and documents per split and label),
- the compact inputs of the fit: each distinct text once, and per example only an
  integer index into those texts, a label code and a train flag.

The fit then needs one vector per *distinct* text, and fits on the distinct
(text, label) pairs of the train split weighted by how many examples share them,
which is the same objective as one row per example (:func:`row_order`); each
distinct text is predicted once for the metrics (:func:`text_probabilities`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.data.dataset import DatasetSummary, Fingerprint, SummaryCounter


@dataclass(frozen=True)
class TrainingInputs:
    """The examples reduced to what the fit and the metrics need."""

    texts: list[str]  # each distinct text once, in order of first appearance
    text_index: np.ndarray  # per example: its text's index in ``texts``
    classes: list[str]  # every label of the examples, sorted
    label_code: np.ndarray  # per example: its label's index in ``classes``
    is_train: np.ndarray  # per example: in the train split (else eval)
    # Where each example sits (trainer.model.segment_features) and what it is, for the
    # features beyond the text, the predictions file and the label issues.
    annotation_id: pa.ChunkedArray
    document_id: pa.ChunkedArray
    document_code: np.ndarray  # per example: one int per document_id
    page: np.ndarray  # per example: 0 when null
    boxes: np.ndarray  # per example: x0, y0, x1, y1, NaN when null

    @property
    def rows(self) -> int:
        return len(self.text_index)

    def labels(self, mask: np.ndarray) -> np.ndarray:
        """The labels (str) of the examples selected by ``mask``."""
        return np.asarray(self.classes, dtype=object)[self.label_code[mask]]

    def group_keys(self, mask: np.ndarray) -> np.ndarray:
        """One int per (text, label) pair, for the examples selected by ``mask``."""
        return self.text_index[mask].astype(np.int64) * len(self.classes) + self.label_code[mask]

    def train_groups(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """The distinct (text, label) pairs of the train split, ordered by text index
        then label: (text index, label, number of train examples) of each."""
        unique, counts = np.unique(self.group_keys(self.is_train), return_counts=True)
        text_index, label_code = np.divmod(unique, len(self.classes))
        return text_index, [self.classes[code] for code in label_code], counts


class _InputsBuilder:
    def __init__(self) -> None:
        self._texts: dict[str, int] = {}
        self._labels: dict[str, int] = {}
        self._text_index: list[np.ndarray] = []
        self._label_code: list[np.ndarray] = []
        self._is_train: list[np.ndarray] = []
        self._documents: dict[str, int] = {}
        self._annotation_id: list[pa.Array] = []
        self._document_id: list[pa.Array] = []
        self._document_code: list[np.ndarray] = []
        self._page: list[np.ndarray] = []
        self._boxes: list[np.ndarray] = []

    def update(self, batch: pa.RecordBatch) -> None:
        texts, labels = self._texts, self._labels
        self._text_index.append(
            np.fromiter((texts.setdefault(text, len(texts)) for text in batch.column("text").to_pylist()),
                        dtype=np.int32, count=batch.num_rows)
        )
        self._label_code.append(
            np.fromiter((labels.setdefault(label, len(labels)) for label in batch.column("label").to_pylist()),
                        dtype=np.int32, count=batch.num_rows)
        )
        is_train = pc.fill_null(pc.equal(batch.column("split"), "train"), False)
        self._is_train.append(is_train.to_numpy(zero_copy_only=False).astype(bool))
        documents = self._documents
        self._annotation_id.append(batch.column("annotation_id"))
        self._document_id.append(batch.column("document_id"))
        self._document_code.append(
            np.fromiter((documents.setdefault(document, len(documents)) for document in batch.column("document_id").to_pylist()),
                        dtype=np.int32, count=batch.num_rows)
        )
        self._page.append(pc.fill_null(batch.column("page"), 0).to_numpy(zero_copy_only=False).astype(np.int32))
        self._boxes.append(
            np.column_stack([
                pc.fill_null(batch.column(name), float("nan")).to_numpy(zero_copy_only=False).astype(np.float64)
                for name in ("x0", "y0", "x1", "y1")
            ]).reshape(batch.num_rows, 4)
        )

    def finish(self) -> TrainingInputs:
        def joined(parts: list[np.ndarray], dtype) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        classes = sorted(self._labels)
        # Codes were handed out in order of appearance; renumber them in sorted order.
        renumber = np.zeros(len(self._labels), dtype=np.int32)
        for label, code in self._labels.items():
            renumber[code] = classes.index(label)
        return TrainingInputs(
            texts=list(self._texts),
            text_index=joined(self._text_index, np.int32),
            classes=classes,
            label_code=renumber[joined(self._label_code, np.int32)],
            is_train=joined(self._is_train, bool),
            annotation_id=pa.chunked_array(self._annotation_id, type=pa.string()),
            document_id=pa.chunked_array(self._document_id, type=pa.string()),
            document_code=joined(self._document_code, np.int32),
            page=joined(self._page, np.int32),
            boxes=np.concatenate(self._boxes) if self._boxes else np.zeros((0, 4)),
        )


@dataclass(frozen=True)
class CollectedExamples:
    fingerprint: str
    summary: DatasetSummary
    inputs: TrainingInputs
    # The snapshot, spooled to a local file the caller stores and then deletes.
    snapshot_path: Path
    snapshot_sha256: str

    def discard_snapshot_file(self) -> None:
        self.snapshot_path.unlink(missing_ok=True)


def collect_examples(batches: Iterable[pa.RecordBatch], spool_directory: str | None = None) -> CollectedExamples:
    """Read ``batches`` (EXAMPLE_SCHEMA, annotation_id order) once: snapshot file,
    fingerprint, summary and training inputs, holding one batch (and one snapshot
    row group) at a time besides the compact inputs."""
    from trainer.data.snapshots import spool_snapshot

    fingerprint = Fingerprint()
    summary = SummaryCounter()
    inputs = _InputsBuilder()

    def tapped() -> Iterator[pa.RecordBatch]:
        for batch in batches:
            fingerprint.update(batch)  # first: it refuses examples out of order
            summary.update(batch)
            inputs.update(batch)
            yield batch

    path, sha256 = spool_snapshot(tapped(), spool_directory)
    return CollectedExamples(fingerprint.hexdigest(), summary.summary(), inputs.finish(), path, sha256)


@dataclass(frozen=True)
class RowOrder:
    """The rows the fit and the metrics need, and no others: one per distinct
    (text, label) pair of the train split, then one per distinct text in no such
    pair (texts only eval has). The vectors are asked for in this order, so the
    fit's input is a slice of them, never a copy."""

    train_text: np.ndarray  # the text index of each train row
    train_keys: np.ndarray  # the (text, label) key of each train row (TrainingInputs.group_keys), ascending
    train_labels: list[str]
    train_counts: np.ndarray  # train examples with that text and label: the sample weights
    other_text: np.ndarray  # the text index of each eval-only row

    @property
    def train_rows(self) -> int:
        return len(self.train_text)

    @property
    def text_rows(self) -> np.ndarray:
        """The text index of every row, train rows first."""
        return np.concatenate([self.train_text, self.other_text])

    def texts(self, inputs: TrainingInputs) -> list[str]:
        """The text of every row (a text with two train labels is there twice)."""
        return [inputs.texts[i] for i in self.text_rows]


def row_order(inputs: TrainingInputs) -> RowOrder:
    train_text, train_labels, train_counts = inputs.train_groups()
    train_keys = np.unique(inputs.group_keys(inputs.is_train))
    other_text = np.setdiff1d(np.arange(len(inputs.texts)), train_text)
    return RowOrder(train_text, train_keys, train_labels, train_counts, other_text)


def train_weights(inputs: TrainingInputs, order: RowOrder, mask: np.ndarray) -> np.ndarray:
    """Sample weights over the row order's train rows that fit on the train examples
    selected by ``mask`` only: each row weighs its number of such examples, rows of
    none weigh 0. A fit on a subset of the examples then needs no copy of the vectors."""
    keys, counts = np.unique(inputs.group_keys(mask & inputs.is_train), return_counts=True)
    weights = np.zeros(order.train_rows, dtype=np.float64)
    weights[np.searchsorted(order.train_keys, keys)] = counts
    return weights


def text_probabilities(predict_proba, order: RowOrder, vectors: np.ndarray, texts: int, chunk_rows: int = 65_536):
    """``predict_proba`` of every distinct text (row i for text i) from the row order's
    rows of ``vectors``, ``chunk_rows`` at a time; an example takes its text's row."""
    text_rows = order.text_rows
    result = None
    for start in range(0, len(vectors), chunk_rows):
        probabilities = predict_proba(vectors[start : start + chunk_rows])
        if result is None:
            result = np.empty((texts, probabilities.shape[1]), dtype=probabilities.dtype)
        result[text_rows[start : start + chunk_rows]] = probabilities
    return result


@dataclass(frozen=True)
class PageContext:
    """The live segments on the examples' pages that are not examples themselves
    (pending, rejected, or accepted with a blank label): the rest of the page the
    app shows and ``propose`` predicts with. They are never fitted on or measured;
    they are the neighbours and page-mates the layout and neighbour features see."""

    text_index: np.ndarray  # per segment: its text's index in the (extended) TrainingInputs.texts
    document_code: np.ndarray  # per segment: the code of its document among the examples'
    page: np.ndarray  # 0 when null
    boxes: np.ndarray  # x0, y0, x1, y1, NaN when null
    # The segments as read (annotation_id, document_id, page, x0…y1, text): what the
    # run stores beside its model, so a retrain from its snapshot sees the same pages.
    table: pa.Table | None = None

    @property
    def rows(self) -> int:
        return len(self.text_index)


NO_PAGE_CONTEXT = PageContext(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 4)))


def with_page_context(inputs: TrainingInputs, batches: Iterable[pa.RecordBatch]) -> tuple[TrainingInputs, PageContext]:
    """Keep, of the live segments in ``batches`` (annotation_id, document_id, page,
    x0, y0, x1, y1, text), those on a page that has an example and that are not
    examples; return the inputs with their texts added (after the examples' own,
    so nothing of the examples moves) and the segments."""
    if inputs.rows == 0:
        return inputs, NO_PAGE_CONTEXT
    # Document codes were handed out in order of first appearance, as pc.unique lists them.
    documents = pc.unique(inputs.document_id)
    pages = int(inputs.page.max()) + 1
    example_pages = np.unique(inputs.document_code.astype(np.int64) * pages + inputs.page)
    example_ids = pc.unique(inputs.annotation_id)
    texts = {text: index for index, text in enumerate(inputs.texts)}
    parts: list[tuple[np.ndarray, ...]] = []
    kept_batches: list[pa.RecordBatch] = []
    for batch in batches:
        code = pc.index_in(batch.column("document_id"), value_set=documents)
        page = pc.fill_null(batch.column("page"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        on_page = np.isin(pc.fill_null(code, -1).to_numpy(zero_copy_only=False).astype(np.int64) * pages + page, example_pages)
        keep = on_page & ~pc.is_in(batch.column("annotation_id"), value_set=example_ids).to_numpy(zero_copy_only=False)
        keep &= (page >= 0) & (page < pages) & pc.is_valid(code).to_numpy(zero_copy_only=False)
        if not keep.any():
            continue
        rows = pa.array(np.flatnonzero(keep))
        kept = batch.take(rows)
        kept_batches.append(kept)
        text_index = np.fromiter(
            (texts.setdefault(text, len(texts)) for text in kept.column("text").to_pylist()), dtype=np.int32, count=len(rows)
        )
        boxes = np.column_stack([
            pc.fill_null(kept.column(name), float("nan")).to_numpy(zero_copy_only=False).astype(np.float64)
            for name in ("x0", "y0", "x1", "y1")
        ]).reshape(len(rows), 4)  # fmt: skip
        parts.append((text_index, code.take(rows).to_numpy(zero_copy_only=False).astype(np.int32), page[keep].astype(np.int32), boxes))
    if not parts:
        return inputs, NO_PAGE_CONTEXT
    context = PageContext(*(np.concatenate([part[i] for part in parts]) for i in range(4)), pa.Table.from_batches(kept_batches))
    return dataclasses.replace(inputs, texts=list(texts)), context
