"""Metrics of a fitted classifier on one split (CONTRACT §5)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from trainer.results_store import Metric

OVERALL_METRICS = ("accuracy", "macro_f1", "coverage", "selective_accuracy")
PER_LABEL_METRICS = ("precision", "recall", "f1", "support")


def evaluate(
    true_labels: list[str],
    probabilities: np.ndarray,
    classes: list[str],
    confidence_threshold: float,
    split: str,
) -> list[Metric]:
    """Overall and per-label figures for predictions given as class probabilities.

    ``coverage`` is the share of examples whose top probability is at least the
    threshold, ``selective_accuracy`` the accuracy on those (null when none is
    covered). Per-label rows cover every label that is true or predicted in the
    split; labels missing from both have no rows. Undefined precision is 0.
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
    return metrics
