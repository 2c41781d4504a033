"""The trainer reads its examples as a stream of record batches: however they are
batched, a run stores the same snapshot bytes, records the same fingerprint and
summary, and fits the same model with the same metrics as a read of the whole
table; and the fit on distinct (text, label) rows weighted by their counts is the
fit on one row per example."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from conftest import Workspace

from trainer.core.blob_store import ArtifactStore
from trainer.core.errors import ConfigurationError, DatasetError
from trainer.data.dataset import (
    EXAMPLE_SCHEMA,
    dataset_fingerprint,
    read_training_examples,
    stream_training_examples,
    summarize,
)
from trainer.data.snapshots import ROW_GROUP_ROWS, snapshot_bytes
from trainer.data.synthetic import synthetic_examples
from trainer.model.arguments import TrainingArguments
from trainer.model.classifier import SegmentClassifier
from trainer.model.fit_inputs import collect_examples, row_order, text_probabilities
from trainer.model.fitting import fit_segment_model, new_text_head
from trainer.results.store import ResultsStore
from trainer.runs.training import train


def metric_rows(space: Workspace, run_id: int) -> list[tuple]:
    return space.query(
        "select split, name, coalesce(label, ''), value from training.metrics where run_id = ? "
        "order by split, name, coalesce(label, '')",
        (run_id,),
    )


@pytest.fixture
def trained_views(trained, tmp_path) -> tuple[Workspace, Workspace, object]:
    """A copy of the session's trained workspace (database with its views and runs),
    with a new blob store holding only the embedding cache: no snapshot yet."""
    space, first, _ = trained
    copy = space.copy_database(tmp_path)
    shutil.copytree(space.artifacts / "embeddings", copy.artifacts / "embeddings")
    return space, copy, first


def test_a_run_read_in_small_batches_records_what_a_whole_table_read_gives(trained_views):
    space, copy, first = trained_views
    with copy.database().session() as session:
        whole = read_training_examples(session)
        batches = list(stream_training_examples(session, batch_rows=100))
    # The stream really is several batches, and together they are the whole table.
    assert len(batches) >= whole.num_rows / 100 > 5 and max(batch.num_rows for batch in batches) <= 100
    assert pa.Table.from_batches(batches, schema=EXAMPLE_SCHEMA).equals(whole)

    settings = dataclasses.replace(copy.settings(), read_batch_rows=100)
    result = train(TrainingArguments(model_name="funsd", seed=7), settings, progress=False)
    run = ResultsStore(copy.database()).get_run(result.run_id)
    original = ResultsStore(space.database()).get_run(first.run_id)
    # Exactly the snapshot bytes and fingerprint of the whole table...
    assert result.dataset_fingerprint == dataset_fingerprint(whole) == original.dataset_fingerprint
    assert run.snapshot_sha256 == hashlib.sha256(snapshot_bytes(whole)).hexdigest() == original.snapshot_sha256
    stored = ArtifactStore(str(copy.artifacts)).sha256_of(run.snapshot_uri)
    assert stored == run.snapshot_sha256
    assert sorted(run.dataset_summary, key=str) == sorted(original.dataset_summary, key=str)
    assert (run.train_examples, run.eval_examples) == (original.train_examples, original.eval_examples)
    # ...and the model and metrics of the session's run, read in one batch.
    assert metric_rows(copy, result.run_id) == metric_rows(space, first.run_id)
    ours = SegmentClassifier.load(ArtifactStore(str(copy.artifacts)), result.model_version.artifact_uri)
    theirs = SegmentClassifier.load(ArtifactStore(str(space.artifacts)), first.model_version.artifact_uri)
    for model in ("head", *ours.text_heads):
        mine = ours.head if model == "head" else ours.text_heads[model]
        other = theirs.head if model == "head" else theirs.text_heads[model]
        mine, other = (getattr(fitted, "steps", [[None, fitted]])[-1][1] for fitted in (mine, other))
        np.testing.assert_array_equal(mine.coef_, other.coef_)
        np.testing.assert_array_equal(mine.intercept_, other.intercept_)
    assert not list(copy.artifacts.rglob("*.partial-*"))


@pytest.fixture(scope="module")
def synthetic() -> tuple[pa.Table, str]:
    """Examples filling more than one snapshot row group, and their snapshot's sha256."""
    table = synthetic_examples(ROW_GROUP_ROWS + 3_000, seed=11)
    return table, hashlib.sha256(snapshot_bytes(table)).hexdigest()


@pytest.mark.parametrize("batch_rows", [999, 4096, ROW_GROUP_ROWS + 1])
def test_collecting_any_batching_gives_the_whole_tables_snapshot_fingerprint_and_inputs(synthetic, batch_rows, tmp_path):
    table, sha256 = synthetic
    collected = collect_examples(table.to_batches(max_chunksize=batch_rows), str(tmp_path))
    try:
        assert collected.snapshot_sha256 == sha256
        assert hashlib.sha256(collected.snapshot_path.read_bytes()).hexdigest() == sha256
    finally:
        collected.discard_snapshot_file()
    assert not list(tmp_path.iterdir())
    assert collected.fingerprint == dataset_fingerprint(table)
    assert collected.summary == summarize(table)
    inputs = collected.inputs
    texts, labels = table.column("text").to_pylist(), table.column("label").to_pylist()
    assert len(inputs.texts) == len(set(texts)) and inputs.rows == table.num_rows
    assert [inputs.texts[i] for i in inputs.text_index] == texts
    assert list(inputs.labels(np.ones(inputs.rows, dtype=bool))) == labels
    assert inputs.classes == sorted(set(labels))
    assert inputs.is_train.tolist() == [split == "train" for split in table.column("split").to_pylist()]
    # The train groups: each distinct (text, label) pair of the train split once, with its count.
    text_index, group_labels, counts = inputs.train_groups()
    expected = Counter((t, l) for t, l, keep in zip(texts, labels, inputs.is_train) if keep)
    assert dict(zip(((inputs.texts[i], l) for i, l in zip(text_index, group_labels)), counts.tolist())) == expected
    assert len(counts) == len(expected) and counts.sum() == inputs.is_train.sum()


def test_examples_out_of_annotation_id_order_are_refused_and_leave_no_file(tmp_path):
    table = synthetic_examples(300, seed=2)
    batches = table.to_batches(max_chunksize=100)
    with pytest.raises(DatasetError, match="not in annotation_id order"):
        collect_examples([batches[1], batches[0], batches[2]], str(tmp_path))
    assert not list(tmp_path.iterdir())


def test_the_fit_on_grouped_rows_is_the_fit_on_one_row_per_example():
    from sklearn.linear_model import LogisticRegression

    generator = np.random.default_rng(5)
    distinct = generator.normal(size=(120, 12)).astype(np.float32)
    labels = np.array(["answer", "header", "other", "question"])[generator.integers(0, 4, size=120)]
    counts = generator.integers(1, 6, size=120)
    order = generator.permutation(int(counts.sum()))  # duplicated rows, shuffled
    repeated, repeated_labels = np.repeat(distinct, counts, axis=0)[order], np.repeat(labels, counts)[order]
    for class_weight in (None, "balanced"):
        options = {"C": 4.0, "class_weight": class_weight, "max_iter": 10_000, "tol": 1e-10}
        grouped = LogisticRegression(**options).fit(distinct, labels, sample_weight=counts)
        expanded = LogisticRegression(**options).fit(repeated, repeated_labels)
        assert grouped.coef_.dtype == np.float32  # float32 input is fitted as float32 (no float64 copy)
        np.testing.assert_allclose(grouped.coef_, expanded.coef_, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(grouped.intercept_, expanded.intercept_, rtol=1e-3, atol=1e-4)
    # The trainer's own head, at its own tolerance: the same predictions.
    for class_weight in ("none", "balanced"):
        args = TrainingArguments(class_weight=class_weight)
        grouped = new_text_head(args).fit(distinct, list(labels), sample_weight=counts)
        expanded = new_text_head(args).fit(repeated, list(repeated_labels))
        np.testing.assert_allclose(grouped.predict_proba(distinct), expanded.predict_proba(distinct), atol=1e-3)


def test_the_char_ngram_model_fit_on_the_filled_columns_is_the_fit_on_every_column(tmp_path):
    collected = collect_examples(synthetic_examples(2_000, seed=5).to_batches(), str(tmp_path))
    collected.discard_snapshot_file()
    inputs, order = collected.inputs, row_order(collected.inputs)
    args = TrainingArguments(embedding_features=False, layout_features=False, neighbour_features=False)
    saved = fit_segment_model(inputs, order, None, args, progress=False).text_heads["char_ngrams"]

    hashing, tfidf, logistic = (saved.named_steps[name] for name in ("hashing", "tfidf", "logistic"))
    every_column = tfidf.transform(hashing.transform(inputs.texts))
    direct = new_text_head(args).fit(
        every_column[order.train_text], order.train_labels, sample_weight=order.train_counts
    )
    np.testing.assert_allclose(saved.predict_proba(inputs.texts), direct.predict_proba(every_column), atol=2e-3)
    filled = np.unique(every_column[order.train_text].indices)
    assert len(filled) < hashing.n_features  # the case the compact fit is for
    assert logistic.coef_.shape[1] == hashing.n_features
    assert not logistic.coef_[:, np.setdiff1d(np.arange(hashing.n_features), filled)].any()


def test_each_distinct_text_is_predicted_once_from_the_rows_the_fit_keeps(tmp_path):
    from sklearn.linear_model import LogisticRegression

    collected = collect_examples(synthetic_examples(3_000, seed=4).to_batches(max_chunksize=700), str(tmp_path))
    collected.discard_snapshot_file()
    inputs = collected.inputs
    order = row_order(inputs)
    # Every distinct text is a row: once per train label it has, or once as an eval-only text.
    assert sorted(set(order.text_rows.tolist())) == list(range(len(inputs.texts)))
    assert not set(order.train_text.tolist()) & set(order.other_text.tolist())
    assert order.texts(inputs) == [inputs.texts[i] for i in order.text_rows]
    by_text = np.random.default_rng(1).normal(size=(len(inputs.texts), 8)).astype(np.float32)
    vectors = by_text[order.text_rows]
    head = LogisticRegression().fit(
        vectors[: order.train_rows], order.train_labels, sample_weight=order.train_counts
    )
    probabilities = text_probabilities(head.predict_proba, order, vectors, len(inputs.texts), chunk_rows=333)
    np.testing.assert_allclose(probabilities, head.predict_proba(by_text), rtol=1e-5, atol=1e-6)


def test_the_read_batch_size_is_a_setting(duckdb_workspace):
    assert duckdb_workspace.settings().read_batch_rows == 65_536
    assert duckdb_workspace.settings(TRAINER_READ_BATCH_ROWS="500").read_batch_rows == 500
    for bad in ("0", "-3", "many"):
        with pytest.raises(ConfigurationError, match="TRAINER_READ_BATCH_ROWS"):
            duckdb_workspace.settings(TRAINER_READ_BATCH_ROWS=bad)
