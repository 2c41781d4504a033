"""`train-st`'s fine-tuning (trainer.model.encoder.fine_tuning): the real installed encoder,
fine-tuned for a few steps on real demo segments; no mocks.

Whether fine-tuning pays off is measured on the whole demo data (docs/MODELS.md),
never here: these tests check what it writes, the time cap, the pairs, and that
a fine-tuned encoder is never mistaken for the installed one.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from trainer.core.errors import ArtifactError, ConfigurationError, DatasetError
from trainer.data.demo import read_segments
from trainer.model.encoder.embeddings import (
    EMBEDDING_MODEL_NAME,
    embed_texts,
    embedding_model_id,
    fine_tuned_model_id,
    load_fine_tuned_encoder,
)
from trainer.model.encoder.fine_tuning import (
    FINE_TUNING_FILE,
    PICKLE_SUFFIXES,
    FineTuneSettings,
    build_pairs,
    check_safe_directory,
    fine_tune_encoder,
)

pytestmark = pytest.mark.slow

# Small and quick: a few optimisation steps of 8 pairs on short texts.
QUICK = FineTuneSettings(max_pairs=32, batch_size=8, max_seconds=120, max_seq_length=16, seed=7)


@pytest.fixture(scope="module")
def examples():
    """40 real FUNSD segments, 10 of each label, from the bundled demo data."""
    by_label: dict[str, list[str]] = {}
    seen: set[str] = set()
    for segment in read_segments():
        texts = by_label.setdefault(segment.label, [])
        if len(texts) < 10 and segment.text.strip() and segment.text not in seen:
            texts.append(segment.text)
            seen.add(segment.text)
    texts = [text for label in sorted(by_label) for text in by_label[label]]
    labels = [label for label in sorted(by_label) for _ in by_label[label]]
    assert len(texts) == 40 and len(set(labels)) == 4
    return texts, labels


@pytest.fixture(scope="module")
def tuned(examples, tmp_path_factory):
    texts, labels = examples
    frozen_before = embed_texts(texts, progress=False)
    result = fine_tune_encoder(texts, labels, QUICK, tmp_path_factory.mktemp("tuned") / "encoder", progress=False)
    return result, frozen_before


def test_fine_tuned_encoder_is_saved_as_safetensors_only(tuned):
    result, _ = tuned
    files = {path.name for path in result.path.rglob("*") if path.is_file()}
    assert "model.safetensors" in files and "config.json" in files and FINE_TUNING_FILE in files
    assert not [name for name in files if any(name.endswith(suffix) for suffix in PICKLE_SUFFIXES)]
    assert "README.md" not in files  # no model card copying training texts
    check_safe_directory(result.path)
    # Staging directories are renamed into place, never left behind.
    assert [path.name for path in result.path.parent.iterdir()] == [result.path.name]

    assert (result.pairs, result.steps, result.stopped_early) == (32, 4, False)
    manifest = json.loads((result.path / FINE_TUNING_FILE).read_text())
    assert manifest["settings"] == QUICK.to_dict()
    assert (manifest["pairs"], manifest["positive_pairs"], manifest["steps"]) == (32, 16, 4)
    assert manifest["base_encoder"] == embedding_model_id().to_dict()
    assert manifest["encoder"] == result.embedding_model.to_dict()
    # The saved encoder keeps the base model's token limit; the short one was for training only.
    assert load_fine_tuned_encoder(result.path).max_seq_length == 256


def test_fine_tuned_vectors_and_id_differ_from_the_installed_encoders(tuned, examples):
    result, frozen_before = tuned
    texts, _ = examples
    tuned_vectors = embed_texts(texts, progress=False, model_path=result.path)
    frozen = embed_texts(texts, progress=False)
    # Fine-tuning worked on a copy: the process's installed encoder is unchanged.
    np.testing.assert_array_equal(frozen, frozen_before)
    assert tuned_vectors.shape == frozen.shape and tuned_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(tuned_vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(tuned_vectors - frozen).max() > 1e-3

    identity = fine_tuned_model_id(result.path)
    installed = embedding_model_id()
    assert identity == result.embedding_model
    assert identity.name == EMBEDDING_MODEL_NAME + "+fine-tuned" != installed.name
    assert identity.weights_sha256 != installed.weights_sha256
    assert identity.dimension == installed.dimension == tuned_vectors.shape[1]
    import hashlib

    assert identity.weights_sha256 == hashlib.sha256((result.path / "model.safetensors").read_bytes()).hexdigest()


def test_the_same_examples_and_seed_give_the_same_weights(tuned, examples, tmp_path):
    result, _ = tuned
    again = fine_tune_encoder(*examples, QUICK, tmp_path / "again", progress=False)
    assert again.embedding_model == result.embedding_model


def test_a_fine_tuned_encoder_runs_on_torch_only(tuned):
    result, _ = tuned
    with pytest.raises(ConfigurationError, match="cannot run a fine-tuned encoder; use 'torch'"):
        embed_texts(["Date:"], progress=False, backend="onnx", model_path=result.path)


def test_a_directory_without_weights_is_not_an_encoder(tmp_path):
    with pytest.raises(ConfigurationError, match="not a fine-tuned encoder directory"):
        embed_texts(["Date:"], progress=False, model_path=tmp_path)


def test_the_time_cap_stops_after_the_step_that_crosses_it(examples, tmp_path):
    texts, labels = examples
    settings = FineTuneSettings(max_pairs=64, batch_size=8, max_seconds=1e-6, max_seq_length=16)
    result = fine_tune_encoder(texts, labels, settings, tmp_path / "capped", progress=False)
    assert result.stopped_early and result.steps == 1  # of the 8 planned
    check_safe_directory(result.path)
    assert json.loads((result.path / FINE_TUNING_FILE).read_text())["stopped_early"] is True


def test_the_output_directory_must_be_new_or_empty(examples, tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ConfigurationError, match="must be new or empty"):
        fine_tune_encoder(*examples, QUICK, tmp_path, progress=False)


def test_pairs_are_a_balanced_pure_function_of_the_items_and_seed(examples):
    texts, labels = examples
    pairs = build_pairs(texts, labels, 200, seed=3)
    assert len(pairs) == 200 and pairs.positives == 100
    assert build_pairs(texts, labels, 200, seed=3) == pairs
    # The order of the examples and their duplicates do not matter.
    shuffled = list(zip(texts, labels)) * 2
    random.Random(1).shuffle(shuffled)
    assert build_pairs([t for t, _ in shuffled], [label for _, label in shuffled], 200, seed=3) == pairs
    assert build_pairs(texts, labels, 200, seed=4) != pairs

    label_of = dict(zip(texts, labels))
    anchors_per_label: dict[str, int] = {}
    for first, second, score in zip(pairs.first, pairs.second, pairs.scores):
        assert first != second
        assert (label_of[first] == label_of[second]) == (score == 1.0)
        anchors_per_label[label_of[first]] = anchors_per_label.get(label_of[first], 0) + 1
    assert set(anchors_per_label.values()) == {50}  # each label anchors as many pairs

    prefix = build_pairs(texts, labels, 5, seed=3)
    assert (prefix.first, prefix.second, prefix.scores) == (pairs.first[:5], pairs.second[:5], pairs.scores[:5])


def test_a_text_accepted_under_two_labels_is_never_paired_with_itself():
    texts = ["Date:", "Date:", "Name:", "Smith"]
    labels = ["question", "other", "question", "answer"]
    pairs = build_pairs(texts, labels, 300, seed=0)
    assert all(first != second for first, second in zip(pairs.first, pairs.second))


@pytest.mark.parametrize(
    ("texts", "labels", "message"),
    [
        (["Date:", "Name:"], ["question", "question"], "at least 2 labels, found only 'question'"),
        ([], [], "at least 2 labels, found none"),
        (["Date:", "Smith"], ["question", "answer"], "at least 2 distinct texts with the same label"),
    ],
)
def test_too_little_to_pair_is_one_clear_line(texts, labels, message, tmp_path):
    with pytest.raises(DatasetError, match=message) as caught:
        fine_tune_encoder(texts, labels, QUICK, tmp_path / "never", progress=False)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"max_pairs": 0},
        {"max_pairs": 1.5},
        {"epochs": 0},
        {"batch_size": True},
        {"max_seconds": 0},
        {"max_seconds": float("nan")},
        {"learning_rate": -1e-5},
        {"learning_rate": 0.5},
        {"seed": -1},
        {"max_seq_length": 2},
    ],
)
def test_settings_are_checked(bad):
    with pytest.raises(ConfigurationError, match="fine-tuning"):
        FineTuneSettings(**bad)


def test_a_pickle_in_a_saved_encoder_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    check_safe_directory(tmp_path)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"pickle-format files \(1_Pooling/pytorch_model.bin\)"):
        check_safe_directory(tmp_path)
    (tmp_path / "1_Pooling" / "pytorch_model.bin").unlink()
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="no model.safetensors"):
        check_safe_directory(tmp_path)


def test_the_step_bar_shows_without_the_trainers_metrics_dict(examples, tmp_path, capsys):
    texts, labels = examples
    settings = FineTuneSettings(max_pairs=16, batch_size=8, max_seconds=120, max_seq_length=16)
    fine_tune_encoder(texts, labels, settings, tmp_path / "shown", progress=True)
    printed = capsys.readouterr()
    assert "2/2" in printed.err  # the bar ran to its last step
    assert "train_runtime" not in printed.out + printed.err


def test_a_saved_encoder_loads_only_the_files_its_manifest_lists(tmp_path, monkeypatch):
    """A model whose encoder directory (in the store or in the encoder cache) holds
    a file its manifest does not list is refused: sentence-transformers would read it.
    The encoder is a copy of the installed one, saved as a fine-tuned encoder is."""
    import shutil
    import uuid
    from pathlib import Path

    from sklearn.linear_model import LogisticRegression

    from trainer.core.blob_store import ArtifactStore
    from trainer.model.classifier import SegmentClassifier
    from trainer.model.encoder.embeddings import model_path

    monkeypatch.setenv("TRAINER_ENCODER_CACHE", str(tmp_path / "encoders"))
    encoder = tmp_path / "encoder"
    shutil.copytree(model_path(), encoder)
    texts = ["Date:", "Total amount", "TO: R. J. Reynolds", "Signature", "FROM:", "Yes"]
    labels = ["question", "answer", "answer", "question", "question", "answer"]
    vectors = embed_texts(texts, progress=False)  # the copy's weights are the installed ones
    head = LogisticRegression(max_iter=1000).fit(vectors, labels)
    store = ArtifactStore(str(tmp_path / "store"))
    uri, sha256 = SegmentClassifier(
        head, fine_tuned_model_id(encoder), 0.5, {"model_name": "tuned"}, encoder_path=encoder
    ).save(store, "models/tuned")
    assert SegmentClassifier.load(store, uri, sha256).predict(texts)[0] == head.predict(vectors).tolist()

    unlisted = Path(store.path_of(store.join(uri, "encoder/1_Pooling/extra.py")))
    unlisted.write_text("raise SystemExit('an unlisted file ran')\n")
    refused = r"the stored encoder holds files its manifest does not list \(encoder/1_Pooling/extra.py\); refusing"
    with pytest.raises(ArtifactError, match=refused):
        SegmentClassifier.load(store, uri, sha256)

    # A store that is not a local directory: the same file there is refused too…
    remote = ArtifactStore(f"memory://unlisted-{uuid.uuid4().hex}")
    for stored in store.list_files("models/tuned"):
        remote.write_bytes(stored.relative_path, store.read_bytes(stored.uri))
    remote_uri = remote.uri("models/tuned")
    with pytest.raises(ArtifactError, match=refused):
        SegmentClassifier.load(remote, remote_uri, sha256)
    remote.delete(remote.join(remote_uri, "encoder/1_Pooling/extra.py"))
    copied = SegmentClassifier.load(remote, remote_uri, sha256)
    assert copied.encoder_path.parent == tmp_path / "encoders" / "fine-tuned"

    # …and so is one added to the checked copy in the encoder cache.
    (copied.encoder_path / "extra.py").write_text("raise SystemExit('an unlisted file ran')\n")
    with pytest.raises(ArtifactError, match=r"its copy in the encoder cache .* does not list \(encoder/extra.py\)"):
        SegmentClassifier.load(remote, remote_uri, sha256)
