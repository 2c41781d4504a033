"""What a model artifact may make the loader run: only skops' trusted types in the
.skops files, only sentence-transformers' own modules in a fine-tuned encoder.

Each hostile artifact is otherwise valid (every sha256 in its manifest matches), so
the refusal under test is the only thing between it and the loader running its code:
a planted module or object writes a marker file if it is ever imported or built.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer

from trainer.core.blob_store import ArtifactStore, sha256_hex
from trainer.core.errors import ArtifactError
from trainer.model.classifier import HEAD_FILE, MANIFEST, SegmentClassifier
from trainer.model.encoder.embeddings import embedding_model_id

MARKER = "TDP_TEST_REFUSAL_MARKER"


class Planted:
    """An object a hostile head.skops holds; building it from the file leaves the marker."""

    def __setstate__(self, state):
        open(os.environ[MARKER], "w").close()
        self.__dict__.update(state)


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A valid model (a logistic regression on random 384-d vectors), the store, its URI."""
    monkeypatch.setenv(MARKER, str(tmp_path / "ran"))
    rng = np.random.default_rng(0)
    head = LogisticRegression(max_iter=200).fit(rng.normal(size=(20, 384)), ["answer", "question"] * 10)
    store = ArtifactStore(str(tmp_path / "store"))
    uri, _ = SegmentClassifier(head, embedding_model_id(), 0.5, {"model_name": "m"}).save(store, "models/m/run-1")
    SegmentClassifier.load(store, uri)  # valid as saved: the refusals below are the tampering's
    return store, uri, tmp_path / "ran"


def tamper(store: ArtifactStore, uri: str, files: dict[str, bytes], **manifest_changes) -> None:
    """Write ``files`` into the artifact and record their true sha256 in its manifest."""
    manifest = json.loads(store.read_bytes(store.join(uri, MANIFEST)))
    for name, data in files.items():
        store.write_bytes(f"models/m/run-1/{name}", data)
        manifest["files"][name] = sha256_hex(data)
    manifest.update(manifest_changes)
    store.write_bytes(f"models/m/run-1/{MANIFEST}", json.dumps(manifest).encode())


@pytest.mark.parametrize(
    "payload, untrusted",
    [
        (FunctionTransformer(func=os.system), "posix.system"),  # a trusted class carrying a dangerous function
        (Planted(), f"{__name__}.Planted"),  # a class skops does not know
    ],
    ids=["function", "class"],
)
def test_skops_refuses_an_untrusted_type_in_the_head(saved, payload, untrusted):
    store, uri, ran = saved
    tamper(store, uri, {HEAD_FILE: skops.io.dumps(payload)})
    with pytest.raises(ArtifactError, match=rf"artifact .*: cannot load {HEAD_FILE}: .*{untrusted}"):
        SegmentClassifier.load(store, uri)
    assert not ran.exists()


PLANTED_MODULE = """
import os
open(os.environ["TDP_TEST_REFUSAL_MARKER"], "w").close()
class Backdoor:
    pass
"""


@pytest.mark.parametrize(
    "modules",
    [
        [{"idx": 0, "name": "0", "path": "", "type": "planted_encoder_module.Backdoor"}],
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "planted_encoder_module.Backdoor"},
        ],
    ],
    ids=["only-foreign", "foreign-after-own"],
)
def test_a_fine_tuned_encoder_naming_a_foreign_module_is_refused_before_any_import(saved, tmp_path, monkeypatch, modules):
    store, uri, ran = saved
    # The module is importable, so only the refusal keeps it from running.
    (tmp_path / "planted_encoder_module.py").write_text(PLANTED_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    tamper(
        store,
        uri,
        {"encoder/modules.json": json.dumps(modules).encode(), "encoder/model.safetensors": b"not weights"},
        encoder="encoder",
    )
    with pytest.raises(ArtifactError, match=r"names foreign modules \['planted_encoder_module\.Backdoor'\]"):
        SegmentClassifier.load(store, uri)
    assert not ran.exists()


def test_a_fine_tuned_encoder_without_a_readable_modules_json_is_refused(saved):
    store, uri, _ = saved
    tamper(store, uri, {"encoder/model.safetensors": b"not weights"}, encoder="encoder")
    with pytest.raises(ArtifactError, match="the fine-tuned encoder has no readable modules.json"):
        SegmentClassifier.load(store, uri)


_TRUSTED_TYPES = """
import json, sys
{prelude}
from skops.io import _trusted_types as trusted
print(json.dumps({{"torch": "torch" in sys.modules, "types": {{
    name: sorted(map(str, value)) for name, value in vars(trusted).items()
    if name.isupper() and isinstance(value, (list, set, tuple))}}}}))
"""


def test_skops_without_torch_trusts_exactly_the_types_it_trusts_with_it():
    """The classifier imports skops without letting scikit-learn's estimator walk
    import torch (trainer.model.classifier._import_skops_io): the trusted types must be
    the same as a plain import's, and torch must stay unloaded."""
    import subprocess
    import sys

    def trusted(prelude: str) -> dict:
        script = _TRUSTED_TYPES.format(prelude=prelude)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        return json.loads(result.stdout)

    plain = trusted("import skops.io")
    guarded = trusted("from trainer.model.classifier import _import_skops_io; _import_skops_io()")
    assert guarded["types"] == plain["types"]
    assert len(plain["types"]["SKLEARN_ESTIMATOR_TYPE_NAMES"]) > 100
    assert guarded["torch"] is False
