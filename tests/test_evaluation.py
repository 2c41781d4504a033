"""The figures of evaluate() beyond the contract's: confusion matrix, risk–coverage
curve, AURC and the threshold for a target precision, checked against direct
definitions (no database needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.core.errors import ConfigurationError
from trainer.model.arguments import TrainingArguments
from trainer.model.evaluation import evaluate

CLASSES = ["answer", "header", "question"]


def figures(truth, probabilities, target_precision=None, split="eval"):
    rows = evaluate(truth, np.asarray(probabilities, dtype=float), CLASSES, 0.5, split, target_precision)
    return {(m.name, m.label): m.value for m in rows}


def test_a_small_case_worked_by_hand():
    # Confidences 0.9 right, 0.8 wrong, 0.7 right, 0.6 right, 0.5 right.
    truth = ["answer", "header", "question", "answer", "answer"]
    probabilities = [
        [0.9, 0.05, 0.05],
        [0.8, 0.1, 0.1],
        [0.2, 0.1, 0.7],
        [0.6, 0.3, 0.1],
        [0.5, 0.25, 0.25],
    ]
    got = figures(truth, probabilities, target_precision=0.9)
    assert got["aurc", None] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 5)
    assert got["risk_at_coverage:0.20", None] == 0.0
    assert got["risk_at_coverage:0.40", None] == 0.5
    assert got["risk_at_coverage:0.60", None] == pytest.approx(1 / 3)
    assert got["risk_at_coverage:1.00", None] == pytest.approx(0.2)
    assert got["threshold_at_target_precision", None] == 0.9
    assert got["coverage_at_target_precision", None] == 0.2
    assert got["precision_at_target_precision", None] == 1.0
    assert got["target_precision", None] == 0.9
    confusion = {(label, name.split(":", 1)[1]): value for (name, label), value in got.items() if name.startswith("predicted_as:")}
    assert confusion == {("answer", "answer"): 3, ("header", "answer"): 1, ("question", "question"): 1}
    # A lower target is reached by covering more.
    looser = figures(truth, probabilities, target_precision=0.75)
    assert (looser["threshold_at_target_precision", None], looser["coverage_at_target_precision", None]) == (0.5, 1.0)


def test_an_unreachable_target_gives_nulls_and_the_train_split_has_no_threshold():
    truth = ["header", "header"]
    probabilities = [[0.9, 0.05, 0.05], [0.7, 0.2, 0.1]]  # both wrong
    got = figures(truth, probabilities, target_precision=0.5)
    assert got["threshold_at_target_precision", None] is None
    assert got["coverage_at_target_precision", None] is None
    assert got["precision_at_target_precision", None] is None
    assert got["aurc", None] == 1.0
    assert not any(name == "target_precision" for name, _ in figures(truth, probabilities, split="train"))


def reference(confidence: list[float], correct: list[bool], target: float):
    """The definitions written out, one threshold at a time."""
    n = len(confidence)

    def covered_at(threshold):
        return [ok for c, ok in zip(confidence, correct) if c >= threshold]

    ranked = sorted(confidence, reverse=True)
    # The k-th most confident, as a block: everything at least as confident as it.
    risks = [1 - sum(covered_at(ranked[k])) / len(covered_at(ranked[k])) for k in range(n)]
    aurc = sum(risks) / n
    curve = {}
    for step in range(1, 11):
        k = max(1, math.ceil(step / 10 * n - 1e-9))
        curve[f"risk_at_coverage:{step / 10:.2f}"] = risks[k - 1]
    best = None
    for threshold in sorted(set(confidence)):
        chosen = covered_at(threshold)
        precision = sum(chosen) / len(chosen)
        if precision >= target - 1e-12:
            best = (threshold, len(chosen) / n, precision)
            break
    return aurc, curve, best


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.4, 0.5, 0.6, 0.75, 0.9, 1.0]), st.sampled_from(range(3)), st.sampled_from(range(3))),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([0.5, 0.8, 0.9, 1.0]),
)
def test_the_curve_and_the_threshold_follow_their_definitions_whatever_the_order(rows, target):
    # Each row: (top probability, predicted class, true class); ties are frequent on purpose.
    probabilities = []
    for confidence, predicted, _ in rows:
        row = [(1 - confidence) / 2] * 3  # below the top probability for every confidence drawn
        row[predicted] = confidence
        probabilities.append(row)
    probabilities = np.asarray(probabilities)
    truth = [CLASSES[true] for _, _, true in rows]
    confidence = probabilities.max(axis=1).tolist()
    correct = [CLASSES[int(np.argmax(p))] == t for p, t in zip(probabilities, truth)]
    aurc, curve, best = reference(confidence, correct, target)

    for order in (np.arange(len(rows)), np.arange(len(rows))[::-1]):
        got = figures([truth[i] for i in order], probabilities[order], target_precision=target)
        assert got["aurc", None] == pytest.approx(aurc)
        for name, value in curve.items():
            assert got[name, None] == pytest.approx(value)
        found = tuple(got[name, None] for name in (
            "threshold_at_target_precision", "coverage_at_target_precision", "precision_at_target_precision"))
        assert found == (pytest.approx(best) if best else (None, None, None))


@pytest.mark.parametrize("value", [0, 0.0, -0.1, 1.5, True, "0.9"])
def test_a_target_precision_outside_0_to_1_is_refused(value):
    with pytest.raises(ConfigurationError, match="target_precision"):
        TrainingArguments(target_precision=value)
