"""The feature families of TrainingArguments on real runs: what each switch puts
into the saved model, and that a saved model predicts exactly what its run measured."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import eval_pages, prepared_workspace, save_embedding_only_model

from trainer.core.blob_store import ArtifactStore
from trainer.core.errors import ConfigurationError
from trainer.model.arguments import TrainingArguments
from trainer.model.classifier import EMBEDDING_ONLY, HEAD_FILE, MANIFEST, SegmentClassifier, SegmentRows
from trainer.model.encoder.embeddings import embedding_model_id
from trainer.model.segment_features import LAYOUT_FEATURES, NEIGHBOUR_GEOMETRY, TEXT_STAT_FEATURES
from trainer.model.segment_model import FeatureSet
from trainer.results.run_outputs import PREDICTIONS_FILE, PREDICTIONS_SCHEMA
from trainer.runs.training import train

pytestmark = pytest.mark.slow

EXAMPLE_COLUMNS = "annotation_id, document_id, page, x0, y0, x1, y1, text, label"


def manifest_of(space, result) -> dict:
    store = ArtifactStore(str(space.artifacts))
    return json.loads(store.read_bytes(store.join(result.model_version.artifact_uri, MANIFEST)))


def stage_two_width(features: FeatureSet, labels: int) -> int:
    probabilities = labels * len(features.text_models)
    width = probabilities + len(TEXT_STAT_FEATURES)
    if features.layout:
        width += len(LAYOUT_FEATURES)
    if features.neighbours:
        width += 4 * (len(NEIGHBOUR_GEOMETRY) + len(TEXT_STAT_FEATURES) + probabilities)
    return width


def eval_examples(space) -> list[tuple]:
    return space.query(
        f"select {EXAMPLE_COLUMNS} from datasets.training_examples where split = 'eval' order by annotation_id"
    )


def test_the_default_model_uses_every_family_and_predicts_what_its_run_measured(trained, tmp_path):
    space, first, _ = trained
    manifest = manifest_of(space, first)
    assert manifest["format_version"] == 2
    assert manifest["features"] == {"embedding": True, "char_ngrams": True, "layout": True, "neighbours": True}
    assert set(manifest["files"]) == {HEAD_FILE, "text-embedding.skops", "text-char-ngrams.skops"}
    store = ArtifactStore(str(space.artifacts))
    model = SegmentClassifier.load(store, first.model_version.artifact_uri, first.model_version.artifact_sha256)
    assert model.head.n_features_in_ == stage_two_width(model.features, len(model.labels))

    # The run's predictions file: one row per eval example, in annotation_id order.
    predictions = pq.read_table(io.BytesIO(store.read_bytes(store.join(first.model_version.artifact_uri, PREDICTIONS_FILE))))
    assert predictions.schema == PREDICTIONS_SCHEMA
    examples = eval_examples(space)
    assert predictions.column("annotation_id").to_pylist() == [row[0] for row in examples]
    assert predictions.column("label").to_pylist() == [row[8] for row in examples]
    accuracy = np.mean(np.array(predictions.column("label").to_pylist()) == np.array(predictions.column("predicted_label").to_pylist()))
    stored = dict(space.query("select name, value from training.metrics where run_id = ? and split = 'eval' and label is null", [first.run_id]))
    assert accuracy == pytest.approx(stored["accuracy"], abs=1e-12)

    # The saved model, given the eval examples where they are (on their pages, with the
    # live segments around them the run stored), predicts what the run measured.
    pages = eval_pages(space, first.run_id)
    assert [row[0] for row in pages.examples] == [row[0] for row in examples]
    probabilities = pages.predict_examples(model)
    np.testing.assert_allclose(probabilities.max(axis=1), predictions.column("confidence").to_numpy(), atol=1e-5)
    assert [model.labels[i] for i in probabilities.argmax(axis=1)] == predictions.column("predicted_label").to_pylist()
    # Without the segments around them, the pages differ, and so do some predictions.
    rows = SegmentRows([row[1] for row in examples], [row[2] for row in examples], np.array([row[3:7] for row in examples], dtype=float))
    bare = model.predict_segments([row[7] for row in examples], rows)
    assert not np.allclose(bare, probabilities, atol=1e-6)

    # And so does `predict` on a CSV with the layout columns of the whole pages; without
    # them the neighbours are gone.
    source = tmp_path / "segments.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["document_id", "page", "x0", "y0", "x1", "y1", "text"])
        writer.writerows(
            (document_id, page, *box, text)
            for document_id, page, box, text in zip(pages.rows.document_ids, pages.rows.pages, pages.rows.boxes.tolist(), pages.texts)
        )  # fmt: skip
    output = tmp_path / "labelled.csv"
    done = space.trainer("predict", "--model-name", "funsd", "--model-version", "1", "--input", str(source), "--output", str(output))
    assert done.returncode == 0, done.stderr
    with output.open(newline="") as handle:
        labelled = list(csv.DictReader(handle))[: len(examples)]
    assert [row["predicted_label"] for row in labelled] == predictions.column("predicted_label").to_pylist()
    alone = model.predict_segments([row[7] for row in examples])
    assert not np.allclose(alone, probabilities, atol=1e-3)  # position matters to this model


@pytest.mark.parametrize(
    "switches",
    [
        dict(char_ngram_features=False, layout_features=False, neighbour_features=False),
        dict(embedding_features=False, layout_features=False, neighbour_features=False),
        dict(char_ngram_features=False, neighbour_features=False),
        dict(char_ngram_features=False, layout_features=False),
        dict(embedding_features=False),
    ],
    ids=["embedding", "char-ngrams", "embedding+layout", "embedding+neighbours", "char-ngrams+layout+neighbours"],
)
def test_each_family_can_be_switched_off(duckdb_workspace, switches):
    space = prepared_workspace(duckdb_workspace, documents=12)
    args = TrainingArguments(model_name="switched", label_issues=False, **switches)
    result = train(args, space.settings(), progress=False)
    manifest = manifest_of(space, result)
    features = args.features
    assert manifest["features"] == features.to_dict()
    expected_files = {HEAD_FILE}
    if features.stacked:
        expected_files |= {f"text-{name.replace('_', '-')}.skops" for name in features.text_models}
    assert set(manifest["files"]) == expected_files
    params = json.loads(space.query("select params from training.training_runs where run_id = ?", [result.run_id])[0][0])
    assert {name: params[name] for name in switches} == switches
    # Without the embedding nothing is embedded, and no vectors are cached.
    assert ("embedded_texts" in params) == features.embedding
    assert (space.artifacts / "embeddings").exists() == features.embedding

    store = ArtifactStore(str(space.artifacts))
    model = SegmentClassifier.load(store, result.model_version.artifact_uri, result.model_version.artifact_sha256)
    assert model.features == features
    if features.stacked:
        assert model.head.n_features_in_ == stage_two_width(features, len(model.labels))
    elif features.embedding:
        assert model.head.n_features_in_ == embedding_model_id().dimension
    else:
        assert model.head.steps[0][0] == "hashing"  # texts in, probabilities out

    pages = eval_pages(space, result.run_id)
    predicted = np.array(model.labels)[pages.predict_examples(model).argmax(axis=1)]
    stored = dict(space.query("select name, value from training.metrics where run_id = ? and split = 'eval' and label is null", [result.run_id]))
    assert np.mean(predicted == np.array([row[8] for row in pages.examples])) == pytest.approx(stored["accuracy"], abs=1e-12)


def test_a_model_saved_before_the_feature_families_still_loads(tmp_path):
    saved = save_embedding_only_model(tmp_path)
    store, uri, texts, head, vectors = saved.store, saved.uri, saved.texts, saved.head, saved.vectors
    manifest = json.loads(store.read_bytes(store.join(uri, MANIFEST)))
    for key in ("features", "text_models"):
        del manifest[key]
    manifest["format_version"] = 1  # as written before issue 7
    store.write_bytes(f"models/old/{MANIFEST}", json.dumps(manifest).encode())
    old = SegmentClassifier.load(store, uri)
    assert old.features == EMBEDDING_ONLY and old.metadata == {"model_name": "old"}
    _, confidences = old.predict(texts)
    np.testing.assert_array_equal(confidences, head.predict_proba(vectors).max(axis=1))


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(embedding_features=False, char_ngram_features=False), "at least one text model"),
        (dict(layout_features="yes"), "layout_features must be true or false"),
        (dict(stacking_folds=1), "stacking_folds must be at least 2"),
        (dict(stacking_folds=2.5), "stacking_folds must be an integer"),
        (dict(max_label_issues=-1), "max_label_issues must be 0 or more"),
    ],
)
def test_arguments_refuse_unusable_switches(values, message):
    with pytest.raises(ConfigurationError, match=message):
        TrainingArguments(**values)
