"""The bundled FUNSD forms as the annotation app would hold them.

Each segment gets an invented but deterministic review history: created by an
annotator or proposed by a model, then accepted by a reviewer; some proposals are
wrong and get rejected, some acceptances are relabelled and accepted again, some
are edited after acceptance and wait for review, some are still pending, a few
events reach the app days late, some segments are deleted, and two documents are
soft-deleted. The history is a pure function of each segment's ids, so loading
twice inserts nothing new.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources

import pyarrow as pa

from trainer.core.db import Database
from trainer.data.app_tables import create_app_tables

LABELS = ("question", "answer", "header", "other")
ANNOTATORS = ("user:amira", "user:bao", "user:carmen", "user:dmitri")
REVIEWERS = ("user:elif", "user:farid")
PROPOSING_MODEL = "model:layout-tagger@2.3.0"
PROJECT_START = datetime(2026, 3, 2, 8, 0, 0)
# FUNSD boxes are pixels of scans about 754 x 1000 px; a scan fills a US-Letter
# page (792 pt high), so one pixel is taken as 792/1000 of a point.
POINTS_PER_PIXEL = 0.792
# Soft-deleted in the app: their annotations never train (CONTRACT §2.2).
DELETED_DOCUMENT_INDEXES = (17, 101)


@dataclass(frozen=True)
class Segment:
    doc_id: str
    segment_id: int
    text: str
    label: str
    box: tuple[float, float, float, float]


@dataclass
class DemoData:
    documents: pa.Table
    annotations: pa.Table
    annotation_events: pa.Table


def read_segments() -> list[Segment]:
    path = resources.files("trainer.data") / "demo_data" / "funsd" / "segments.csv"
    with path.open("r", encoding="utf-8", newline="") as handle:
        return [
            Segment(
                doc_id=row["doc_id"],
                segment_id=int(row["segment_id"]),
                text=row["text"],
                label=row["label"],
                box=tuple(round(float(row[key]) * POINTS_PER_PIXEL, 2) for key in ("x0", "y0", "x1", "y1")),
            )
            for row in csv.DictReader(handle)
        ]


def _wrong_label(rng: random.Random, label: str) -> str:
    return rng.choice([other for other in LABELS if other != label])


def _history(segment: Segment, annotator: str, reviewer: str, annotated_at: datetime, reviewed_at: datetime):
    """Events for one segment as (occurred_at, arrives_late, event_type, label, actor, note),
    and whether its row was deleted from the app's table."""
    rng = random.Random(f"funsd-demo:{segment.doc_id}:{segment.segment_id}")
    label, wrong = segment.label, _wrong_label(rng, segment.label)
    later = reviewed_at + timedelta(days=rng.randint(3, 9), minutes=rng.randint(0, 600))
    roll = rng.random()
    row_deleted = False

    def event(at, event_type, event_label, actor, note=None, late=False):
        return (at, late, event_type, event_label, actor, note)

    if roll < 0.48:  # an annotator labels it, a reviewer accepts
        events = [event(annotated_at, "created", label, annotator), event(reviewed_at, "accepted", label, reviewer)]
    elif roll < 0.68:  # the model proposes the right label, a reviewer accepts
        events = [event(annotated_at, "proposed", label, PROPOSING_MODEL), event(reviewed_at, "accepted", label, reviewer)]
    elif roll < 0.74:  # the model proposes a wrong label, the annotator fixes it, a reviewer accepts
        events = [
            event(annotated_at, "proposed", wrong, PROPOSING_MODEL),
            event(annotated_at + timedelta(minutes=3), "edited", label, annotator),
            event(reviewed_at, "accepted", label, reviewer),
        ]
    elif roll < 0.78:  # a wrong proposal is rejected and nobody has fixed it yet
        events = [
            event(annotated_at, "proposed", wrong, PROPOSING_MODEL),
            event(reviewed_at, "rejected", None, reviewer, note="wrong label"),
        ]
    elif roll < 0.82:  # accepted wrongly, relabelled in a later pass, accepted again
        events = [
            event(annotated_at, "created", wrong, annotator),
            event(reviewed_at, "accepted", wrong, reviewer),
            event(later, "edited", label, annotator, note="relabelled in QA pass"),
            event(later + timedelta(hours=2), "accepted", label, REVIEWERS[0]),
        ]
    elif roll < 0.84:  # edited after acceptance: the edit waits for review, the acceptance trains
        events = [
            event(annotated_at, "created", label, annotator),
            event(reviewed_at, "accepted", label, reviewer),
            event(later, "edited", wrong, annotator),
        ]
    elif roll < 0.85:  # accepted, then the reviewer's lead rejects it
        events = [
            event(annotated_at, "created", label, annotator),
            event(reviewed_at, "accepted", label, reviewer),
            event(later, "rejected", None, REVIEWERS[1], note="not a form field"),
        ]
    elif roll < 0.91:  # still pending review
        first = "proposed" if rng.random() < 0.5 else "created"
        events = [event(annotated_at, first, label, PROPOSING_MODEL if first == "proposed" else annotator)]
    elif roll < 0.925:  # an offline reviewer's earlier rejection syncs late; the later acceptance stands
        events = [
            event(annotated_at, "created", label, annotator),
            event(reviewed_at - timedelta(hours=1), "rejected", None, REVIEWERS[1], late=True),
            event(reviewed_at, "accepted", label, reviewer),
        ]
    elif roll < 0.94:  # accepted, then rejected offline later; the rejection arrives late and decides
        events = [
            event(annotated_at, "created", label, annotator),
            event(reviewed_at, "accepted", label, reviewer),
            event(later, "rejected", None, REVIEWERS[1], note="duplicate segment", late=True),
        ]
    elif roll < 0.95:  # accepted, then the segment is deleted (its row leaves the app's table)
        events = [
            event(annotated_at, "created", label, annotator),
            event(reviewed_at, "accepted", label, reviewer),
            event(later, "deleted", None, annotator, note="split into two segments"),
        ]
        row_deleted = True
    else:  # accepted with a reviewer's comment (an event type the pipeline ignores)
        events = [
            event(annotated_at, "created", label, annotator),
            event(reviewed_at + timedelta(seconds=30), "commented", None, reviewer, note="check spelling"),
            event(reviewed_at, "accepted", label, reviewer),
        ]
    return events, row_deleted


def build_demo_data(segments: list[Segment]) -> DemoData:
    by_document: dict[str, list[Segment]] = {}
    for segment in segments:
        by_document.setdefault(segment.doc_id, []).append(segment)

    documents, annotations, pending_events = [], [], []
    for index, doc_id in enumerate(sorted(by_document)):
        rng = random.Random(f"funsd-demo:{doc_id}")
        uploaded_at = PROJECT_START + timedelta(hours=16 * index, minutes=rng.randint(0, 59))
        annotator, reviewer = rng.choice(ANNOTATORS), rng.choice(REVIEWERS)
        last_change = uploaded_at
        for position, segment in enumerate(sorted(by_document[doc_id], key=lambda s: s.segment_id)):
            annotation_id = f"{doc_id}-{segment.segment_id}"
            annotated_at = uploaded_at + timedelta(minutes=10, seconds=20 * position)
            reviewed_at = uploaded_at + timedelta(days=1, seconds=15 * position)
            events, row_deleted = _history(segment, annotator, reviewer, annotated_at, reviewed_at)
            for step, (at, late, event_type, label, actor, note) in enumerate(events):
                arrives_at = at + timedelta(days=3) if late else at
                pending_events.append((arrives_at, annotation_id, step, at, event_type, label, actor, note))
            last_change = max([last_change] + [at for at, *_ in events])
            if not row_deleted:
                annotations.append(_annotation_row(annotation_id, doc_id, segment, events))
        deleted_at = last_change + timedelta(days=30) if index in DELETED_DOCUMENT_INDEXES else None
        documents.append(
            {
                "document_id": doc_id,
                "filename": f"{doc_id}.pdf",
                "sha256": None,  # imported from FUNSD's scans: the app never had the PDF bytes
                "page_count": 1,
                "created_at": uploaded_at,
                "deleted_at": deleted_at,
            }
        )

    # The app numbers events in the order they reach it, not the order they happened.
    pending_events.sort(key=lambda item: (item[0], item[1], item[2]))
    events = [
        {
            "event_id": event_id,
            "annotation_id": annotation_id,
            "event_type": event_type,
            "label": label,
            "actor": actor,
            "occurred_at": occurred_at,
            "note": note,
        }
        for event_id, (_, annotation_id, _, occurred_at, event_type, label, actor, note) in enumerate(
            pending_events, start=1
        )
    ]
    return DemoData(
        documents=pa.Table.from_pylist(documents, schema=_DOCUMENTS),
        annotations=pa.Table.from_pylist(annotations, schema=_ANNOTATIONS),
        annotation_events=pa.Table.from_pylist(events, schema=_EVENTS),
    )


def _annotation_row(annotation_id: str, doc_id: str, segment: Segment, events) -> dict:
    """The app's display state after the events: last label shown, last decision."""
    ordered = sorted(events, key=lambda item: item[0])
    shown = [label for _, _, kind, label, _, _ in ordered if kind in ("created", "proposed", "edited", "accepted")]
    status = "pending"
    for _, _, kind, *_ in ordered:
        if kind == "accepted":
            status = "accepted"
        elif kind == "rejected":
            status = "rejected"
        elif kind in ("created", "proposed", "edited"):
            status = "pending"
    return {
        "annotation_id": annotation_id,
        "document_id": doc_id,
        "page": 1,
        "x0": segment.box[0],
        "y0": segment.box[1],
        "x1": segment.box[2],
        "y1": segment.box[3],
        "text": segment.text,
        "label": shown[-1] if shown else None,
        "status": status,
        "created_at": ordered[0][0],
        "updated_at": ordered[-1][0],
    }


_DOCUMENTS = pa.schema(
    [
        ("document_id", pa.string()),
        ("filename", pa.string()),
        ("sha256", pa.string()),
        ("page_count", pa.int32()),
        ("created_at", pa.timestamp("us")),
        ("deleted_at", pa.timestamp("us")),
    ]
)
_ANNOTATIONS = pa.schema(
    [
        ("annotation_id", pa.string()),
        ("document_id", pa.string()),
        ("page", pa.int32()),
        ("x0", pa.float64()),
        ("y0", pa.float64()),
        ("x1", pa.float64()),
        ("y1", pa.float64()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("status", pa.string()),
        ("created_at", pa.timestamp("us")),
        ("updated_at", pa.timestamp("us")),
    ]
)
_EVENTS = pa.schema(
    [
        ("event_id", pa.int64()),
        ("annotation_id", pa.string()),
        ("event_type", pa.string()),
        ("label", pa.string()),
        ("actor", pa.string()),
        ("occurred_at", pa.timestamp("us")),
        ("note", pa.string()),
    ]
)


@dataclass(frozen=True)
class LoadReport:
    documents: int
    annotations: int
    annotation_events: int
    inserted: dict[str, int]


def load_demo(database: Database, schema: str = "app") -> LoadReport:
    """Create the app's tables if absent and insert the demo rows they lack."""
    data = build_demo_data(read_segments())
    with database.session(create=True) as session:
        create_app_tables(session, schema)
        inserted = {
            "documents": session.insert_missing(f"{schema}.documents", "document_id", data.documents),
            "annotations": session.insert_missing(f"{schema}.annotations", "annotation_id", data.annotations),
            "annotation_events": session.insert_missing(
                f"{schema}.annotation_events", "event_id", data.annotation_events
            ),
        }
        if any(inserted.values()):
            for table in inserted:
                session.refresh_statistics(f"{schema}.{table}")
    return LoadReport(
        documents=data.documents.num_rows,
        annotations=data.annotations.num_rows,
        annotation_events=data.annotation_events.num_rows,
        inserted=inserted,
    )


@dataclass(frozen=True)
class ReviewReport:
    proposals: int  # proposals the app showed (appended as `proposed` events)
    accepted: int  # reviewers kept the model's label
    corrected: int  # reviewers accepted another label (the form's true one)
    rejected: int  # reviewers rejected the proposal without a label


def play_reviews(database: Database, actor: str, model_version_id: int, schema: str = "app") -> ReviewReport:
    """Play the app's part of the review loop on the demo forms (CONTRACT §7): every
    pending segment for which ``model_version_id`` has a proposal in
    ``datasets.review_queue`` gets a ``proposed`` event with the model's ``actor``,
    then a reviewer's decision from the form's true label: accepted when the
    proposal is right; when it is wrong, the reviewer accepts the true label
    (corrected) or, for one in four, rejects it. Decisions are a pure function of
    the segment, and events are appended after the log's newest one."""
    truth = {f"{segment.doc_id}-{segment.segment_id}": segment.label for segment in read_segments()}
    with database.session() as session:
        shown = session.fetchall(
            "select annotation_id, proposed_label from datasets.review_queue "
            "where model_version_id = ? order by priority",
            (model_version_id,),
        )
        last_id, last_at = session.fetchone(f"select max(event_id), max(occurred_at) from {schema}.annotation_events")
        next_id, at = int(last_id or 0) + 1, (last_at or PROJECT_START) + timedelta(minutes=1)
        counts = {"accepted": 0, "corrected": 0, "rejected": 0}
        events = []
        for position, (annotation_id, proposed_label) in enumerate(shown):
            true_label = truth.get(annotation_id)
            proposed_at = at + timedelta(seconds=30 * position)
            decided_at = proposed_at + timedelta(seconds=10)
            reviewer = REVIEWERS[position % len(REVIEWERS)]
            events.append((annotation_id, "proposed", proposed_label, actor, proposed_at, None))
            if proposed_label == true_label or true_label is None:
                decision, label, outcome = "accepted", proposed_label, "accepted"
            elif random.Random(f"funsd-demo-review:{annotation_id}").random() < 0.25:
                decision, label, outcome = "rejected", None, "rejected"
            else:
                decision, label, outcome = "accepted", true_label, "corrected"
            events.append((annotation_id, decision, label, reviewer, decided_at, "demo review"))
            counts[outcome] += 1
        rows = [(next_id + offset, *event) for offset, event in enumerate(events)]
        for start in range(0, len(rows), 500):
            chunk = rows[start : start + 500]
            session.execute(
                f"insert into {schema}.annotation_events (event_id, annotation_id, event_type, label, actor, occurred_at, note) "
                f"values {', '.join('(?, ?, ?, ?, ?, ?, ?)' for _ in chunk)}",
                [value for row in chunk for value in row],
            )
        if rows:
            session.refresh_statistics(f"{schema}.annotation_events")
    return ReviewReport(len(shown), counts["accepted"], counts["corrected"], counts["rejected"])
