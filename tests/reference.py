"""An independent, deliberately plain Python reading of CONTRACT §2–3 and §7.

It shares no code with the dbt models or the trainer: the tests compare what the
views return with what this module says they must return.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

DECISIONS = {"accepted": 1, "rejected": 2, "deleted": 3}  # value: how much doubt it carries
BLANK_CHARACTERS = " \t\n\r\f\v"


@dataclass(frozen=True)
class Document:
    document_id: str | None
    filename: str | None = "file.pdf"
    sha256: str | None = None
    page_count: int | None = 1
    created_at: datetime | None = datetime(2026, 1, 1)
    deleted_at: datetime | None = None


@dataclass(frozen=True)
class Annotation:
    annotation_id: str | None
    document_id: str | None
    text: str | None
    page: int | None = 1
    x0: float | None = None
    y0: float | None = None
    x1: float | None = None
    y1: float | None = None
    label: str | None = None
    status: str | None = "pending"
    created_at: datetime | None = datetime(2026, 1, 1)
    updated_at: datetime | None = datetime(2026, 1, 1)


@dataclass(frozen=True)
class Event:
    event_id: int | None
    annotation_id: str | None
    event_type: str | None
    label: str | None
    actor: str | None
    occurred_at: datetime | None
    note: str | None = None


@dataclass(frozen=True)
class Proposal:
    """A row of training.proposals (CONTRACT §7.3); its fields are the table's columns."""

    model_version_id: int
    annotation_id: str
    actor: str
    label: str
    confidence: float
    margin: float
    created_at: datetime = datetime(2026, 3, 1)


def is_blank(value: str | None) -> bool:
    return value is None or value.strip(BLANK_CHARACTERS) == ""


def split_of(document_id: str, salt: str = "", eval_percent: int = 20) -> str:
    bucket = int(hashlib.md5((salt + document_id).encode("utf-8")).hexdigest()[:8], 16) % 100
    return "eval" if bucket < eval_percent else "train"


def _text_key(value: str | None):
    # Descending order with nulls last: a null loses every comparison.
    return (value is not None, value.encode("utf-8") if value is not None else b"")


def deciding_events(events: list[Event]) -> dict[str, Event]:
    best: dict[str, Event] = {}
    for event in events:
        if event.event_type not in DECISIONS:
            continue
        if event.annotation_id is None or event.occurred_at is None or event.event_id is None:
            continue
        current = best.get(event.annotation_id)
        if current is None or _recency(event) > _recency(current):
            best[event.annotation_id] = event
    return best


def _recency(event: Event):
    return (
        event.occurred_at,
        event.event_id,
        DECISIONS[event.event_type],
        _text_key(event.label),
        _text_key(event.actor),
    )


def training_examples(
    documents: list[Document],
    annotations: list[Annotation],
    events: list[Event],
    split_salt: str = "",
    eval_percent: int = 20,
) -> dict[str, dict]:
    """annotation_id -> the row training_examples must hold for it."""
    document_rows = Counter(d.document_id for d in documents if d.document_id is not None)
    live_documents = {
        d.document_id for d in documents if d.document_id is not None and document_rows[d.document_id] == 1 and d.deleted_at is None
    }
    annotation_rows = Counter(a.annotation_id for a in annotations if a.annotation_id is not None)
    unique_annotations = {
        a.annotation_id: a for a in annotations if a.annotation_id is not None and annotation_rows[a.annotation_id] == 1
    }
    examples = {}
    for annotation_id, event in deciding_events(events).items():
        if event.event_type != "accepted" or is_blank(event.label):
            continue
        annotation = unique_annotations.get(annotation_id)
        if annotation is None or annotation.document_id not in live_documents or is_blank(annotation.text):
            continue
        examples[annotation_id] = {
            "annotation_id": annotation_id,
            "document_id": annotation.document_id,
            "page": annotation.page,
            "x0": annotation.x0,
            "y0": annotation.y0,
            "x1": annotation.x1,
            "y1": annotation.y1,
            "text": annotation.text,
            "label": event.label,
            "accepted_at": event.occurred_at,
            "accepted_by": event.actor,
            "accepted_event_id": event.event_id,
            "split": split_of(annotation.document_id, split_salt, eval_percent),
        }
    return examples


def dataset_summary(examples: dict[str, dict]) -> dict[tuple[str, str], tuple[int, int]]:
    counts: Counter = Counter()
    documents: dict[tuple[str, str], set] = {}
    for row in examples.values():
        key = (row["split"], row["label"])
        counts[key] += 1
        documents.setdefault(key, set()).add(row["document_id"])
    return {key: (counts[key], len(documents[key])) for key in counts}


# -- CONTRACT §7: the review loop ------------------------------------------------------

CHANGES = ("created", "proposed", "edited")
MODEL_PREFIX = "model:"


def _orderable(event: Event) -> bool:
    return event.annotation_id is not None and event.occurred_at is not None and event.event_id is not None


def _place(event: Event):
    return (event.occurred_at, event.event_id)


def _unique_rows(rows, key: str) -> dict:
    counts = Counter(getattr(row, key) for row in rows if getattr(row, key) is not None)
    return {getattr(row, key): row for row in rows if getattr(row, key) is not None and counts[getattr(row, key)] == 1}


def latest_changes(events: list[Event]) -> dict[str, Event]:
    """annotation_id -> its latest change (§7.1): the greatest (occurred_at, event_id).
    Exact duplicates of that place are told apart by type, label and actor in
    descending code-point order, nulls last (only the label shows: current_label)."""
    latest: dict[str, Event] = {}
    for event in events:
        if event.event_type in CHANGES and _orderable(event):
            current = latest.get(event.annotation_id)
            if current is None or _change_recency(event) > _change_recency(current):
                latest[event.annotation_id] = event
    return latest


def _change_recency(event: Event):
    return (*_place(event), _text_key(event.event_type), _text_key(event.label), _text_key(event.actor))


def live_segments(documents: list[Document], annotations: list[Annotation], events: list[Event]) -> dict[str, dict]:
    """annotation_id -> the row live_segments must hold for it (§7.1). An annotation
    or document stored twice is ambiguous, as in §2: it is not live."""
    live_documents = {key for key, row in _unique_rows(documents, "document_id").items() if row.deleted_at is None}
    decisions = deciding_events(events)
    latest_change = latest_changes(events)
    rows = {}
    for annotation_id, annotation in _unique_rows(annotations, "annotation_id").items():
        if annotation.document_id not in live_documents or is_blank(annotation.text):
            continue
        deciding = decisions.get(annotation_id)
        if deciding is not None and deciding.event_type == "deleted":
            continue
        change = latest_change.get(annotation_id)
        if deciding is None or (change is not None and _place(change) > _place(deciding)):
            state = "pending"
        else:
            state = deciding.event_type
        rows[annotation_id] = {
            "annotation_id": annotation_id, "document_id": annotation.document_id, "page": annotation.page,
            "x0": annotation.x0, "y0": annotation.y0, "x1": annotation.x1, "y1": annotation.y1,
            "text": annotation.text, "review_state": state,
        }  # fmt: skip
    return rows


def model_of(actor: str) -> tuple[str, str | None]:
    """(model_name, model_version) of a `model:` actor: the version follows the last `@`."""
    rest = actor[len(MODEL_PREFIX):]
    if "@" not in rest:
        return rest, None
    name, version = rest.rsplit("@", 1)
    return name, version


def proposal_outcomes(annotations: list[Annotation], events: list[Event]) -> list[dict]:
    """The rows proposal_outcomes must hold (§7.2), in no particular order: one per
    model proposal event (an event recorded twice is two rows)."""
    existing = {a.annotation_id for a in annotations if a.annotation_id is not None}
    ordered = [event for event in events if _orderable(event)]
    rows = []
    for proposal in ordered:
        if proposal.event_type != "proposed" or proposal.actor is None or not proposal.actor.startswith(MODEL_PREFIX):
            continue
        if proposal.annotation_id not in existing:
            continue
        later = [e for e in ordered if e.annotation_id == proposal.annotation_id and _place(e) > _place(proposal)]
        decisions = [e for e in later if e.event_type in DECISIONS]
        answer = None
        if decisions:
            first = min(_place(e) for e in decisions)
            # Exact duplicates of the first place: the same tie-break as the deciding rule.
            answer = max((e for e in decisions if _place(e) == first), key=_recency)
        superseded = any(
            e.event_type == "proposed" and (answer is None or _place(e) < _place(answer)) for e in later
        )
        if superseded:
            outcome = "superseded"
        elif answer is None:
            outcome = "pending"
        elif answer.event_type == "accepted":
            same = answer.label is not None and proposal.label is not None and answer.label == proposal.label
            outcome = "accepted" if same else "corrected"
        else:
            outcome = answer.event_type
        model_name, model_version = model_of(proposal.actor)
        rows.append({
            "event_id": proposal.event_id, "annotation_id": proposal.annotation_id, "actor": proposal.actor,
            "model_name": model_name, "model_version": model_version, "proposed_label": proposal.label,
            "proposed_at": proposal.occurred_at, "answer_event_id": None if answer is None else answer.event_id,
            "outcome": outcome,
        })  # fmt: skip
    return rows


OUTCOMES = ("accepted", "corrected", "rejected", "deleted", "pending", "superseded")


def proposal_acceptance(outcomes: list[dict]) -> dict[tuple, dict]:
    """(actor, proposed_label) -> the row proposal_acceptance must hold for it (§7.3)."""
    groups: dict[tuple, Counter] = {}
    for row in outcomes:
        groups.setdefault((row["actor"], row["proposed_label"]), Counter())[row["outcome"]] += 1
    result = {}
    for (actor, label), counts in groups.items():
        decided = counts["accepted"] + counts["corrected"] + counts["rejected"]
        model_name, model_version = model_of(actor)
        result[(actor, label)] = {
            "actor": actor, "model_name": model_name, "model_version": model_version, "proposed_label": label,
            "proposals": sum(counts.values()), **{outcome: counts[outcome] for outcome in OUTCOMES},
            "acceptance_rate": counts["accepted"] / decided if decided else None,
        }  # fmt: skip
    return result


def _nulls_last(value):
    """Ascending order with nulls last."""
    return (value is None, 0 if value is None else value)


def review_queue(
    documents: list[Document], annotations: list[Annotation], events: list[Event], proposals: list[Proposal]
) -> list[dict]:
    """The rows review_queue must hold (§7.3), in priority order: one per pending live
    segment, with its latest change's label and the proposal of the greatest
    model_version_id among its proposals."""
    changes = latest_changes(events)
    newest: dict[str, Proposal] = {}
    for proposal in proposals:
        current = newest.get(proposal.annotation_id)
        if current is None or proposal.model_version_id > current.model_version_id:
            newest[proposal.annotation_id] = proposal
    rows = []
    for annotation_id, segment in live_segments(documents, annotations, events).items():
        if segment["review_state"] != "pending":
            continue
        change, proposal = changes.get(annotation_id), newest.get(annotation_id)
        model_name, version = model_of(proposal.actor) if proposal is not None else (None, None)
        rows.append({
            **segment, "current_label": None if change is None else change.label,
            "model_version_id": None if proposal is None else proposal.model_version_id,
            "proposed_label": None if proposal is None else proposal.label,
            "confidence": None if proposal is None else proposal.confidence,
            "margin": None if proposal is None else proposal.margin,
            "model_name": model_name, "version": version,
            "proposed_at": None if proposal is None else proposal.created_at,
        })  # fmt: skip
    # Least confident first (no proposal last), then document and reading order; text
    # compares by code point (UTF-8 bytes order the same way).
    rows.sort(key=lambda row: (
        _nulls_last(row["confidence"]), row["document_id"].encode("utf-8"), _nulls_last(row["page"]),
        _nulls_last(row["y0"]), _nulls_last(row["x0"]), row["annotation_id"].encode("utf-8"),
    ))  # fmt: skip
    for priority, row in enumerate(rows, start=1):
        row["priority"] = priority
    return rows


def review_queue_documents(queue: list[dict]) -> list[dict]:
    """The rows review_queue_documents must hold, in priority order, from the rows of
    review_queue: one per document with a queued segment."""
    by_document: dict[str, list[dict]] = {}
    for row in queue:
        by_document.setdefault(row["document_id"], []).append(row)
    rows = []
    for document_id, segments in by_document.items():
        confidences = [row["confidence"] for row in segments if row["model_version_id"] is not None]
        uncertainties = [1 - confidence for confidence in confidences]
        rows.append({
            "document_id": document_id, "pending_segments": len(segments), "proposed_segments": len(confidences),
            "mean_uncertainty": sum(uncertainties) / len(uncertainties) if uncertainties else None,
            "min_confidence": min(confidences) if confidences else None,
        })  # fmt: skip
    # Most uncertain first, documents without a proposal last, then by code point.
    rows.sort(key=lambda row: (
        row["mean_uncertainty"] is None, -(row["mean_uncertainty"] or 0.0), row["document_id"].encode("utf-8"),
    ))  # fmt: skip
    for priority, row in enumerate(rows, start=1):
        row["priority"] = priority
    return rows
