"""The segment model: text models, and a second stage over what the page says.

**Text models** see a segment's text only: logistic regression on the sentence
embedding (``embedding``) and on hashed character 2–4-grams with sublinear tf-idf
(``char_ngrams``). Each gives class probabilities per distinct text.

**The second stage** (when layout or neighbour features are on, or both text
models are) is a logistic regression on standardised features, per segment: the
text models' probabilities, its text statistics, its layout and its four
neighbours (:mod:`trainer.model.segment_features`). A gradient-boosted tree model there
was 1.1 points more accurate on the demo's eval split with the same macro-F1, but
fit a hundred times slower (seconds per fit even on 400 examples, and the
label-quality check fits once per fold) and needs a type beyond skops' trusted
defaults to load (docs/MODELS.md).

The second stage must learn from text probabilities like those it will meet on
unseen documents, not from a text model's memory of the very examples it is fit
on. So the train split's probabilities are **cross-fitted**: its documents are
dealt into folds, and each example gets the probabilities of text models fit on
the other folds (fits on a subset use zero sample weights, never a copy of the
vectors). The same folds give out-of-sample probabilities of the whole model for
every train example, which the label-quality check needs
(:mod:`trainer.model.label_issues`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from trainer.core.errors import DatasetError
from trainer.model.segment_features import Segments, find_neighbours, layout_features, neighbour_features

TEXT_MODELS = ("embedding", "char_ngrams")
# The second stage's regularisation, the best of 0.1, 1 and 10 on the demo's eval split
# (docs/MODELS.md); fixed, so that the same arguments always build the same model.
SECOND_STAGE_C = 0.1
SECOND_STAGE_MAX_ITER = 5000
_SCALER_CHUNK_ROWS = 65_536
CHAR_NGRAMS = dict(analyzer="char_wb", ngram_range=(2, 4), n_features=2**16, alternate_sign=False, norm=None)


@dataclass(frozen=True)
class FeatureSet:
    """Which feature families a model uses (the ``TrainingArguments`` switches)."""

    embedding: bool = True
    char_ngrams: bool = True
    layout: bool = True
    neighbours: bool = True

    def __post_init__(self) -> None:
        if not self.text_models:
            raise ValueError("a model needs at least one text model: the embedding or character n-grams")

    @property
    def text_models(self) -> tuple[str, ...]:
        return tuple(name for name in TEXT_MODELS if getattr(self, name))

    @property
    def stacked(self) -> bool:
        return self.layout or self.neighbours or len(self.text_models) > 1

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureSet:
        return cls(**{name: bool(values[name]) for name in asdict(cls()) if name in values})


def char_ngram_vectorizer():
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(**CHAR_NGRAMS, dtype=np.float32)


def stage_two_features(
    features: FeatureSet,
    segments: Segments,
    text_probabilities: np.ndarray,
    text_stats: np.ndarray,
    neighbours: np.ndarray | None = None,
) -> np.ndarray:
    """The second stage's input, one row per segment: ``text_probabilities`` (per
    row: the text models' probabilities side by side), the text statistics of its
    text (``text_stats``, per distinct text), then layout and neighbours when on."""
    parts = [text_probabilities, text_stats[segments.text_index]]
    if features.layout:
        parts.append(layout_features(segments))
    if features.neighbours:
        if neighbours is None:
            neighbours = find_neighbours(segments)
        parts.append(neighbour_features(segments, neighbours, text_stats, text_probabilities))
    return np.hstack(parts).astype(np.float32, copy=False)


def fit_second_stage(design: np.ndarray, rows: np.ndarray, labels, seed: int):
    """The second stage fit on the rows of ``design`` that ``rows`` (a mask) selects:
    a Pipeline of a StandardScaler and the logistic regression.

    The scaler learns in chunks and then scales one copy of the rows in place, so the
    fit holds one copy of its rows where a Pipeline's own fit holds two (the rows and
    their scaled copy): hundreds of MB at a million examples.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    indices = np.flatnonzero(rows)
    scaler = StandardScaler()
    for start in range(0, len(indices), _SCALER_CHUNK_ROWS):
        scaler.partial_fit(design[indices[start : start + _SCALER_CHUNK_ROWS]])
    matrix = scaler.transform(design[indices], copy=False)
    logistic = LogisticRegression(C=SECOND_STAGE_C, max_iter=SECOND_STAGE_MAX_ITER, random_state=seed)
    logistic.fit(matrix, labels)
    return Pipeline([("scale", scaler), ("logistic", logistic)])


def document_folds(document_code: np.ndarray, is_train: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Per example: its fold (0 … k-1) for a train example, -1 for eval. A document's
    examples share a fold; documents are dealt in a seeded random order, so folds
    differ in size by at most one document."""
    documents = np.unique(document_code[is_train])
    if len(documents) < 2:
        raise DatasetError(
            f"the features beyond the text are cross-fitted over the train split's documents, and it has "
            f"{len(documents)}: add documents, or train with --no-layout --no-neighbours and one text model"
        )
    k = min(folds, len(documents))
    order = np.random.default_rng(seed).permutation(len(documents))
    fold_of_document = np.empty(len(documents), dtype=np.int64)
    fold_of_document[order] = np.arange(len(documents)) % k
    result = np.full(len(document_code), -1, dtype=np.int64)
    result[is_train] = fold_of_document[np.searchsorted(documents, document_code[is_train])]
    return result


def label_aligned(probabilities: np.ndarray, model_classes, classes: list[str]) -> np.ndarray:
    """Columns in the order of ``classes``; a class the model never saw gets 0."""
    model_classes = [str(label) for label in model_classes]
    if model_classes == classes:
        return probabilities
    result = np.zeros((len(probabilities), len(classes)), dtype=probabilities.dtype)
    for column, label in enumerate(model_classes):
        result[:, classes.index(label)] = probabilities[:, column]
    return result
