"""Metrics of a fitted classifier on one split (CONTRACT §5, extended).

Besides the contract's figures, every split gets:

- the confusion matrix: per true label, one row ``predicted_as:<predicted label>``
  with the number of its examples predicted so (zeros are not written);
- the risk–coverage curve: examples ranked by confidence (their top probability),
  most confident first; ``risk_at_coverage:<c>`` is the error rate of the first
  share ``c`` (0.10, 0.20, … 1.00) of them, and ``aurc`` the area under the whole
  curve (the mean, over k = 1…n, of the error rate of the k most confident). Equal
  confidences are ranked as one block: a share that ends inside a block takes the
  error rate of the whole block, so the figures do not depend on row order.

and the eval split the threshold that reaches a target precision (the accuracy of
the examples it covers): ``threshold_at_target_precision`` is the lowest confidence
threshold whose covered examples are at least ``target_precision`` right, with its
``coverage_at_target_precision`` and ``precision_at_target_precision``; all three are
null when no threshold reaches the target.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from trainer.model.measures import Metric

OVERALL_METRICS = ("accuracy", "macro_f1", "coverage", "selective_accuracy")
PER_LABEL_METRICS = ("precision", "recall", "f1", "support")
CONFUSION_PREFIX = "predicted_as:"
RISK_AT_COVERAGE_PREFIX = "risk_at_coverage:"
CURVE_COVERAGES = tuple(round(0.1 * step, 1) for step in range(1, 11))


def evaluate(
    true_labels: list[str],
    probabilities: np.ndarray,
    classes: list[str],
    confidence_threshold: float,
    split: str,
    target_precision: float | None = None,
) -> list[Metric]:
    """Overall and per-label figures for predictions given as class probabilities.

    ``coverage`` is the share of examples whose top probability is at least the
    threshold, ``selective_accuracy`` the accuracy on those (null when none is
    covered). Per-label rows cover every label that is true or predicted in the
    split; labels missing from both have no rows. Undefined precision is 0.
    With ``target_precision`` the threshold figures of the module docstring are added.
    """
    if len(true_labels) == 0:
        raise ValueError(f"cannot evaluate on an empty {split} split")
    predicted = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]
    truth = np.asarray(true_labels, dtype=object)
    confidence = probabilities.max(axis=1)
    covered = confidence >= confidence_threshold

    labels = sorted(set(truth) | set(predicted))
    metrics = [
        Metric(split, "accuracy", None, float(accuracy_score(truth, predicted))),
        Metric(split, "macro_f1", None, float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0))),
        Metric(split, "coverage", None, float(covered.mean())),
        Metric(
            split,
            "selective_accuracy",
            None,
            float((truth[covered] == predicted[covered]).mean()) if covered.any() else None,
        ),
    ]
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    for i, label in enumerate(labels):
        metrics += [
            Metric(split, "precision", label, float(precision[i])),
            Metric(split, "recall", label, float(recall[i])),
            Metric(split, "f1", label, float(f1[i])),
            Metric(split, "support", label, float(support[i])),
        ]
    pairs, counts = np.unique(np.stack([truth.astype(str), predicted.astype(str)]), axis=1, return_counts=True)
    for (true_label, predicted_label), count in zip(pairs.T, counts):
        metrics.append(Metric(split, CONFUSION_PREFIX + str(predicted_label), str(true_label), float(count)))

    curve = RiskCoverage(confidence, truth == predicted)
    metrics.append(Metric(split, "aurc", None, curve.area()))
    for coverage in CURVE_COVERAGES:
        metrics.append(Metric(split, f"{RISK_AT_COVERAGE_PREFIX}{coverage:.2f}", None, curve.risk_at(coverage)))
    if target_precision is not None:
        threshold, reached_coverage, reached_precision = curve.threshold_for_precision(target_precision)
        metrics += [
            Metric(split, "target_precision", None, float(target_precision)),
            Metric(split, "threshold_at_target_precision", None, threshold),
            Metric(split, "coverage_at_target_precision", None, reached_coverage),
            Metric(split, "precision_at_target_precision", None, reached_precision),
        ]
    return metrics


class RiskCoverage:
    """The risk–coverage curve of predictions: their confidences and whether each is right.

    Predictions are ranked by confidence, highest first, and equal confidences form
    one block, so every figure is the same whatever the order of the rows.
    """

    def __init__(self, confidence: np.ndarray, correct: np.ndarray):
        order = np.argsort(-confidence, kind="stable")
        ranked = confidence[order]
        errors = np.cumsum(~correct[order])
        # Positions (1-based counts) where a block of equal confidence ends.
        ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True)) + 1
        self._n = len(confidence)
        self._block_end = ends  # examples covered when the threshold is a block's confidence
        self._block_errors = errors[ends - 1]
        self._block_confidence = ranked[ends - 1]

    def _block_of(self, covered: int) -> int:
        """The block that holds the ``covered``-th most confident example."""
        return int(np.searchsorted(self._block_end, covered, side="left"))

    def risk_at(self, coverage: float) -> float:
        """Error rate of the most confident ``coverage`` share (rounded up to whole blocks)."""
        covered = max(1, int(np.ceil(coverage * self._n - 1e-9)))
        block = self._block_of(covered)
        return float(self._block_errors[block] / self._block_end[block])

    def area(self) -> float:
        """Mean over k = 1…n of the error rate of the k most confident (each k in its block)."""
        sizes = np.diff(np.append(0, self._block_end))
        return float((sizes * self._block_errors / self._block_end).sum() / self._n)

    def threshold_for_precision(self, target: float) -> tuple[float | None, float | None, float | None]:
        """(threshold, coverage, precision) of the lowest threshold whose covered
        predictions are at least ``target`` right; (None, None, None) when none is."""
        precision = 1.0 - self._block_errors / self._block_end
        reaching = np.flatnonzero(precision >= target - 1e-12)
        if len(reaching) == 0:
            return None, None, None
        block = int(reaching[-1])  # the largest coverage that reaches the target
        return (
            float(self._block_confidence[block]),
            float(self._block_end[block] / self._n),
            float(precision[block]),
        )
