"""The training service end to end on a real DuckDB file, a real dbt build and
the real all-MiniLM-L6-v2 encoder, then every row it wrote."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import Workspace, eval_pages, prepared_workspace

from trainer.core.blob_store import ArtifactStore, sha256_hex
from trainer.core.errors import TrainingFailed
from trainer.data.dataset import dataset_fingerprint, read_training_examples
from trainer.model.arguments import TrainingArguments
from trainer.model.classifier import SegmentClassifier
from trainer.runs.training import train

pytestmark = pytest.mark.slow


def test_runs_are_recorded_as_succeeded_with_params_and_dataset(trained):
    space, first, second = trained
    runs = space.query(
        "select run_id, model_name, status, created_at, started_at, finished_at, error, params, "
        "dataset_fingerprint, train_examples, eval_examples, artifact_uri from training.training_runs order by run_id"
    )
    assert [row[0] for row in runs] == [first.run_id, second.run_id]
    examples = space.query("select split, count(*) from datasets.training_examples group by split")
    counts = dict(examples)
    with space.database().session() as session:
        fingerprint = dataset_fingerprint(read_training_examples(session))
    for row, result in zip(runs, (first, second)):
        run_id, model_name, status, created, started, finished, error, params, fp, n_train, n_eval, uri = row
        assert (model_name, status, error) == ("funsd", "succeeded", None)
        assert created <= started <= finished
        assert (n_train, n_eval) == (counts["train"], counts["eval"])
        assert fp == fingerprint == result.dataset_fingerprint
        assert uri == result.model_version.artifact_uri
        stored = json.loads(params)
        assert {k: stored[k] for k in TrainingArguments().to_dict()} == TrainingArguments(model_name="funsd", seed=7).to_dict()
        assert stored["source"] == "database" and stored["target"] == space.target
        versions = stored["library_versions"]
        for library in ("python", "torch", "sentence_transformers", "scikit_learn", "dbt_core", "database_engine"):
            assert versions[library] and versions[library] != "not installed", library
        assert versions["database_engine"].startswith({"duckdb": "duckdb ", "postgres": "postgresql "}[space.target])
        assert stored["worker"]


def test_model_versions_count_up_per_model_name(trained):
    space, first, second = trained
    rows = space.query(
        "select model_version_id, model_name, version, run_id, artifact_uri, artifact_sha256, created_at "
        "from training.model_versions order by version"
    )
    assert [(name, version, run_id) for _, name, version, run_id, *_ in rows] == [
        ("funsd", 1, first.run_id),
        ("funsd", 2, second.run_id),
    ]
    assert rows[0][4] != rows[1][4]  # each run has its own artifact


def test_every_metric_is_written_overall_and_per_label(trained):
    space, first, _ = trained
    rows = space.query(
        "select model_version_id, split, name, label, value from training.metrics where run_id = ?", [first.run_id]
    )
    assert {row[0] for row in rows} == {first.model_version.model_version_id}
    eval_labels = {label for (label,) in space.query("select distinct label from datasets.training_examples where split = 'eval'")}
    curve = {f"risk_at_coverage:{step / 10:.2f}" for step in range(1, 11)}
    threshold = {"target_precision", "threshold_at_target_precision", "coverage_at_target_precision",
                 "precision_at_target_precision"}
    for split in ("eval", "train"):
        overall = {name: value for _, s, name, label, value in rows if s == split and label is None}
        expected = {"accuracy", "macro_f1", "coverage", "selective_accuracy", "aurc"} | curve
        assert set(overall) == (expected | threshold if split == "eval" else expected)
        assert all(value is None or 0.0 <= value <= 1.0 for value in overall.values())
        per_label = [(name, label, value) for _, s, name, label, value in rows if s == split and label is not None]
        confusion = [(name, label, value) for name, label, value in per_label if name.startswith("predicted_as:")]
        per_label = [row for row in per_label if not row[0].startswith("predicted_as:")]
        labels = {label for _, label, _ in per_label}
        if split == "eval":
            assert eval_labels <= labels
        for label in labels:
            assert {name for name, l, _ in per_label if l == label} == {"precision", "recall", "f1", "support"}
        support = {label: value for name, label, value in per_label if name == "support"}
        examples = space.query("select count(*) from datasets.training_examples where split = ?", [split])[0][0]
        assert sum(support.values()) == examples
        # Each true label's row of the confusion matrix adds up to its support.
        for label, count in support.items():
            assert sum(value for _, true_label, value in confusion if true_label == label) == count
        assert math.isclose(overall["risk_at_coverage:1.00"], 1 - overall["accuracy"], abs_tol=1e-12)


def test_stored_metrics_match_the_stored_model_on_the_eval_split(trained):
    """Recompute accuracy, coverage and selective accuracy from the saved artifact."""
    space, first, _ = trained
    store = ArtifactStore(str(space.artifacts))
    classifier = SegmentClassifier.load(store, first.model_version.artifact_uri, first.model_version.artifact_sha256)
    # The eval examples on their pages as the run saw them: with the live segments around them.
    pages = eval_pages(space, first.run_id)
    assert len(pages.texts) > len(pages.examples)
    probabilities = pages.predict_examples(classifier)
    confidence = probabilities.max(axis=1)
    truth = np.array([row[8] for row in pages.examples])
    predicted = np.array(classifier.labels)[probabilities.argmax(axis=1)]
    covered = confidence >= classifier.confidence_threshold
    expected = {
        "accuracy": float((predicted == truth).mean()),
        "coverage": float(covered.mean()),
        "selective_accuracy": float((predicted[covered] == truth[covered]).mean()),
    }
    stored = dict(
        space.query(
            "select name, value from training.metrics where run_id = ? and split = 'eval' and label is null",
            [first.run_id],
        )
    )
    for name, value in expected.items():
        assert math.isclose(stored[name], value, abs_tol=1e-9), name
    assert stored["accuracy"] > 0.5  # far above chance (4 labels): the model learned something


def test_same_examples_and_seed_give_the_same_metrics(trained):
    space, first, second = trained
    query = "select split, name, coalesce(label, ''), value from training.metrics where run_id = ? order by 1, 2, 3"
    assert space.query(query, [first.run_id]) == space.query(query, [second.run_id])


def test_artifact_is_complete_and_matches_its_recorded_hash(trained):
    space, first, _ = trained
    store = ArtifactStore(str(space.artifacts))
    uri = first.model_version.artifact_uri
    manifest_bytes = store.read_bytes(store.join(uri, "model.json"))
    assert sha256_hex(manifest_bytes) == first.model_version.artifact_sha256
    manifest = json.loads(manifest_bytes)
    for name, digest in manifest["files"].items():
        assert sha256_hex(store.read_bytes(store.join(uri, name))) == digest
    assert manifest["run_id"] == first.run_id and manifest["model_name"] == "funsd"
    assert manifest["embedding_model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(manifest["embedding_model"]["weights_sha256"]) == 64
    assert not [path for path in space.artifacts.rglob("*") if ".partial-" in path.name]
    assert not [path for path in space.artifacts.rglob("*.pkl")]


def test_a_tampered_artifact_is_refused(trained, tmp_path):
    space, first, _ = trained
    store = ArtifactStore(str(space.artifacts))
    with pytest.raises(Exception, match="sha256"):
        SegmentClassifier.load(store, first.model_version.artifact_uri, "0" * 64)


# -- failure paths -----------------------------------------------------------------


def assert_failed_run_only(space: Workspace, message_part: str) -> None:
    runs = space.query("select status, error, finished_at from training.training_runs")
    assert len(runs) == 1
    status, error, finished_at = runs[0]
    assert status == "failed" and message_part in error and finished_at is not None
    assert space.query("select count(*) from training.model_versions") == [(0,)]
    assert space.query("select count(*) from training.metrics") == [(0,)]


def test_no_accepted_examples_fails_the_run_saying_so(workspace):
    space = prepared_workspace(workspace, documents=None)
    with pytest.raises(TrainingFailed, match="no training examples"):
        train(TrainingArguments(), space.settings(), progress=False)
    assert_failed_run_only(space, "no training examples")


def test_empty_eval_split_fails_the_run_saying_so(workspace):
    space = prepared_workspace(workspace, dbt_vars={"eval_percent": 0})
    with pytest.raises(TrainingFailed, match="the eval split is empty"):
        train(TrainingArguments(), space.settings(), progress=False)
    assert_failed_run_only(space, "eval split is empty")


def test_missing_views_fail_the_run_and_say_how_to_build_them(workspace):
    space = prepared_workspace(workspace, build=False)
    with pytest.raises(TrainingFailed, match="dbt build --profiles-dir profiles"):
        train(TrainingArguments(), space.settings(), progress=False)
    assert_failed_run_only(space, "datasets.training_examples does not exist")


def test_an_unwritable_artifact_store_leaves_no_model_version(workspace, tmp_path):
    space = prepared_workspace(workspace)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    settings = space.settings(TRAINER_ARTIFACTS_URL=str(blocker / "artifacts"))
    with pytest.raises(TrainingFailed, match="cannot write artifact"):
        train(TrainingArguments(), settings, progress=False)
    assert_failed_run_only(space, "cannot write artifact")


def analyst_queries() -> list[str]:
    """The SQL statements of docs/USER_GUIDE.md's "Queries for analysts"."""
    from pathlib import Path

    guide = (Path(__file__).resolve().parent.parent / "docs" / "USER_GUIDE.md").read_text(encoding="utf-8")
    section = guide[guide.index("## 5. Queries for analysts"):]
    block = section[section.index("```sql") + len("```sql"): section.index("```", section.index("```sql") + 6)]
    statements = []
    for statement in block.split(";"):
        lines = [line for line in statement.splitlines() if line.strip() and not line.strip().startswith("--")]
        if lines:
            statements.append("\n".join(lines))
    return statements


def test_the_user_guides_queries_for_analysts_run_on_both_engines(trained):
    space, first, _ = trained
    statements = analyst_queries()
    assert len(statements) >= 9
    results = {}
    for statement in statements:
        # The guide's examples name run 1 and the demo's model; here they are this fixture's.
        adapted = statement.replace("run_id = 1", f"run_id = {first.run_id}").replace("'segment-labeler'", "'funsd'")
        results[statement] = space.query(adapted)
    confusion = next(rows for sql, rows in results.items() if "predicted_label" in sql)
    eval_examples = space.query("select count(*) from datasets.training_examples where split = 'eval'")[0][0]
    assert sum(row[2] for row in confusion) == eval_examples
    curve = next(rows for sql, rows in results.items() if "aurc" in sql)
    assert {name for name, _ in curve} >= {"aurc", "risk_at_coverage:1.00", "threshold_at_target_precision"}
