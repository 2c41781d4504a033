"""A model version "in the field": how reviewers answered its proposals in the
app (``datasets.proposal_acceptance``, CONTRACT §7.2), label by label, beside the
precision its run measured on the eval split. The two answer the same question
(when the model says X, how often is it X?) on different segments: the eval
split's accepted labels, and the pending segments reviewers saw after it shipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.core.db import Database
from trainer.core.settings import Settings
from trainer.data.review_loop import AcceptanceCounts, proposal_acceptance_of
from trainer.results.proposal_store import proposal_actor
from trainer.results.records import Metric, ModelVersion
from trainer.results.store import ResultsStore

# The overall figure beside the overall acceptance rate: the share of eval
# examples whose top label is right, i.e. the precision of all its proposals.
OVERALL_EVAL_METRIC = "accuracy"


@dataclass(frozen=True)
class FieldRow:
    """One proposed label (``label`` None: all of them)."""

    label: str | None
    counts: AcceptanceCounts
    eval_precision: float | None

    @property
    def acceptance_rate(self) -> float | None:
        return self.counts.acceptance_rate


@dataclass(frozen=True)
class InTheField:
    actor: str
    rows: list[FieldRow]
    totals: FieldRow


def in_the_field(database: Database, version: ModelVersion, metrics: list[Metric]) -> InTheField | None:
    """How the version's proposals fared, beside its eval precision per label; None
    when the app holds no proposal of it. Raises DatasetError when the view is not built."""
    actor = proposal_actor(version)
    with database.session() as session:
        acceptance = proposal_acceptance_of(session, actor)
    if acceptance.totals.proposals == 0:
        return None
    precision = {m.label: m.value for m in metrics if m.split == "eval" and m.name == "precision" and m.label}
    overall = next((m.value for m in metrics if m.split == "eval" and m.name == OVERALL_EVAL_METRIC and m.label is None), None)
    rows = [FieldRow(counts.proposed_label, counts, precision.get(counts.proposed_label)) for counts in acceptance.by_label]
    return InTheField(actor, rows, FieldRow(None, acceptance.totals, overall))


def field_acceptance(settings: Settings, model_name: str, version: int | None) -> tuple[ModelVersion, InTheField | None]:
    """:func:`in_the_field` of ``version`` of ``model_name`` (its latest when None)."""
    database = Database(settings)
    store = ResultsStore(database)
    model_version = store.get_model_version(model_name, version)
    return model_version, in_the_field(database, model_version, store.run_metrics(model_version.run_id))
