"""Every run reproducible and traceable: snapshots, retraining from them, lineage.

On both engines, with the real encoder and real dbt views (the session's
``trained`` workspace: two runs of model `funsd`, seed 7, on unchanged data).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import Workspace

from trainer.core.blob_store import ArtifactStore
from trainer.data.snapshots import read_snapshot
from trainer.model.arguments import TrainingArguments
from trainer.model.classifier import SegmentClassifier
from trainer.results.store import ResultsStore
from trainer.runs.sources import SnapshotSource
from trainer.runs.training import train

pytestmark = pytest.mark.slow


def snapshot_files(space: Workspace) -> list[str]:
    return sorted(str(path.relative_to(space.artifacts)) for path in (space.artifacts / "snapshots").rglob("*") if path.is_file())


def metric_rows(space: Workspace, run_id: int) -> list[tuple]:
    return space.query(
        "select split, name, coalesce(label, ''), value from training.metrics where run_id = ? "
        "order by split, name, coalesce(label, '')",
        (run_id,),
    )


def test_training_twice_on_unchanged_data_shares_one_snapshot_and_repeats_metrics(trained):
    space, first, second = trained
    runs = space.query(
        "select run_id, dataset_fingerprint, snapshot_uri, snapshot_sha256 from training.training_runs "
        "where run_id in (?, ?) order by run_id",
        (first.run_id, second.run_id),
    )
    (_, fp1, uri1, sha1), (_, fp2, uri2, sha2) = runs
    assert fp1 == fp2 == first.dataset_fingerprint
    assert (uri1, sha1) == (uri2, sha2)
    assert snapshot_files(space) == [f"snapshots/{fp1}/{sha1}.parquet"]
    assert metric_rows(space, first.run_id) == metric_rows(space, second.run_id)
    assert len(metric_rows(space, first.run_id)) > 8


def test_the_snapshot_holds_exactly_the_examples_of_the_view(trained):
    space, first, _ = trained
    run = ResultsStore(space.database()).get_run(first.run_id)
    examples = read_snapshot(ArtifactStore(str(space.artifacts)), run.snapshot_uri, run.snapshot_sha256, run.dataset_fingerprint)
    view = space.query(
        "select annotation_id, document_id, page, text, label, accepted_event_id, split from datasets.training_examples"
    )
    stored = list(
        zip(*(examples.column(name).to_pylist() for name in ("annotation_id", "document_id", "page", "text", "label", "accepted_event_id", "split")))
    )
    assert sorted(stored) == sorted(view)
    assert examples.num_rows == run.train_examples + run.eval_examples


def test_the_dataset_summary_is_stored_with_the_run(trained):
    space, first, _ = trained
    run = ResultsStore(space.database()).get_run(first.run_id)
    view = space.query("select split, label, examples, documents from datasets.dataset_summary")
    assert sorted((row["split"], row["label"], row["examples"], row["documents"]) for row in run.dataset_summary) == sorted(
        view
    )


def test_a_tampered_snapshot_is_refused(trained, tmp_path):
    space, first, _ = trained
    run = ResultsStore(space.database()).get_run(first.run_id)
    store = ArtifactStore(str(tmp_path))
    copy = tmp_path / "copy.parquet"
    shutil.copyfile(ArtifactStore(str(space.artifacts)).path_of(run.snapshot_uri), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    from trainer.core.errors import ArtifactError

    with pytest.raises(ArtifactError, match="does not match its recorded sha256"):
        read_snapshot(store, str(copy), run.snapshot_sha256, run.dataset_fingerprint)


@pytest.fixture
def trained_copy(trained, tmp_path, request) -> Workspace:
    """An independent copy of the trained workspace (database and blob store)."""
    space, first, second = trained
    copy = space.copy_database(tmp_path)
    shutil.copytree(space.artifacts, copy.artifacts)
    # Stored URIs name the original store; point the copy's rows at its own.
    for table in ("training_runs", "model_versions"):
        copy.execute_script(
            f"update training.{table} set artifact_uri = replace(artifact_uri, '{space.artifacts}', '{copy.artifacts}')"
        )
    copy.execute_script(
        f"update training.training_runs set snapshot_uri = replace(snapshot_uri, '{space.artifacts}', '{copy.artifacts}')"
    )
    return copy


def test_retraining_from_a_snapshot_reproduces_predictions_and_metrics_without_the_views(trained, trained_copy):
    space, first, _ = trained
    # Without the views, only the snapshot can supply the examples.
    trained_copy.execute_script("drop schema datasets cascade")
    settings = trained_copy.settings()
    for reference in (str(first.run_id), first.dataset_fingerprint[:12]):
        replay = train(TrainingArguments(model_name="funsd-replay", seed=7), settings, progress=False, source=SnapshotSource(reference))
        assert replay.dataset_fingerprint == first.dataset_fingerprint
        assert metric_rows(trained_copy, replay.run_id) == metric_rows(space, first.run_id)
        params = json.loads(trained_copy.query("select params from training.training_runs where run_id = ?", (replay.run_id,))[0][0])
        assert params["source"] == "snapshot" and params["snapshot_of"] == reference

    original = SegmentClassifier.load(ArtifactStore(str(space.artifacts)), first.model_version.artifact_uri)
    replayed = SegmentClassifier.load(ArtifactStore(str(trained_copy.artifacts)), replay.model_version.artifact_uri)
    assert original.labels == replayed.labels
    np.testing.assert_array_equal(original.head[-1].coef_, replayed.head[-1].coef_)
    for name, head in original.text_heads.items():
        ours, theirs = (getattr(model, "steps", [[None, model]])[-1][1] for model in (head, replayed.text_heads[name]))
        np.testing.assert_array_equal(ours.coef_, theirs.coef_)
    texts = ["Date:", "TO: R. J. Reynolds", "Phone (212) 555-0199", "CONFIDENTIAL"]
    labels_a, confidence_a = original.predict(texts)
    labels_b, confidence_b = replayed.predict(texts)
    assert labels_a == labels_b
    np.testing.assert_array_equal(confidence_a, confidence_b)


def test_from_snapshot_names_what_it_cannot_find(trained_copy):
    result = trained_copy.trainer("train", "--from-snapshot", "deadbeefdeadbeef", "--quiet")
    assert result.returncode == 1
    assert "no run recorded a snapshot of a dataset with fingerprint deadbeefdeadbeef" in result.stderr
    result = trained_copy.trainer("train", "--from-snapshot", "not-a-ref", "--quiet")
    assert result.returncode == 1 and "neither a run id nor a dataset fingerprint" in result.stderr
    result = trained_copy.trainer("train", "--from-snapshot", "1", "--as-of", "2026-01-01", "--quiet")
    assert result.returncode == 2 and "cannot be combined" in result.stderr


def test_show_prints_the_chain_from_model_version_to_examples(trained):
    space, first, second = trained
    result = space.trainer("show", "model", "funsd", "2", "--json")
    assert result.returncode == 0, result.stderr
    lineage = json.loads(result.stdout)
    assert lineage["model_version"]["version"] == 2
    assert lineage["model_version"]["artifact_uri"] == second.model_version.artifact_uri
    assert lineage["run"]["run_id"] == second.run_id and lineage["run"]["status"] == "succeeded"
    assert lineage["params"]["seed"] == 7 and lineage["params"]["source"] == "database"
    assert lineage["library_versions"]["sentence_transformers"]
    run = ResultsStore(space.database()).get_run(second.run_id)
    assert lineage["dataset"]["fingerprint"] == run.dataset_fingerprint
    assert lineage["dataset"]["snapshot"] == {"uri": run.snapshot_uri, "sha256": run.snapshot_sha256}
    summary = {(row["split"], row["label"]): row["examples"] for row in lineage["dataset"]["summary"]}
    assert summary == {(split, label): n for split, label, n, _ in space.query("select * from datasets.dataset_summary")}
    assert lineage["metrics"]["eval.accuracy"] == pytest.approx(
        space.query("select value from training.metrics where run_id = ? and split = 'eval' and name = 'accuracy'", (second.run_id,))[0][0]
    )

    text = space.trainer("show", "run", str(first.run_id))
    assert text.returncode == 0, text.stderr
    for expected in ("Model version    funsd v1", f"Run              {first.run_id} succeeded", "Params", "Library versions",
                     f"Dataset          {run.dataset_fingerprint}", f"Snapshot         {run.snapshot_uri}", "Examples "):
        assert expected in text.stdout
    missing = space.trainer("show", "run", "999999")
    assert missing.returncode == 1 and "training run 999999 does not exist" in missing.stderr
