"""Synthetic examples at any scale, for benchmarks and for tests that need more
rows than the demo has: real-looking text lengths, awkward characters included
(quotes, commas, newlines, right-to-left marks, emoji), a stable order."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pyarrow as pa

from trainer.dataset import EXAMPLE_SCHEMA

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
