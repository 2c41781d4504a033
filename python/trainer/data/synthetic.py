"""Synthetic examples at any scale, for benchmarks and for tests that need more
rows than the demo has: real-looking text lengths, awkward characters included
(quotes, commas, newlines, right-to-left marks, emoji), a stable order."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pyarrow as pa

from trainer.data.dataset import EXAMPLE_SCHEMA

LABELS = ("question", "answer", "header", "other")
_WORDS = (
    "date", "name", "total", "amount", "invoice", "tobacco", "research", "approved", "R&D", "Brown",
    "Williamson", "№", "Größe", "«quoted»", '"quoted"', "a,b", "line\nbreak", "tab\there", "\u200fRTL",
    "👩‍🔬", "x" * 30, "12/31/1999", "$1,234.00", "=SUM(A1)", "TO:", "FROM:", "RE:", "cc",
)
EXAMPLES_PER_DOCUMENT = 50


def synthetic_examples(rows: int, seed: int = 0, eval_percent: int = 20) -> pa.Table:
    """``rows`` examples in EXAMPLE_SCHEMA, sorted by annotation_id; whole
    documents (of EXAMPLES_PER_DOCUMENT) go to eval with ``eval_percent`` chance."""
    generator = random.Random(seed)
    start = datetime(2026, 1, 1)
    documents = (rows + EXAMPLES_PER_DOCUMENT - 1) // EXAMPLES_PER_DOCUMENT
    document_split = ["eval" if generator.randrange(100) < eval_percent else "train" for _ in range(documents)]
    columns: dict[str, list] = {name: [] for name in EXAMPLE_SCHEMA.names}
    for index in range(rows):
        document = index // EXAMPLES_PER_DOCUMENT
        x0, y0 = generator.random() * 0.8, generator.random() * 0.95
        words = generator.choices(_WORDS, k=max(1, int(generator.lognormvariate(1.3, 0.8))))
        columns["annotation_id"].append(f"syn-{index:09d}")
        columns["document_id"].append(f"syn-doc-{document:07d}")
        columns["page"].append(1 + generator.randrange(3))
        columns["x0"].append(x0)
        columns["y0"].append(y0)
        columns["x1"].append(x0 + 0.02 + generator.random() * 0.18)
        columns["y1"].append(y0 + 0.01 + generator.random() * 0.03)
        columns["text"].append(" ".join(words))
        columns["label"].append(generator.choice(LABELS))
        columns["accepted_at"].append(start + timedelta(seconds=index))
        columns["accepted_by"].append(f"reviewer-{generator.randrange(12)}")
        columns["accepted_event_id"].append(index + 1)
        columns["split"].append(document_split[document])
    return pa.table(columns, schema=EXAMPLE_SCHEMA)


# -- app data: documents, annotations and their event log ---------------------------------

ANNOTATIONS_PER_DOCUMENT = 40
_REVIEWERS = tuple(f"user:reviewer-{i}" for i in range(12))
_MODEL = "model:segment-labeler@3"
_BLANKS = ("", "   ", "\t\n", " \r\f\v ")


def synthetic_app_data(annotations: int, seed: int = 0):
    """The app's three tables for ``annotations`` segments, about 5 events each,
    with the dirty cases the contract names: late events (event_id order is not time
    order), rejections, deletions, edits after an acceptance, blank labels and texts,
    equal timestamps, unknown event types, events of annotations that do not exist,
    and deleted documents. Returns a :class:`trainer.data.demo.DemoData`."""
    from trainer.data.demo import _ANNOTATIONS, _DOCUMENTS, _EVENTS, DemoData

    generator = random.Random(seed)
    start = datetime(2025, 1, 1)
    documents = (annotations + ANNOTATIONS_PER_DOCUMENT - 1) // ANNOTATIONS_PER_DOCUMENT
    doc_columns: dict[str, list] = {name: [] for name in _DOCUMENTS.names}
    for index in range(documents):
        created = start + timedelta(minutes=index)
        doc_columns["document_id"].append(f"doc-{index:07d}")
        doc_columns["filename"].append(f"form-{index:07d}.pdf")
        doc_columns["sha256"].append(None)
        doc_columns["page_count"].append(3)
        doc_columns["created_at"].append(created)
        doc_columns["deleted_at"].append(created + timedelta(days=30) if generator.random() < 0.02 else None)

    ann_columns: dict[str, list] = {name: [] for name in _ANNOTATIONS.names}
    events: list[tuple] = []  # (occurred_at, annotation_id, event_type, label, actor, note)
    for index in range(annotations):
        annotation_id = f"ann-{index:08d}"
        document = index // ANNOTATIONS_PER_DOCUMENT
        x0, y0 = generator.random() * 0.8, generator.random() * 0.95
        text = " ".join(generator.choices(_WORDS, k=max(1, int(generator.lognormvariate(1.3, 0.8)))))
        if generator.random() < 0.01:
            text = generator.choice(_BLANKS)
        label = generator.choice(LABELS)
        at = start + timedelta(minutes=document, seconds=index % ANNOTATIONS_PER_DOCUMENT * 7)
        history = _history(generator, annotation_id, label, at)
        events += history
        ann_columns["annotation_id"].append(annotation_id)
        ann_columns["document_id"].append(f"doc-{document:07d}")
        ann_columns["page"].append(1 + generator.randrange(3))
        ann_columns["x0"].append(x0)
        ann_columns["y0"].append(y0)
        ann_columns["x1"].append(x0 + 0.02 + generator.random() * 0.18)
        ann_columns["y1"].append(y0 + 0.01 + generator.random() * 0.03)
        ann_columns["text"].append(text)
        ann_columns["label"].append(label)  # display state only: the event log decides
        ann_columns["status"].append("pending")
        ann_columns["created_at"].append(history[0][0])
        ann_columns["updated_at"].append(max(event[0] for event in history))
    for orphan in range(max(1, annotations // 1000)):  # events of annotations that do not exist
        events.append((start, f"ghost-{orphan:06d}", "accepted", "question", _REVIEWERS[0], None))

    # The app numbers events as they arrive; a few arrive late, after later ones.
    arrival = sorted(range(len(events)), key=lambda i: events[i][0] + timedelta(hours=_delay(generator)))
    event_columns: dict[str, list] = {name: [] for name in _EVENTS.names}
    for event_id, i in enumerate(arrival, start=1):
        occurred_at, annotation_id, event_type, event_label, actor, note = events[i]
        event_columns["event_id"].append(event_id)
        event_columns["annotation_id"].append(annotation_id)
        event_columns["event_type"].append(event_type)
        event_columns["label"].append(event_label)
        event_columns["actor"].append(actor)
        event_columns["occurred_at"].append(occurred_at)
        event_columns["note"].append(note)
    return DemoData(
        pa.table(doc_columns, schema=_DOCUMENTS),
        pa.table(ann_columns, schema=_ANNOTATIONS),
        pa.table(event_columns, schema=_EVENTS),
    )


def _delay(generator: random.Random) -> float:
    return 48.0 if generator.random() < 0.03 else 0.0


def _history(generator: random.Random, annotation_id: str, label: str, at: datetime) -> list[tuple]:
    """About five events; which kind of history is drawn at random."""
    reviewer = generator.choice(_REVIEWERS)
    other = generator.choice([name for name in LABELS if name != label])
    step = lambda n: at + timedelta(minutes=5 * n)  # noqa: E731
    kind = generator.random()
    if kind < 0.45:  # proposed, corrected, accepted, touched again, accepted again
        return [
            (step(0), annotation_id, "proposed", other, _MODEL, None),
            (step(1), annotation_id, "edited", label, reviewer, None),
            (step(2), annotation_id, "accepted", label, reviewer, None),
            (step(3), annotation_id, "edited", label, reviewer, "typo"),
            (step(4), annotation_id, "accepted", label, reviewer, None),
        ]
    if kind < 0.65:  # accepted, then an edit that was never accepted
        return [
            (step(0), annotation_id, "created", label, reviewer, None),
            (step(1), annotation_id, "accepted", label, reviewer, None),
            (step(2), annotation_id, "edited", other, reviewer, None),
            (step(3), annotation_id, "commented", None, reviewer, "unknown event type"),
            (step(4), annotation_id, "proposed", other, _MODEL, None),
        ]
    if kind < 0.75:  # rejected in the end
        return [
            (step(0), annotation_id, "proposed", label, _MODEL, None),
            (step(1), annotation_id, "accepted", label, reviewer, None),
            (step(2), annotation_id, "edited", other, reviewer, None),
            (step(3), annotation_id, "rejected", None, reviewer, None),
            (step(4), annotation_id, "edited", label, reviewer, None),
        ]
    if kind < 0.82:  # deleted
        return [
            (step(0), annotation_id, "created", label, reviewer, None),
            (step(1), annotation_id, "accepted", label, reviewer, None),
            (step(2), annotation_id, "deleted", None, reviewer, None),
            (step(3), annotation_id, "edited", label, reviewer, None),
        ]
    if kind < 0.87:  # accepted with a blank label
        return [
            (step(0), annotation_id, "created", label, reviewer, None),
            (step(1), annotation_id, "accepted", label, reviewer, None),
            (step(2), annotation_id, "edited", " ", reviewer, None),
            (step(3), annotation_id, "accepted", generator.choice(_BLANKS), reviewer, None),
            (step(4), annotation_id, "edited", label, reviewer, None),
        ]
    if kind < 0.93:  # two decisions at the same moment: the greater event_id decides
        return [
            (step(0), annotation_id, "created", label, reviewer, None),
            (step(1), annotation_id, "edited", label, reviewer, None),
            (step(2), annotation_id, "rejected", None, reviewer, None),
            (step(2), annotation_id, "accepted", label, reviewer, None),
            (step(3), annotation_id, "edited", other, reviewer, None),
        ]
    # never decided
    return [
        (step(0), annotation_id, "proposed", label, _MODEL, None),
        (step(1), annotation_id, "edited", other, reviewer, None),
        (step(2), annotation_id, "edited", label, reviewer, None),
        (step(3), annotation_id, "proposed", other, _MODEL, None),
        (step(4), annotation_id, "edited", label, reviewer, None),
    ]
