"""The dataset fingerprint (CONTRACT §5): same examples, same hash; any change, another."""

from __future__ import annotations

import pyarrow as pa
import pytest

from trainer.dataset import EXAMPLE_COLUMNS, dataset_fingerprint


def examples(*rows: dict) -> pa.Table:
    if not rows:
        return pa.table({name: pa.array([], pa.string()) for name in EXAMPLE_COLUMNS})
    base = {name: None for name in EXAMPLE_COLUMNS}
    return pa.Table.from_pylist([{**base, **row} for row in rows])


A = {"annotation_id": "a1", "document_id": "d1", "text": "Name:", "label": "question", "split": "train", "x0": 1.0}
B = {"annotation_id": "a2", "document_id": "d2", "text": "Smith", "label": "answer", "split": "eval", "x0": 2.0}


def test_order_of_rows_does_not_matter():
    assert dataset_fingerprint(examples(A, B)) == dataset_fingerprint(examples(B, A))
    assert len(dataset_fingerprint(examples(A))) == 64


@pytest.mark.parametrize("field", ["annotation_id", "document_id", "text", "label", "split"])
def test_changing_any_identifying_field_changes_it(field):
    changed = {**A, field: A[field] + " "}
    assert dataset_fingerprint(examples(changed, B)) != dataset_fingerprint(examples(A, B))


def test_adding_or_removing_an_example_changes_it():
    assert dataset_fingerprint(examples(A)) != dataset_fingerprint(examples(A, B))
    assert dataset_fingerprint(examples()) != dataset_fingerprint(examples(A))


def test_fields_cannot_bleed_into_each_other():
    left = {**A, "text": "ab", "label": "c"}
    right = {**A, "text": "a", "label": "bc"}
    assert dataset_fingerprint(examples(left)) != dataset_fingerprint(examples(right))


def test_boxes_and_acceptance_metadata_are_not_part_of_it():
    moved = {**A, "x0": 99.0, "accepted_by": "user:other"}
    assert dataset_fingerprint(examples(moved, B)) == dataset_fingerprint(examples(A, B))
