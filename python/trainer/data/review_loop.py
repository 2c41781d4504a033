"""Reading the review loop's views (CONTRACT §7.3) for the API: the review queue
(`datasets.review_queue`, one row per pending live segment with the newest
proposal for it), its documents (`datasets.review_queue_documents`), and how a
model version's proposals fared (`datasets.proposal_acceptance`).

Each read is one session: a page and its total are counted in the same
transaction. A view that is not built is a :class:`DatasetError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.core.db import Session
from trainer.core.errors import DatasetError
from trainer.data.dataset import BUILD_HINT, DATASETS_SCHEMA

REVIEW_QUEUE = "review_queue"
REVIEW_QUEUE_DOCUMENTS = "review_queue_documents"
PROPOSAL_ACCEPTANCE = "proposal_acceptance"

REVIEW_QUEUE_COLUMNS = (
    "annotation_id", "document_id", "page", "x0", "y0", "x1", "y1", "text", "review_state", "current_label",
    "model_version_id", "proposed_label", "confidence", "margin", "model_name", "version", "proposed_at", "priority",
)  # fmt: skip
REVIEW_DOCUMENT_COLUMNS = (
    "document_id", "pending_segments", "proposed_segments", "mean_uncertainty", "min_confidence", "priority",
)  # fmt: skip
# The counts of datasets.proposal_acceptance, in its column order.
OUTCOME_COUNTS = ("proposals", "accepted", "corrected", "rejected", "deleted", "pending", "superseded")


@dataclass(frozen=True)
class ViewPage:
    """One page of a view's rows (dicts by column name), and how many rows it has in all."""

    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class AcceptanceCounts:
    """How the proposals of one proposed label (in the totals: of all labels,
    ``proposed_label`` None) fared (CONTRACT §7.2)."""

    proposed_label: str | None
    proposals: int
    accepted: int
    corrected: int
    rejected: int
    deleted: int
    pending: int
    superseded: int

    @property
    def acceptance_rate(self) -> float | None:
        """accepted / (accepted + corrected + rejected); None when nobody decided."""
        decided = self.accepted + self.corrected + self.rejected
        return self.accepted / decided if decided else None


@dataclass(frozen=True)
class ProposalAcceptance:
    actor: str
    by_label: list[AcceptanceCounts]
    totals: AcceptanceCounts


def _relation(session: Session, name: str) -> str:
    if not session.relation_exists(DATASETS_SCHEMA, name):
        raise DatasetError(f"{DATASETS_SCHEMA}.{name} does not exist; " + BUILD_HINT.format(target=session.dialect))
    return f"{DATASETS_SCHEMA}.{name}"


def _page(session: Session, name: str, columns: tuple[str, ...], limit: int, offset: int) -> ViewPage:
    relation = _relation(session, name)
    total = int(session.scalar(f"select count(*) from {relation}"))
    rows = session.fetchall(
        f"select {', '.join(columns)} from {relation} order by priority limit ? offset ?", (limit, offset)
    )
    return ViewPage([dict(zip(columns, row)) for row in rows], total, limit, offset)


def page_review_queue(session: Session, limit: int, offset: int = 0) -> ViewPage:
    """Rows of ``datasets.review_queue`` by priority (1: review first)."""
    return _page(session, REVIEW_QUEUE, REVIEW_QUEUE_COLUMNS, limit, offset)


def page_review_documents(session: Session, limit: int, offset: int = 0) -> ViewPage:
    """Rows of ``datasets.review_queue_documents`` by priority (1: open first)."""
    return _page(session, REVIEW_QUEUE_DOCUMENTS, REVIEW_DOCUMENT_COLUMNS, limit, offset)


def proposal_acceptance_of(session: Session, actor: str) -> ProposalAcceptance:
    """The rows of ``datasets.proposal_acceptance`` for ``actor`` (one per proposed
    label, by label in byte order, a null label last) and their totals."""
    relation = _relation(session, PROPOSAL_ACCEPTANCE)
    collate = session.bytewise_collation()
    rows = session.fetchall(
        f"select proposed_label, {', '.join(OUTCOME_COUNTS)} from {relation} where actor = ? "
        f"order by proposed_label{collate} nulls last",
        (actor,),
    )
    by_label = [AcceptanceCounts(row[0], *(int(value or 0) for value in row[1:])) for row in rows]
    totals = AcceptanceCounts(
        None, *(sum(getattr(counts, name) for counts in by_label) for name in OUTCOME_COUNTS)
    )
    return ProposalAcceptance(actor, by_label, totals)
