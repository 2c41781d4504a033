"""An independent, deliberately plain Python reading of CONTRACT §2–3.

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
