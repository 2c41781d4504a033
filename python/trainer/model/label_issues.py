"""Label issues: accepted examples whose label the model finds most unlikely.

Reviewers make mistakes, and a wrong accepted label both trains the model and skews
its measured accuracy. Re-checking every example is too slow, so this module picks
the ones worth a second look, by the "confident learning" rule of Northcutt, Jiang
and Chuang ("Confident Learning: Estimating Uncertainty in Dataset Labels", 2021),
the rule cleanlab implements, written here in plain numpy:

* Each class j gets a threshold t_j: the average probability the model gives class j
  over the examples labelled j. It is the model's own typical confidence for that
  class, so classes the model is generally less sure of get lower bars, and a fixed
  cut-off (say 0.5) would not treat rare or confusable classes fairly.
* An example "confidently belongs" to class j when its probability of j is at least
  t_j. Among the classes it confidently belongs to, the one with the largest
  probability is where confident learning counts it (its cell of the "confident
  joint" of given label and likely true label).
* The example is a label issue when that class exists and is not its given label:
  it sits off the diagonal of the confident joint.

Issues are ranked by self-confidence, the probability of the given label, lowest
first: the examples whose label the model finds least likely come first.

The probabilities must be out-of-sample (cross-validated for the training split, or
from a model that never saw the example): a model that trained on an example has
learned its label, right or wrong, and would vouch for it.

Choices where the rule is silent:

* A class that no example is labelled with has no threshold, and nobody confidently
  belongs to it, so it is never suggested. Its threshold would be an average over
  nothing; any stand-in (0.5, the other classes' mean) would be a bar the model's own
  behaviour never set, and the suggestion a label no reviewer used anywhere in the
  data checked, with no accepted example to compare it with. (cleanlab does the same
  in effect: an empty class's threshold there is above any probability.)
* Thresholds are at least ``THRESHOLD_FLOOR``, as in cleanlab. A class whose labelled
  examples all get probability 0 (out of sample this happens: a label so rare that
  each of its examples is scored by a fold's model that never saw the label) would
  otherwise have threshold 0, every example would "confidently" belong to it at
  probability 0, and some would be told to take a label the model gives no chance.
* When the given label is among the confident classes and ties with the largest
  probability, the example is not an issue: the model does not prefer another label.
  Other ties go to the lowest class code, so the result never depends on chance.
* Ties in self-confidence are ranked by row index, so a rerun gives the same ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer.model.measures import LabelIssue

# A threshold is an average of the very probabilities compared with it: an example
# whose probability equals the average (e.g. every example of a class has the same
# probability) must count as confident, and the float mean can land a few ulps above
# the value it averages. The slack is far below any difference that means something
# (cleanlab allows 1e-6).
THRESHOLD_TOLERANCE = 1e-9
# cleanlab's lower bound for thresholds (2 x its float tolerance): well above
# THRESHOLD_TOLERANCE, so a probability of 0 never reaches a threshold.
THRESHOLD_FLOOR = 2e-6


@dataclass(frozen=True)
class LabelIssueCandidate:
    """One example whose given label the model doubts, by row of the inputs."""

    index: int  # the row of label_code / probabilities
    label_code: int  # the given (accepted) label, a column of probabilities
    suggested_code: int  # the class it confidently belongs to instead
    label_probability: float  # self-confidence: the probability of the given label
    suggested_probability: float
    rank: int  # 1 is the most doubtful


def confident_thresholds(label_code: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """t_j per class: the mean probability of class j over the examples labelled j,
    at least THRESHOLD_FLOOR; +inf for a class no example is labelled with (nobody
    is confidently in it)."""
    labels, probs = _validated(label_code, probabilities)
    n, k = probs.shape
    counts = np.bincount(labels, minlength=k)
    sums = np.bincount(labels, weights=probs[np.arange(n), labels], minlength=k)
    thresholds = np.full(k, np.inf)
    present = counts > 0
    thresholds[present] = np.maximum(sums[present] / counts[present], THRESHOLD_FLOOR)
    return thresholds


def find_label_issues(
    label_code: np.ndarray, probabilities: np.ndarray, limit: int | None = None
) -> list[LabelIssueCandidate]:
    """The label issues among ``n`` examples, most doubtful first, at most ``limit``.

    ``label_code`` (n,) holds each example's given label as an index into the
    columns of ``probabilities`` (n, k), the out-of-sample probability of each class
    (classes in sorted order). Raises ValueError on inconsistent shapes, label codes
    outside 0…k-1, or probabilities outside [0, 1].
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be at least 0, not {limit}")
    labels, probs = _validated(label_code, probabilities)
    n, k = probs.shape
    if n == 0 or k < 2 or limit == 0:
        # One class (or none) offers no other label to suggest.
        return []
    thresholds = confident_thresholds(labels, probs)
    rows = np.arange(n)
    confident = probs >= thresholds - THRESHOLD_TOLERANCE
    candidates = np.where(confident, probs, -np.inf)
    suggested = np.argmax(candidates, axis=1)  # lowest code among equal probabilities
    best = candidates[rows, suggested]
    given = probs[rows, labels]
    # Where the given label is itself confident and as probable as the best, the
    # model does not prefer another label: the example stays on the diagonal.
    on_diagonal = confident[rows, labels] & (given >= best)
    issue = np.isfinite(best) & ~on_diagonal
    issue_rows = rows[issue]
    # lexsort: the last key is the primary one.
    order = issue_rows[np.lexsort((issue_rows, given[issue_rows]))]
    if limit is not None:
        order = order[:limit]
    return [
        LabelIssueCandidate(
            index=int(row),
            label_code=int(labels[row]),
            suggested_code=int(suggested[row]),
            label_probability=float(given[row]),
            suggested_probability=float(probs[row, suggested[row]]),
            rank=rank,
        )
        for rank, row in enumerate(order, start=1)
    ]


def label_issue_rows(
    candidates: Sequence[LabelIssueCandidate],
    classes: Sequence[str],
    annotation_ids: Sequence[str],
    document_ids: Sequence[str | None],
    splits: Sequence[str],
) -> list[LabelIssue]:
    """The rows of ``training.label_issues`` for ``candidates``: codes become the
    labels of ``classes`` (the columns of the probabilities), rows become the
    examples' ids and splits (sequences aligned with the inputs' rows)."""
    return [
        LabelIssue(
            rank=candidate.rank,
            annotation_id=annotation_ids[candidate.index],
            document_id=document_ids[candidate.index],
            split=splits[candidate.index],
            label=classes[candidate.label_code],
            suggested_label=classes[candidate.suggested_code],
            label_probability=candidate.label_probability,
            suggested_probability=candidate.suggested_probability,
        )
        for candidate in candidates
    ]


def _validated(label_code: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(label_code)
    probs = np.asarray(probabilities, dtype=np.float64)
    if labels.ndim != 1:
        raise ValueError(f"label_code must be one-dimensional, not of shape {labels.shape}")
    if labels.size == 0:
        # np.asarray([]) is float; an empty input needs no integer codes.
        labels = labels.astype(np.int64)
        if probs.size == 0:
            probs = probs.reshape(0, probs.shape[1] if probs.ndim == 2 else 0)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"probabilities must have one row per label code: shape {probs.shape} for {labels.shape[0]} codes"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label_code must hold integer codes, not {labels.dtype}")
    k = probs.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"label codes must index the {k} columns of probabilities (0…{k - 1})")
    # Also rejects NaN, which would silently compare false everywhere.
    if probs.size and not ((probs >= 0.0) & (probs <= 1.0)).all():
        raise ValueError("probabilities must lie in [0, 1]")
    return labels.astype(np.int64, copy=False), probs
