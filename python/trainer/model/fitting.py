"""Fit a run's segment model on its collected examples (trainer.model.segment_model has the design).

Inputs are the run's compact examples (trainer.model.fit_inputs): one vector per row
of the :class:`~trainer.model.fit_inputs.RowOrder` (each distinct train (text, label)
pair, then each text only eval has), per example only indices. Text models fit on
those rows weighted by their number of examples; the second stage fits on one row
per train example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.model.arguments import TrainingArguments
from trainer.model.fit_inputs import NO_PAGE_CONTEXT, PageContext, RowOrder, TrainingInputs, train_weights
from trainer.model.segment_features import Segments, find_neighbours, text_statistics
from trainer.model.segment_model import (
    char_ngram_vectorizer,
    document_folds,
    fit_second_stage,
    label_aligned,
    stage_two_features,
)

_PREDICT_CHUNK_ROWS = 65_536


@dataclass
class FittedModel:
    classes: list[str]  # the train split's labels, sorted: the columns of every probability
    text_heads: dict[str, Any]  # text model name -> its fitted head (char n-grams: a Pipeline)
    head: Any | None  # the second stage; None when a single text model decides
    probabilities: np.ndarray  # per example: the model's class probabilities
    # Per example: probabilities of a model that did not see it (eval: the model;
    # train: cross-validated over document folds); None when not asked for.
    out_of_sample: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def segments_of(inputs: TrainingInputs, context: PageContext = NO_PAGE_CONTEXT) -> Segments:
    """The examples' segments, then the page context's."""
    if not context.rows:
        return Segments(inputs.document_code, inputs.page, inputs.boxes, inputs.text_index)
    return Segments(
        np.concatenate([inputs.document_code, context.document_code]),
        np.concatenate([inputs.page, context.page]),
        np.concatenate([inputs.boxes, context.boxes]),
        np.concatenate([inputs.text_index, context.text_index]),
    )


def _context_folds(inputs: TrainingInputs, folds: np.ndarray, context: PageContext) -> np.ndarray:
    """The fold of each context segment: its document's (-1 for an eval document)."""
    fold_of_document = np.full(int(inputs.document_code.max()) + 1, -1, dtype=np.int64)
    fold_of_document[inputs.document_code] = folds
    return fold_of_document[context.document_code]


def new_text_head(args: TrainingArguments):
    """A text model's logistic regression, as the arguments set it."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=args.regularization,
        class_weight=None if args.class_weight == "none" else args.class_weight,
        max_iter=args.max_iter,
        random_state=args.seed,
    )


class _TextModel:
    """One text model's design matrix over the row order's train rows and over every
    distinct text, and its fits."""

    def __init__(self, name: str, inputs: TrainingInputs, order: RowOrder, vectors: np.ndarray | None, args):
        self.name, self.order, self.args = name, order, args
        if name == "embedding":
            self.train_matrix = vectors[: order.train_rows]
            # A text's first row in the row order: its vector (a text with two train labels has two equal rows).
            text_rows = order.text_rows
            self._first_row = np.empty(len(inputs.texts), dtype=np.int64)
            self._first_row[text_rows[::-1]] = np.arange(len(text_rows))[::-1]
            self._vectors = vectors
            self.pipeline_steps = []
        else:
            from sklearn.feature_extraction.text import TfidfTransformer

            hashing = char_ngram_vectorizer()
            # float32 counts, turned into tf-idf in place: one matrix of every text at a
            # time (at a million examples each copy is hundreds of MB).
            text_matrix = hashing.transform(inputs.texts)
            train_counts = text_matrix[order.train_text]
            tfidf = TfidfTransformer(sublinear_tf=True).fit(train_counts)
            # Only the hashed columns a train text fills can get a weight: the L2 penalty
            # holds every other coefficient at exactly 0, so a fit on those columns alone
            # is the same model, and several times faster on a small train split.
            self._columns = np.unique(train_counts.indices)
            del train_counts
            text_matrix = tfidf.transform(text_matrix, copy=False)
            self._width = text_matrix.shape[1]
            self._text_matrix = text_matrix if len(self._columns) == self._width else text_matrix[:, self._columns]
            del text_matrix
            self.train_matrix = self._text_matrix[order.train_text]
            self.pipeline_steps = [("hashing", hashing), ("tfidf", tfidf)]

    def fit(self, weights: np.ndarray):
        return new_text_head(self.args).fit(self.train_matrix, self.order.train_labels, sample_weight=weights)

    def predict_texts(self, head, texts: np.ndarray) -> np.ndarray:
        """Probabilities of the distinct texts ``texts`` (indices), in that order."""
        parts = []
        for start in range(0, len(texts), _PREDICT_CHUNK_ROWS):
            chunk = texts[start : start + _PREDICT_CHUNK_ROWS]
            matrix = self._vectors[self._first_row[chunk]] if self.name == "embedding" else self._text_matrix[chunk]
            parts.append(head.predict_proba(matrix).astype(np.float32))
        return np.concatenate(parts) if parts else np.zeros((0, len(head.classes_)), dtype=np.float32)

    def saved_head(self, head):
        """What the classifier keeps: the head alone, or texts → probabilities as one Pipeline."""
        if not self.pipeline_steps:
            return head
        from sklearn.pipeline import Pipeline

        return Pipeline([*self.pipeline_steps, ("logistic", self._on_every_column(head))])

    def _on_every_column(self, head):
        """The head as if fit on every hashed column (the unfilled ones weigh 0), so
        that it takes the vectorizer's output as it is."""
        import copy

        full = copy.deepcopy(head)
        full.coef_ = np.zeros((head.coef_.shape[0], self._width), dtype=head.coef_.dtype)
        full.coef_[:, self._columns] = head.coef_
        full.n_features_in_ = self._width
        return full


def fit_segment_model(
    inputs: TrainingInputs,
    order: RowOrder,
    vectors: np.ndarray | None,
    args: TrainingArguments,
    progress: bool | None = None,
    context: PageContext = NO_PAGE_CONTEXT,
) -> FittedModel:
    """Fit text models and, when the features ask for it, the second stage.

    ``context`` (trainer.model.fit_inputs.PageContext) is the rest of the examples'
    pages: the second stage's layout and neighbour features are computed among the
    examples and it, as at prediction; its segments are never fitted on. Their
    text-model probabilities are cross-fitted like those of their document's examples."""
    import time

    from tqdm.auto import tqdm

    features = args.features
    classes = sorted(set(order.train_labels))
    is_train = inputs.is_train
    cross_fit = features.stacked or args.label_issues
    folds = document_folds(inputs.document_code, is_train, args.stacking_folds, args.seed) if cross_fit else None
    fold_count = int(folds.max()) + 1 if cross_fit else 0
    text_models = features.text_models
    fits = len(text_models) * (1 + fold_count) + (1 + (fold_count if args.label_issues else 0)) * features.stacked
    bar = tqdm(total=fits, desc="fitting", unit="fit", disable=progress is False, leave=False)
    seconds: dict[str, float] = {}

    all_texts = np.arange(len(inputs.texts))
    # Per example, the text models' probabilities side by side: the full fit's for
    # eval, the cross-fitted ones for train (when cross-fitting).
    per_row = np.zeros((inputs.rows, len(classes) * len(text_models)), dtype=np.float32)
    # The same for the page context: its segments take their document's fold (-1: eval).
    use_context = features.stacked and context.rows > 0
    per_context = np.zeros((context.rows if use_context else 0, per_row.shape[1]), dtype=np.float32)
    context_folds = _context_folds(inputs, folds, context) if use_context and cross_fit else None
    full_per_text = []
    text_heads = {}
    for position, name in enumerate(text_models):
        started = time.perf_counter()
        model = _TextModel(name, inputs, order, vectors, args)
        columns = slice(position * len(classes), (position + 1) * len(classes))
        head = model.fit(order.train_counts.astype(np.float64))
        bar.update()
        text_heads[name] = model.saved_head(head)
        full = model.predict_texts(head, all_texts)
        full_per_text.append(full)
        per_row[:, columns] = full[inputs.text_index]
        if use_context:
            per_context[:, columns] = full[context.text_index]
        for fold in range(fold_count):
            fold_head = model.fit(train_weights(inputs, order, folds != fold))
            rows = np.flatnonzero(folds == fold)
            around = np.flatnonzero(context_folds == fold) if context_folds is not None else np.zeros(0, np.int64)
            wanted = np.concatenate([inputs.text_index[rows], context.text_index[around]])
            texts, inverse = np.unique(wanted, return_inverse=True)
            predicted = label_aligned(model.predict_texts(fold_head, texts), fold_head.classes_, classes)[inverse]
            per_row[rows, columns] = predicted[: len(rows)]
            per_context[around, columns] = predicted[len(rows) :]
            bar.update()
        seconds[f"fit_{name}"] = time.perf_counter() - started
        del model
        if name == "embedding":
            # The caller hands the vectors over (trainer.runs.training): dropped here, they
            # are gone before the n-gram matrices and the second stage's exist.
            vectors = None

    if not features.stacked:
        # One text model decides: its full fit's probabilities; the cross-fitted
        # ones (when asked for) are out of sample for train.
        probabilities = full_per_text[0][inputs.text_index]
        bar.close()
        return FittedModel(
            classes, text_heads, None, probabilities, per_row if args.label_issues else None, seconds
        )

    started = time.perf_counter()
    segments = segments_of(inputs, context if use_context else NO_PAGE_CONTEXT)
    stats = text_statistics(inputs.texts)
    neighbours = find_neighbours(segments) if features.neighbours else None
    if use_context:
        per_row = np.concatenate([per_row, per_context])
    # The examples' rows come first: the context's rows are cut off once the
    # features are made (a view, no copy).
    design = stage_two_features(features, segments, per_row, stats, neighbours)[: inputs.rows]
    del per_row, per_context
    seconds["features"] = time.perf_counter() - started
    started = time.perf_counter()
    train_labels = inputs.labels(is_train)
    head = fit_second_stage(design, is_train, train_labels, args.seed)
    bar.update()
    probabilities = _predict_rows(head, design, classes)
    seconds["fit_second_stage"] = time.perf_counter() - started

    out_of_sample = None
    if args.label_issues:
        started = time.perf_counter()
        out_of_sample = probabilities.copy()
        for fold in range(fold_count):
            fit_rows = is_train & (folds != fold)
            fold_head = fit_second_stage(design, fit_rows, inputs.labels(fit_rows), args.seed)
            rows = np.flatnonzero(folds == fold)
            out_of_sample[rows] = label_aligned(fold_head.predict_proba(design[rows]), fold_head.classes_, classes)
            bar.update()
        seconds["cross_validation"] = time.perf_counter() - started
    bar.close()
    return FittedModel(classes, text_heads, head, probabilities, out_of_sample, seconds)


def _predict_rows(head, design: np.ndarray, classes: list[str]) -> np.ndarray:
    parts = [
        head.predict_proba(design[start : start + _PREDICT_CHUNK_ROWS])
        for start in range(0, len(design), _PREDICT_CHUNK_ROWS)
    ]
    return label_aligned(np.concatenate(parts).astype(np.float32), head.classes_, classes)
