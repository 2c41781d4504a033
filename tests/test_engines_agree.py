"""The same app data in DuckDB and in PostgreSQL gives the same training examples
and the same dataset fingerprint."""

from __future__ import annotations

from datetime import datetime

import pytest
from conftest import load_app_data, new_workspace
from hypothesis import HealthCheck, given, settings
from reference import Annotation, Document, Event, training_examples
from test_dataset_rules import app_states, build_views, replace_app_data

from trainer.data.dataset import EXAMPLE_COLUMNS, dataset_fingerprint, read_training_examples
from trainer.data.demo import build_demo_data, read_segments

LONG_TEXT = ("Ünïcødé עברית العربية 🙂👍🏽 \"quoted\", comma\nnew line\ttab " * 400)[:20_000]


@pytest.fixture(scope="module")
def both_engines(tmp_path_factory, request):
    return {
        engine: build_views(new_workspace(tmp_path_factory.mktemp(f"agree-{engine}"), engine, request), {})
        for engine in ("duckdb", "postgres")
    }


def examples_and_fingerprint(space):
    with space.database().session() as session:
        table = read_training_examples(session)
    return table.select(list(EXAMPLE_COLUMNS)).to_pylist(), dataset_fingerprint(table)


def test_long_unicode_texts_agree_byte_for_byte(both_engines):
    documents = [Document("d1"), Document("文書-2"), Document("doc 3")]
    annotations = [
        Annotation("a1", "d1", LONG_TEXT),
        Annotation("a2", "文書-2", LONG_TEXT[::-1]),
        Annotation("a3", "doc 3", "  RTL: שלום  "),
        Annotation("a4", "d1", "emoji 👩🏽‍💻 and NBSP\u00a0"),
    ]
    events = [
        Event(index, annotation.annotation_id, "accepted", label, "user:r", datetime(2026, 1, 2))
        for index, (annotation, label) in enumerate(zip(annotations, ["question", "ラベル", " answer ", "other"]), 1)
    ]
    results = {}
    for engine, space in both_engines.items():
        replace_app_data(space, documents, annotations, events)
        results[engine] = examples_and_fingerprint(space)
    assert results["duckdb"] == results["postgres"]
    rows, _ = results["duckdb"]
    assert {row["annotation_id"]: row["text"] for row in rows} == {a.annotation_id: a.text for a in annotations}
    assert len(LONG_TEXT) == 20_000
    assert {row["annotation_id"] for row in rows} == set(training_examples(documents, annotations, events))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=app_states())
def test_generated_dirty_data_agrees(both_engines, state):
    results = {}
    for engine, space in both_engines.items():
        replace_app_data(space, *state)
        results[engine] = examples_and_fingerprint(space)
    assert results["duckdb"] == results["postgres"]


def test_the_demo_data_agrees(tmp_path_factory, request):
    data = build_demo_data(read_segments())
    fingerprints = {}
    for engine in ("duckdb", "postgres"):
        space = new_workspace(tmp_path_factory.mktemp(f"demo-{engine}"), engine, request)
        load_app_data(space.database(), data)
        space.dbt("run")
        rows, fingerprints[engine] = examples_and_fingerprint(space)
        assert len(rows) == 6223
    assert fingerprints["duckdb"] == fingerprints["postgres"]


def test_synthetic_app_data_follows_the_contract_on_both_engines(both_engines):
    """The benchmarks' generated event logs (late events, ties, edits after acceptance,
    blank labels and texts, unknown types, orphans, deleted documents) give exactly
    the reference's examples, on both engines."""
    from trainer.data.synthetic import synthetic_app_data

    data = synthetic_app_data(3_000, seed=5)
    documents = [Document(**row) for row in data.documents.to_pylist()]
    annotations = [Annotation(**row) for row in data.annotations.to_pylist()]
    events = [Event(**row) for row in data.annotation_events.to_pylist()]
    expected = training_examples(documents, annotations, events)
    assert 1_000 < len(expected) < 3_000  # the dirty cases really remove examples
    results = {}
    for engine, space in both_engines.items():
        replace_app_data(space, documents, annotations, events)
        rows, fingerprint = examples_and_fingerprint(space)
        assert {row["annotation_id"]: row for row in rows} == expected, engine
        results[engine] = fingerprint
    assert results["duckdb"] == results["postgres"]
