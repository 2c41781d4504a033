"""The opt-in fast encoders (--embedding-backend): a real ONNX export of the real
model, made once per test session into a temporary encoder cache, run by ONNX
Runtime and OpenVINO; real training runs on a real DuckDB file.

Speed is measured by scripts/bench_encoder.py (docs/BENCHMARKS.md), never here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import prepared_workspace, save_embedding_only_model

from trainer.core.blob_store import ArtifactStore, sha256_hex
from trainer.core.errors import ArtifactError, ConfigurationError
from trainer.model.arguments import TrainingArguments
from trainer.model.classifier import MANIFEST, SegmentClassifier
from trainer.model.encoder.cache import EmbeddingCache, embed_with_cache, encoder_key, text_digests
from trainer.model.encoder.embeddings import (
    EMBEDDING_BACKENDS,
    ENCODER_CACHE_ENV,
    EXPORT_MANIFEST,
    embed_texts,
    embedding_model_id,
    ensure_export,
    export_directory,
    exported_encoder,
    length_bounded_runs,
    load_encoder,
    texts_per_pass,
)

# Short and long (past the 256-token limit), blank, non-ASCII, repeated.
TEXTS = [
    "Date:",
    "TO: R. J. Reynolds",
    "",
    "   ",
    "«Größe» 👩‍🔬",
    "line\nbreak",
    "CONFIDENTIAL " * 300,
    "Total amount",
    "Date:",
    "Please return the completed form to the research department by Friday.",
]
FLOAT32_BACKENDS = ("onnx", "openvino")


@pytest.fixture(scope="session")
def encoder_cache(tmp_path_factory):
    """A fresh encoder cache for this session, with both exports built (once)."""
    root = tmp_path_factory.mktemp("encoders")
    previous = os.environ.get(ENCODER_CACHE_ENV)
    os.environ[ENCODER_CACHE_ENV] = str(root)
    try:
        ensure_export("onnx-int8")  # builds the float32 export first
        yield root
    finally:
        if previous is None:
            os.environ.pop(ENCODER_CACHE_ENV, None)
        else:
            os.environ[ENCODER_CACHE_ENV] = previous


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_long_texts_go_through_the_encoder_fewer_at_a_time():
    paragraph = "The undersigned certifies that the statements made herein are true. " * 12
    texts = [f"{paragraph}{i}" for i in range(20)] + ["Date:", "12/3/98", "Name of company"] * 10
    assert texts_per_pass("Date:", 64) == 64
    assert texts_per_pass(paragraph, 64) == 16  # 64 x 64 tokens over the encoder's 256
    assert texts_per_pass(paragraph, 8) == 8  # never more than asked for
    assert texts_per_pass("x" * 300, 64) == 64 * 64 // (2 + 100)  # about 3 characters a token

    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    for batch_size, passes in ((64, 2), (64, 1), (8, 1), (8, 3)):
        runs = list(length_bounded_runs(order, texts, batch_size, passes))
        assert [index for run, _ in runs for index in run] == order  # every text once, in order
        assert all(1 <= len(run) <= passes * size for run, size in runs)
        assert all(size == texts_per_pass(texts[i], batch_size) for run, size in runs for i in run)
        assert [size for _, size in runs] == sorted(size for _, size in runs)
    runs = list(length_bounded_runs(order, texts, 8, 1))
    assert [len(run) for run, _ in runs] == [8] * 6 + [2]  # 50 texts, 8 a pass whatever their length
    runs = list(length_bounded_runs(order, texts, 64, 2))
    assert [(len(run), size) for run, size in runs] == [(20, 16), (30, 64)]

    # Smaller passes for the paragraphs, the same vectors as one text at a time.
    np.testing.assert_allclose(
        embed_texts(texts, progress=False), embed_texts(texts, batch_size=1, progress=False), atol=1e-5
    )


def test_fast_backends_give_the_vectors_of_torch(encoder_cache):
    reference = embed_texts(TEXTS, progress=False)
    # The default is plain SentenceTransformer.encode: bit for bit on short texts; a
    # long text goes through in a smaller batch of its own, so padding moves the
    # last float bits.
    encoder = load_encoder()
    plain = encoder.encode(TEXTS, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    np.testing.assert_allclose(reference, plain, atol=1e-6)
    short = [text for text in TEXTS if len(text) < 100]
    plain_short = encoder.encode(short, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    assert np.array_equal(embed_texts(short, progress=False), plain_short)
    assert np.array_equal(reference, embed_texts(TEXTS, progress=False, backend="torch"))

    for backend in EMBEDDING_BACKENDS:
        vectors = embed_texts(TEXTS, progress=False, backend=backend)
        assert vectors.dtype == np.float32 and vectors.shape == reference.shape
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert np.array_equal(vectors[0], vectors[8])  # the same text, the same vector
        cosines = _cosines(vectors, reference)
        if backend in FLOAT32_BACKENDS:
            # Measured: cosine 1.0000 for every text (largest difference ~4e-7).
            assert cosines.min() > 0.99999, (backend, cosines)
            np.testing.assert_allclose(vectors, reference, atol=1e-4)
        elif backend == "onnx-int8":
            # Measured: min 0.969 (the empty text), mean 0.989.
            assert cosines.min() > 0.95 and cosines.mean() > 0.98, cosines
            assert not np.allclose(vectors, reference, atol=1e-3)  # really the quantised model

    # Any batch shape runs. In float32 one text at a time gives the batched vectors;
    # int8 quantises activations per batch, so its vectors move a little with the batch.
    for backend in ("onnx", "onnx-int8", "openvino"):
        batched = embed_texts(TEXTS, progress=False, backend=backend)
        single = embed_texts(TEXTS, batch_size=1, progress=False, backend=backend)
        if backend in FLOAT32_BACKENDS:
            np.testing.assert_allclose(single, batched, atol=1e-5, err_msg=backend)
        else:
            assert _cosines(single, batched).min() > 0.95 and _cosines(single, reference).mean() > 0.98

    # One runtime thread (as scripts/bench_encoder.py also measures) computes the same.
    one_thread = exported_encoder("onnx", threads=1).encode(TEXTS)
    np.testing.assert_allclose(one_thread, load_encoder("onnx").encode(TEXTS), atol=1e-5)


def test_an_export_is_published_whole_and_rebuilt_when_damaged(encoder_cache, tmp_path):
    float32 = export_directory("onnx")
    manifest = json.loads((float32 / EXPORT_MANIFEST).read_text())
    assert manifest["encoder"] == embedding_model_id().to_dict() and set(manifest["files"]) == {"model.onnx"}
    assert float32.parent.parent.name == embedding_model_id().weights_sha256[:16]

    # Two processes building the int8 export into an empty place at once: both get it, whole.
    root = tmp_path / "encoders"
    shutil.copytree(float32, export_directory("onnx", root))
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from trainer.model.encoder.embeddings import ensure_export
        print(ensure_export("onnx-int8", Path(sys.argv[1])))
        """
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    int8 = export_directory("onnx-int8", root)
    assert outputs == [str(int8 / "model.onnx")] * 2
    assert sorted(path.name for path in int8.parent.iterdir()) == ["onnx", "onnx-int8"]  # no staging left
    assert sorted(path.name for path in int8.iterdir()) == [EXPORT_MANIFEST, "model.onnx"]

    # A damaged file is noticed (sha256) and the export rebuilt in its place.
    with open(int8 / "model.onnx", "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\xff" * 64)
    damaged = sha256_hex((int8 / "model.onnx").read_bytes())
    assert ensure_export("onnx-int8", root) == int8 / "model.onnx"
    rebuilt = json.loads((int8 / EXPORT_MANIFEST).read_text())
    assert rebuilt["files"]["model.onnx"] == sha256_hex((int8 / "model.onnx").read_bytes()) != damaged
    assert sorted(path.name for path in int8.parent.iterdir()) == ["onnx", "onnx-int8"]


def test_cached_vectors_are_kept_per_backend(tmp_path):
    encoder = embedding_model_id()
    keys = {encoder_key(encoder, backend) for backend in EMBEDDING_BACKENDS}
    assert len(keys) == len(EMBEDDING_BACKENDS)
    assert encoder_key(encoder) == encoder_key(encoder, "torch")  # the torch cache keeps its name

    store = ArtifactStore(str(tmp_path))
    texts = TEXTS[:3]
    embed_with_cache(texts, EmbeddingCache(store, encoder, "torch"), lambda t: embed_texts(t, progress=False))
    assert len(EmbeddingCache(store, encoder, "torch").lookup(text_digests(texts))) == 3
    for backend in set(EMBEDDING_BACKENDS) - {"torch"}:
        assert EmbeddingCache(store, encoder, backend).lookup(text_digests(texts)) == {}


def test_an_unknown_backend_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match=r"embedding_backend 'cuda' is not one of torch, onnx, onnx-int8"):
        TrainingArguments(embedding_backend="cuda")
    with pytest.raises(ConfigurationError, match="embedding_backend 'ONNX'"):
        TrainingArguments.from_dict({"embedding_backend": "ONNX"})
    with pytest.raises(ConfigurationError, match="embedding backend"):
        embed_texts(["a"], backend="tensorrt")
    with pytest.raises(ConfigurationError, match="embedding backend"):
        load_encoder("")
    assert TrainingArguments.from_dict({}).embedding_backend == "torch"  # params of runs before backends

    from trainer.api.schemas import TrainingRequest
    from trainer.cli.commands import cli

    assert TrainingRequest().embedding_backend == "torch"
    assert TrainingRequest(embedding_backend="onnx-int8").embedding_backend == "onnx-int8"
    with pytest.raises(ValueError, match="embedding_backend"):
        TrainingRequest(embedding_backend="cuda")

    result = CliRunner().invoke(cli, ["train", "--embedding-backend", "cuda"])
    assert result.exit_code == 2 and "--embedding-backend" in result.output
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--embedding-backend" in help_text and "onnx-int8" in help_text


@pytest.mark.slow
def test_a_fast_backend_run_records_its_backend_and_its_model_predicts_with_it(duckdb_workspace, encoder_cache):
    from trainer.results.store import ResultsStore
    from trainer.runs.training import train

    space = prepared_workspace(duckdb_workspace, 10)
    # The embedding alone: the model's probabilities are its embedding model's.
    args = TrainingArguments(
        model_name="fast", seed=1, embedding_backend="onnx-int8",
        char_ngram_features=False, layout_features=False, neighbour_features=False, label_issues=False,
    )  # fmt: skip
    result = train(args, space.settings(), progress=False)

    params = ResultsStore(space.database()).get_run(result.run_id).params
    assert params["embedding_backend"] == "onnx-int8"
    assert TrainingArguments.from_dict(params) == args  # a queued run rebuilds the same arguments
    distinct = len(set(space.query("select text from datasets.training_examples")))
    assert (params["embedding_cache_hits"], params["embedded_texts"]) == (0, distinct)
    cached = sorted(path.name for path in (space.artifacts / "embeddings").iterdir())
    assert cached == [encoder_key(embedding_model_id(), "onnx-int8")]

    store = ArtifactStore(str(space.artifacts))
    uri = result.model_version.artifact_uri
    manifest = json.loads(store.read_bytes(store.join(uri, MANIFEST)))
    assert manifest["embedding_backend"] == "onnx-int8"
    assert manifest["training_arguments"]["embedding_backend"] == "onnx-int8"
    classifier = SegmentClassifier.load(store, uri, result.model_version.artifact_sha256)
    assert classifier.embedding_backend == "onnx-int8" and "embedding_backend" not in classifier.metadata

    texts = [text for (text,) in space.query("select text from datasets.training_examples limit 40")]
    labels, confidences = classifier.predict(texts)
    own = classifier.predict_proba(embed_texts(texts, progress=False, backend="onnx-int8"))
    np.testing.assert_allclose(confidences, own.max(axis=1), rtol=1e-6)
    assert labels == [classifier.labels[i] for i in own.argmax(axis=1)]
    torch = classifier.predict_proba(embed_texts(texts, progress=False))
    assert not np.allclose(confidences, torch.max(axis=1), atol=1e-4)  # not the torch vectors


def test_a_model_json_without_a_backend_predicts_with_torch(tmp_path):
    saved = save_embedding_only_model(tmp_path)
    store, uri, texts, head, vectors = saved.store, saved.uri, saved.texts, saved.head, saved.vectors

    # As a model saved before backends existed: no embedding_backend key.
    manifest = json.loads(store.read_bytes(store.join(uri, MANIFEST)))
    assert manifest.pop("embedding_backend") == "torch"
    store.write_bytes(f"models/old/{MANIFEST}", json.dumps(manifest).encode())
    old = SegmentClassifier.load(store, uri)
    assert old.embedding_backend == "torch" and old.metadata == {"model_name": "old"}
    _, confidences = old.predict(texts)
    np.testing.assert_array_equal(confidences, head.predict_proba(vectors).max(axis=1))

    manifest["embedding_backend"] = "tensorrt"
    store.write_bytes(f"models/old/{MANIFEST}", json.dumps(manifest).encode())
    with pytest.raises(ArtifactError, match="embedding backend 'tensorrt'"):
        SegmentClassifier.load(store, uri)
