"""The dataset fingerprint (CONTRACT §5): same examples, same hash; any change, another."""

from __future__ import annotations

import hashlib
import struct

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.data.dataset import EXAMPLE_COLUMNS, EXAMPLE_SCHEMA, Fingerprint, dataset_fingerprint


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


# -- the algorithm itself, pinned (docs/USER_GUIDE.md, "The dataset fingerprint") --------
# Every stored fingerprint and `--from-snapshot <fingerprint>` depend on the exact bytes
# hashed, so they are recomputed here from the documented description, by code that
# shares nothing with trainer.data.dataset.

DOCUMENTED_FIRST_LINE = b"training-db-pipeline/training-examples/v1\n"
DOCUMENTED_FIELD_ORDER = ("annotation_id", "document_id", "split", "label", "text")


def documented_fingerprint(rows: list[dict]) -> str:
    message = bytearray(DOCUMENTED_FIRST_LINE)
    for row in sorted(rows, key=lambda row: row["annotation_id"].encode("utf-8")):
        for name in DOCUMENTED_FIELD_ORDER:
            encoded = row[name].encode("utf-8")
            message += struct.pack(">Q", len(encoded)) + encoded
    return hashlib.sha256(bytes(message)).hexdigest()


UNICODE = {"annotation_id": "é-1", "document_id": "dé", "text": "«Größe» 👩‍🔬\n\t", "label": "header", "split": "train"}
EMPTY_FIELDS = {"annotation_id": "a0", "document_id": "", "text": "", "label": "", "split": ""}
# "Z" < "a" < "é" < "😀" in UTF-8 byte order (and "a10" < "a9"): not a locale's order.
KNOWN_A_B = "e42657cae6c363d394cec38bdc64d48359442ed950450cf67b2b4ff9def0d8f1"  # fingerprint of [A, B]
ORDERED_IDS = [{**A, "annotation_id": name} for name in ("a9", "a10", "Z", "😀", "é")]


@pytest.mark.parametrize(
    "rows",
    [[], [A], [A, B], [B, A], [UNICODE, A, EMPTY_FIELDS], ORDERED_IDS],
    ids=["empty", "one", "two", "two-reversed", "unicode-and-empty-fields", "byte-order"],
)
def test_the_fingerprint_is_the_documented_algorithm(rows):
    assert dataset_fingerprint(examples(*rows)) == documented_fingerprint(rows)


def test_known_answers_pin_the_stored_fingerprints():
    """Literal values, so the docs and the reference above cannot drift together either."""
    assert dataset_fingerprint(examples()) == hashlib.sha256(DOCUMENTED_FIRST_LINE).hexdigest()
    assert dataset_fingerprint(examples(A, B)) == KNOWN_A_B


def test_the_streamed_fingerprint_is_the_same_whatever_the_batches():
    rows = [{**A, "annotation_id": f"a{n:03d}", "text": f"t{n}"} for n in range(10)]
    table = examples(*rows).cast(EXAMPLE_SCHEMA)
    streamed = Fingerprint()
    for batch in table.to_batches(max_chunksize=3):
        streamed.update(batch)
    assert streamed.hexdigest() == documented_fingerprint(rows) == dataset_fingerprint(table)


_text = st.text(st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"annotation_id": _text, "document_id": _text, "split": st.sampled_from(["train", "eval"]),
             "label": _text, "text": st.text(st.characters(codec="utf-8"), max_size=300)}
        ),
        max_size=20,
        unique_by=lambda row: row["annotation_id"],
    )
)
def test_any_dataset_fingerprints_as_documented(rows):
    assert dataset_fingerprint(examples(*rows)) == documented_fingerprint(rows)
