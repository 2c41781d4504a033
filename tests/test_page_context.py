"""The same page at training and at prediction (issue 22 point 7): a run's layout
and neighbour features see every live segment of an example's page, pending and
rejected ones too (trainer.model.fit_inputs.with_page_context), as `propose` does."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pyarrow as pa

from trainer.data.dataset import EXAMPLE_SCHEMA
from trainer.data.live_segments import LIVE_SEGMENT_SCHEMA, PAGE_CONTEXT_COLUMNS
from trainer.model.fit_inputs import _InputsBuilder, with_page_context
from trainer.model.fitting import _context_folds, segments_of
from trainer.model.segment_features import DIRECTIONS, find_neighbours

NAN = float("nan")
AT = datetime(2026, 1, 1)


def example_inputs(rows):
    """TrainingInputs of examples (annotation_id, document_id, page, box, text, label, split)."""
    table = pa.Table.from_pylist(
        [
            {"annotation_id": a, "document_id": d, "page": p, "x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3],
             "text": t, "label": label, "accepted_at": AT, "accepted_by": "user:x", "accepted_event_id": i,
             "split": split}
            for i, (a, d, p, b, t, label, split) in enumerate(rows)
        ],
        schema=EXAMPLE_SCHEMA,
    )  # fmt: skip
    builder = _InputsBuilder()
    for batch in table.to_batches():
        builder.update(batch)
    return builder.finish()


def live_batch(rows):
    schema = pa.schema([LIVE_SEGMENT_SCHEMA.field(name) for name in PAGE_CONTEXT_COLUMNS])
    return pa.RecordBatch.from_pylist(
        [{"annotation_id": a, "document_id": d, "page": p, "x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3], "text": t}
         for a, d, p, b, t in rows],
        schema=schema,
    )  # fmt: skip


def test_the_rest_of_each_example_page_joins_and_nothing_else():
    inputs = example_inputs([
        ("a1", "form-1", 1, (150, 100, 400, 120), "R. J. Reynolds", "answer", "train"),
        ("a2", "form-1", 2, (50, 50, 300, 70), "TOTAL", "question", "train"),
        ("b1", "form-2", 1, (50, 50, 300, 70), "TOTAL", "question", "eval"),
    ])  # fmt: skip
    live = [
        live_batch([
            ("a1", "form-1", 1, (150, 100, 400, 120), "R. J. Reynolds"),  # an example: not again
            ("c1", "form-1", 1, (50, 100, 100, 120), "TO:"),  # pending, left of a1: joins
            ("c2", "form-1", 3, (50, 100, 100, 120), "page three"),  # no example on page 3
            ("c3", "form-3", 1, (50, 100, 100, 120), "another form"),  # no example in the document
        ]),
        live_batch([
            ("c4", "form-2", 1, (50, 90, 300, 110), "TOTAL"),  # a text the examples have: no new text
            ("c5", "form-2", None, (NAN, NAN, NAN, NAN), "no page"),  # page 0 has no example
        ]),
    ]  # fmt: skip
    before = list(inputs.texts)
    extended, context = with_page_context(inputs, iter(live))
    assert extended.texts[: len(before)] == before  # the examples' texts keep their indices
    assert extended.texts[len(before) :] == ["TO:"]
    assert context.rows == 2
    assert [extended.texts[i] for i in context.text_index] == ["TO:", "TOTAL"]
    codes = {document: int(code) for document, code in zip(inputs.document_id.to_pylist(), inputs.document_code)}
    assert context.document_code.tolist() == [codes["form-1"], codes["form-2"]]
    assert context.page.tolist() == [1, 1]
    np.testing.assert_array_equal(context.boxes, [[50, 100, 100, 120], [50, 90, 300, 110]])
    # Everything of the examples is as it was.
    assert extended.text_index.tolist() == inputs.text_index.tolist()
    assert extended.rows == inputs.rows


def test_an_example_finds_its_neighbour_among_the_page_context():
    inputs = example_inputs([
        ("a1", "form-1", 1, (150, 100, 400, 120), "R. J. Reynolds", "answer", "train"),
        ("a2", "form-1", 1, (150, 300, 400, 320), "Signature", "question", "train"),
    ])  # fmt: skip
    extended, context = with_page_context(
        inputs, iter([live_batch([("c1", "form-1", 1, (50, 100, 100, 120), "TO:")])])
    )
    alone = find_neighbours(segments_of(inputs))
    together = find_neighbours(segments_of(extended, context))
    left = DIRECTIONS.index("left")
    assert alone[0, left] == -1  # the examples alone: nothing left of a1
    assert together[0, left] == inputs.rows  # the pending "TO:" (the first context row) is
    assert together[1, left] == -1


def test_the_context_of_a_document_takes_its_fold():
    inputs = example_inputs([
        ("a1", "form-1", 1, (0, 0, 1, 1), "x", "answer", "train"),
        ("b1", "form-2", 1, (0, 0, 1, 1), "y", "answer", "train"),
        ("e1", "form-3", 1, (0, 0, 1, 1), "z", "answer", "eval"),
    ])  # fmt: skip
    _, context = with_page_context(inputs, iter([live_batch([
        ("c1", "form-2", 1, (0, 2, 1, 3), "p"), ("c2", "form-3", 1, (0, 2, 1, 3), "q"), ("c3", "form-1", 1, (0, 2, 1, 3), "r"),
    ])]))  # fmt: skip
    folds = np.array([1, 0, -1])
    assert _context_folds(inputs, folds, context).tolist() == [0, -1, 1]


def test_a_run_records_how_many_live_segments_joined_its_pages(trained):
    """The trained fixture's runs read the views: their page context is every live
    segment on an example's page that is not an example, counted here in SQL."""
    space, _, second = trained
    (expected,) = space.query(
        "select count(*) from datasets.live_segments as live where not exists "
        "(select 1 from datasets.training_examples as example where example.annotation_id = live.annotation_id) "
        "and exists (select 1 from datasets.training_examples as example where example.document_id = live.document_id "
        "and coalesce(example.page, 0) = coalesce(live.page, 0))"
    )[0]
    assert expected > 0
    params = json.loads(space.query("select params from training.training_runs where run_id = ?", [second.run_id])[0][0])
    assert params["page_context"] is True
    assert params["page_context_segments"] == expected
