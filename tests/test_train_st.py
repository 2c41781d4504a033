"""`train-st`: a queued fine-tuning run end to end on both engines, the encoder it
saves (safetensors, nothing pickled) and a model that predicts with it from any store."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import eval_pages, prepared_workspace

from trainer.core.blob_store import ArtifactStore
from trainer.core.errors import ArtifactError
from trainer.model.classifier import MANIFEST, SegmentClassifier
from trainer.model.encoder.embeddings import embedding_model_id
from trainer.model.encoder.fine_tuning import PICKLE_SUFFIXES
from trainer.results.run_outputs import PREDICTIONS_FILE

pytestmark = pytest.mark.slow


def test_a_queued_fine_tuning_run_saves_its_encoder_and_predicts_with_it(workspace, tmp_path, monkeypatch):
    space = prepared_workspace(workspace, documents=10)
    queued = space.trainer(
        "request", "--fine-tune", "--fine-tune-max-pairs", "24", "--model-name", "tuned", "--no-label-issues"
    )
    assert queued.returncode == 0, queued.stderr
    run_id = int(queued.stdout.strip())
    done = space.trainer("train-st", "--training-run", str(run_id), "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"Run {run_id} succeeded: tuned version 1" in done.stdout

    params = json.loads(space.query("select params from training.training_runs where run_id = ?", [run_id])[0][0])
    assert params["fine_tune"] is True and params["fine_tune_max_pairs"] == 24
    assert params["fine_tuning"]["pairs"] == 24 and params["fine_tuning"]["steps"] >= 1
    assert params["embedding_cache_hits"] == 0  # a fine-tuned encoder's vectors are never cached
    assert not (space.artifacts / "embeddings").exists()

    uri, sha256 = space.query("select artifact_uri, artifact_sha256 from training.model_versions where run_id = ?", [run_id])[0]
    store = ArtifactStore(str(space.artifacts))
    manifest = json.loads(store.read_bytes(store.join(uri, MANIFEST)))
    encoder_files = [name for name in manifest["files"] if name.startswith("encoder/")]
    assert "encoder/model.safetensors" in encoder_files and "encoder/modules.json" in encoder_files
    assert not [name for name in encoder_files if any(name.endswith(suffix) for suffix in PICKLE_SUFFIXES)]
    weights = store.read_bytes(store.join(uri, "encoder/model.safetensors"))
    assert manifest["embedding_model"]["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert manifest["embedding_model"]["weights_sha256"] != embedding_model_id().weights_sha256
    assert manifest["embedding_model"]["name"].endswith("+fine-tuned")

    # The saved model predicts what the run measured, with its own encoder…
    model = SegmentClassifier.load(store, uri, sha256)
    pages = eval_pages(space, run_id)  # the eval examples on their pages, as the run saw them
    texts, rows = pages.texts, pages.rows
    probabilities = pages.predict_examples(model)
    predictions = pq.read_table(io.BytesIO(store.read_bytes(store.join(uri, PREDICTIONS_FILE))))
    np.testing.assert_allclose(probabilities.max(axis=1), predictions.column("confidence").to_numpy(), atol=1e-5)

    # …also from a store that is not a local directory: the encoder is copied, checked, into the cache.
    monkeypatch.setenv("TRAINER_ENCODER_CACHE", str(tmp_path / "encoders"))
    remote = ArtifactStore(f"memory://train-st-{space.target}")
    directory = store.relative_path(uri)
    for name in [MANIFEST, *manifest["files"]]:
        remote.write_bytes(f"{directory}/{name}", store.read_bytes(store.join(uri, name)))
    copied = SegmentClassifier.load(remote, remote.uri(directory), sha256)
    assert copied.encoder_path == tmp_path / "encoders" / "fine-tuned" / manifest["embedding_model"]["weights_sha256"]
    np.testing.assert_allclose(copied.predict_segments(texts, rows)[: len(pages.examples)], probabilities, atol=1e-6)

    # A changed encoder file is refused before anything is loaded.
    remote.write_bytes(f"{directory}/encoder/modules.json", b"[]")
    (tmp_path / "encoders").rename(tmp_path / "encoders-old")
    with pytest.raises(ArtifactError, match="encoder/modules.json does not match its sha256"):
        SegmentClassifier.load(remote, remote.uri(directory), sha256)


def test_train_st_refuses_what_cannot_be_fine_tuned(duckdb_workspace):
    for options, message in (
        (["--embedding-backend", "onnx"], "fine-tuning embeds with torch"),
        (["--no-embedding"], "fine-tuning needs the embedding features"),
    ):
        refused = duckdb_workspace.trainer("train-st", *options)
        assert refused.returncode == 1
        assert message in refused.stderr and "Traceback" not in refused.stderr
