"""What a run measures, as the results store keeps it: metrics and label issues.

They are made here, in the model stage (trainer.model.evaluation,
trainer.model.label_issues), and written by trainer.results.store.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A row of ``training.metrics``: one figure of a split, over all labels (label None) or one."""

    split: str
    name: str
    label: str | None
    value: float | None


@dataclass(frozen=True)
class LabelIssue:
    """A row of ``training.label_issues``: an example of a run whose accepted label
    the run's model finds unlikely, and the label it confidently suggests instead."""

    rank: int
    annotation_id: str
    document_id: str | None
    split: str
    label: str
    suggested_label: str
    label_probability: float
    suggested_probability: float
