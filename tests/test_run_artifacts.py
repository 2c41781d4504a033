"""A run's files in the blob store, end to end on both engines: training on
S3 (a real moto server) and memory://, byte-exact exports, a trainer killed
while it writes its artifact, and garbage collection."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pyarrow.parquet as pq
import pytest
from conftest import Workspace, _build, built_once, load_app_data

from trainer.core.blob_store import ArtifactStore
from trainer.data.demo import DemoData
from trainer.model.arguments import TrainingArguments
from trainer.model.classifier import SegmentClassifier
from trainer.results.store import ResultsStore, utcnow
from trainer.runs.training import train

# Where the files go is under test, not the model: the character n-gram text model alone
# (no encoder, no second stage, no label-issue fits) writes every kind of artifact.
QUICK_MODEL = dict(embedding_features=False, layout_features=False, neighbour_features=False, label_issues=False)
QUICK_OPTIONS = ("--no-embedding", "--no-layout", "--no-neighbours", "--no-label-issues")

pytestmark = pytest.mark.slow

NASTY_TEXTS = [
    "line one\nline two",
    "carriage\rreturn and \r\n CRLF",
    'quotes "inside" and \'single\'',
    "commas, commas, commas",
    "  leading and trailing spaces  ",
    "\u05e9\u05dc\u05d5\u05dd \u202bRTL embedding\u202c \u0645\u0631\u062d\u0628\u0627",
    "emoji \U0001f600\U0001f44d\U0001f3fd family \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\ufeffleading BOM",
    "tab\tseparated\tvalues",
    "backslash \\ and \\n not a newline",
    "no-break\u00a0space",
    "=cmd|' /C calc'!A0",
]


def nasty_app_data() -> DemoData:
    """Eight documents, labels `a` and `b`, the texts above among plain ones."""
    import pyarrow as pa

    created = datetime(2026, 3, 1)
    documents, annotations, events = [], [], []
    for d in range(8):
        documents.append({"document_id": f"doc-{d}", "filename": f"doc-{d}.pdf", "sha256": None, "page_count": 1,
                          "created_at": created, "deleted_at": None})
        for i in range(8):
            index = d * 8 + i
            text = NASTY_TEXTS[(d * 3 + i) % len(NASTY_TEXTS)] if i < 3 else f"plain segment {index} of doc {d}"
            annotation_id = f"doc-{d}-{i}"
            annotations.append({"annotation_id": annotation_id, "document_id": f"doc-{d}", "page": 1, "x0": 1.0,
                                "y0": 2.0, "x1": 3.0, "y1": 4.0, "text": text, "label": None, "status": "accepted",
                                "created_at": created, "updated_at": created})
            events.append({"event_id": index + 1, "annotation_id": annotation_id, "event_type": "accepted",
                           "label": "a" if i % 2 else "b", "actor": "user:r", "occurred_at": created, "note": None})
    return DemoData(pa.Table.from_pylist(documents), pa.Table.from_pylist(annotations), pa.Table.from_pylist(events))


def _build_nasty(space: Workspace) -> None:
    _build(space, None, None, build=False)
    load_app_data(space.database(), nasty_app_data())
    space.dbt("run", dbt_vars={"eval_percent": 40})


@pytest.fixture
def nasty(workspace) -> Workspace:
    workspace.copy_from(built_once(workspace, ("nasty texts",), _build_nasty))
    assert {row[0] for row in workspace.query("select distinct split from datasets.training_examples")} == {"train", "eval"}
    return workspace


def test_exports_keep_every_text_byte_exact(nasty, tmp_path):
    result = train(TrainingArguments(model_name="nasty"), nasty.settings(), progress=False)
    stored = dict(nasty.query("select annotation_id, text from datasets.training_examples"))
    assert set(NASTY_TEXTS) <= set(stored.values())

    outputs = {}
    for fmt in ("parquet", "jsonl", "csv"):
        outputs[fmt] = tmp_path / f"run.{fmt}"
        done = nasty.trainer("export", "--run", str(result.run_id), "--format", fmt, "--output", str(outputs[fmt]))
        assert done.returncode == 0, done.stderr
        assert f"Exported {len(stored)} example(s)" in done.stdout

    parquet = pq.read_table(outputs["parquet"])
    assert dict(zip(parquet.column("annotation_id").to_pylist(), parquet.column("text").to_pylist())) == stored
    # Parquet of all splits is the snapshot file itself.
    run = ResultsStore(nasty.database()).get_run(result.run_id)
    import hashlib

    assert hashlib.sha256(outputs["parquet"].read_bytes()).hexdigest() == run.snapshot_sha256

    lines = outputs["jsonl"].read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(stored) + 1
    jsonl = [json.loads(line) for line in lines[:-1]]
    assert {row["annotation_id"]: row["text"] for row in jsonl} == stored

    with open(outputs["csv"], encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["annotation_id"]: row["text"] for row in rows} == stored
    assert {row["split"] for row in rows} == {"train", "eval"}

    evaluation = tmp_path / "eval.jsonl"
    nasty.trainer("export", "--run", str(result.run_id), "--format", "jsonl", "--split", "eval", "--output", str(evaluation), check=True)
    assert {json.loads(line)["split"] for line in evaluation.read_text(encoding="utf-8").splitlines()} == {"eval"}


def test_export_of_an_unknown_run_names_it_and_writes_nothing(nasty, tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    result = nasty.trainer("export", "--run", "42", "--format", "csv", "--output", str(exports / "none.csv"))
    assert result.returncode == 1 and "training run 42 does not exist" in result.stderr
    assert list(exports.iterdir()) == []


@pytest.mark.parametrize("store_kind", ["s3", "memory"])
def test_a_run_stores_its_snapshot_and_model_in_any_blob_store(nasty, store_kind, request, monkeypatch):
    if store_kind == "s3":
        server = request.getfixturevalue("s3_server")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        url = f"s3://{server.new_bucket()}/pipeline"
    else:
        url = f"memory://run-artifacts-{nasty.target}-{os.getpid()}"
    settings = nasty.settings(TRAINER_ARTIFACTS_URL=url)
    first = train(TrainingArguments(model_name="remote", **QUICK_MODEL), settings, progress=False)
    second = train(TrainingArguments(model_name="remote", **QUICK_MODEL), settings, progress=False)
    store = ArtifactStore(url)
    snapshots = [item.relative_path for item in store.list_files("snapshots")]
    assert snapshots == [f"snapshots/{first.dataset_fingerprint}/{ResultsStore(nasty.database()).get_run(first.run_id).snapshot_sha256}.parquet"]
    assert first.snapshot_uri == second.snapshot_uri and first.snapshot_uri.startswith(url.split("://")[0] + "://")
    model = SegmentClassifier.load(store, second.model_version.artifact_uri, second.model_version.artifact_sha256)
    assert model.labels == ["a", "b"]
    assert not [item for item in store.list_files() if ".partial-" in item.relative_path]


# Runs the real CLI, but stops the process right after the model's first file
# is written under its temporary name, before it is published: the test then
# kills it with SIGKILL, exactly as a crash at that moment would.
PAUSE_DURING_ARTIFACT_WRITE = r"""
import os, sys, time
import trainer.core.blob_store as artifacts

original_mv = None

def pausing_write(self, relative_path, data):
    if relative_path.startswith("models/"):
        final = self._path(relative_path)
        directory = final.rsplit("/", 1)[0]
        self.fs.makedirs(directory, exist_ok=True)
        with self.fs.open(f"{directory}/.{final.rsplit('/', 1)[1]}.partial-test", "wb") as handle:
            handle.write(data[: len(data) // 2])
        open(os.environ["PAUSED_MARKER"], "w").close()
        time.sleep(600)
    return original_write(self, relative_path, data)

original_write = artifacts.ArtifactStore.write_bytes
artifacts.ArtifactStore.write_bytes = pausing_write
from trainer.cli.commands import cli
sys.argv = ["trainer", *sys.argv[1:]]
cli()
"""


def test_a_trainer_killed_during_the_artifact_write_leaves_no_version_pointing_at_it(nasty, tmp_path):
    done = train(TrainingArguments(model_name="nasty", **QUICK_MODEL), nasty.settings(), progress=False)
    marker = tmp_path / "paused"
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSE_DURING_ARTIFACT_WRITE, "train", "--model-name", "nasty", "--quiet", *QUICK_OPTIONS],
        cwd=nasty.root,
        env=nasty.env(PAUSED_MARKER=str(marker), TRAINER_HEARTBEAT_INTERVAL="0.5", TRAINER_HEARTBEAT_TIMEOUT="2"),
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, "the trainer ended before writing its artifact"
            assert time.monotonic() < deadline, "the trainer never reached the artifact write"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    versions = nasty.query("select run_id, artifact_uri, artifact_sha256 from training.model_versions")
    assert [row[0] for row in versions] == [done.run_id]
    store = ArtifactStore(str(nasty.artifacts))
    for _, uri, sha256 in versions:
        SegmentClassifier.load(store, uri, sha256)  # complete and verified
    killed, last_beat = nasty.query(
        "select run_id, heartbeat_at from training.training_runs order by run_id desc limit 1"
    )[0]
    # Reap once the dead run's last beat is over 2 s old by the clock reap reads: no guess.
    while utcnow() - last_beat <= timedelta(seconds=2):
        time.sleep(0.1)
    reaped = nasty.trainer("reap", "--timeout", "2")
    assert reaped.returncode == 0 and str(killed) in reaped.stdout
    assert nasty.query("select status from training.training_runs where run_id = ?", (killed,)) == [("failed",)]

    listed = nasty.trainer("gc", "--older-than", "0")
    assert listed.returncode == 0, listed.stderr
    assert ".partial-test" in listed.stdout and "partial write" in listed.stdout
    assert "Found 1 unreferenced file(s)" in listed.stdout
    before = {item.relative_path for item in store.list_files()}
    assert any(".partial-test" in path for path in before)

    deleted = nasty.trainer("gc", "--older-than", "0", "--delete")
    assert deleted.returncode == 0 and "Deleted 1 unreferenced file(s)" in deleted.stdout
    after = {item.relative_path for item in store.list_files()}
    assert after == {path for path in before if ".partial-test" not in path}
    # What rows refer to survives: the finished run's model and the shared snapshot.
    SegmentClassifier.load(store, done.model_version.artifact_uri, done.model_version.artifact_sha256)
    assert nasty.trainer("export", "--run", str(done.run_id), "--output", str(tmp_path / "ok.parquet")).returncode == 0
    # Young files are kept by default: a trainer may be about to record them.
    store.write_bytes("models/nasty/run-999-orphan/head.skops", b"orphan")
    assert "Found 0 unreferenced file(s)" in nasty.trainer("gc").stdout
    assert "Found 1 unreferenced file(s)" in nasty.trainer("gc", "--older-than", "0").stdout
