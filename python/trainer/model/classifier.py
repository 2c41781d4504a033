"""The segment classifier: text models over frozen sentence embeddings and
character n-grams, and a second stage over layout and neighbours (trainer.model.segment_model).

Saved without pickle: every fitted scikit-learn object with skops, loaded with
only skops' default-trusted types; the encoder named by its weights' sha256 and the backend
that ran it (``embedding_backend``; a manifest without it predates backends:
``torch``); and a JSON manifest written last that lists every file with its
sha256. A directory without a manifest is incomplete.

Format 1 (before the feature families) is one logistic regression on the
embedding in ``head.skops``; it still loads, as a model of the embedding alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.core.blob_store import ArtifactStore, sha256_hex
from trainer.core.errors import ArtifactError
from trainer.model.encoder.embeddings import (
    DEFAULT_EMBEDDING_BACKEND,
    EMBEDDING_BACKENDS,
    EmbeddingModelId,
    embed_texts,
    embedding_model_id,
    encoder_cache_root,
    fine_tuned_model_id,
)
from trainer.model.segment_features import Segments, text_statistics
from trainer.model.segment_model import FeatureSet, label_aligned, stage_two_features

MANIFEST = "model.json"
HEAD_FILE = "head.skops"
ENCODER_DIRECTORY = "encoder"
FORMAT = "training-db-pipeline/segment-classifier"
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
EMBEDDING_ONLY = FeatureSet(embedding=True, char_ngrams=False, layout=False, neighbours=False)
# The manifest's own keys; the others are the metadata it was saved with.
_OWN_KEYS = frozenset(
    {
        "format", "format_version", "labels", "confidence_threshold", "embedding_model", "embedding_backend",
        "head", "files", "features", "text_models", "encoder",
    }
)  # fmt: skip


# A package of scikit-learn's vendored array-API shims that imports torch itself.
_TORCH_SHIM = "sklearn.externals.array_api_compat.torch"


def _import_skops_io():
    """``skops.io``, imported without torch when torch is not loaded yet.

    skops lists the types it trusts at import, with scikit-learn's
    ``all_estimators()``, which imports every package of scikit-learn to walk it;
    one of them is the array-API shim for torch, which imports torch (4 of the 10 s
    this import took on the 2-core machine, 6 s with what torch pulls in). No
    estimator lives there, so the walk skips it (an import error, which
    ``pkgutil.walk_packages`` ignores) and skops trusts exactly the same types
    (tests/test_model_refusals.py compares them with an unguarded import).
    """
    import sys

    if "skops.io" in sys.modules or "torch" in sys.modules or _TORCH_SHIM in sys.modules:
        import skops.io

        return skops.io
    sys.modules[_TORCH_SHIM] = None  # type: ignore[assignment]  # None makes its import fail
    try:
        import skops.io
    finally:
        del sys.modules[_TORCH_SHIM]
    return skops.io


def text_model_file(name: str) -> str:
    return f"text-{name.replace('_', '-')}.skops"


@dataclass(frozen=True)
class SegmentRows:
    """Where the segments to label are, as given (e.g. a CSV's optional columns).

    A row without a document_id is a page of its own (it has no neighbours); a
    row without a page is on page 0 of its document; a missing coordinate makes
    the box unknown (no layout, never a neighbour).
    """

    document_ids: list[str | None] | None = None
    pages: list[int | None] | None = None
    boxes: np.ndarray | None = None  # (n, 4) x0, y0, x1, y1; NaN when unknown

    def segments(self, text_index: np.ndarray) -> Segments:
        n = len(text_index)
        codes: dict[str, int] = {}
        document = np.arange(n, dtype=np.int64) + (1 << 40)  # each row its own document…
        if self.document_ids is not None:
            for row, document_id in enumerate(self.document_ids):
                if document_id is not None and document_id != "":
                    document[row] = codes.setdefault(document_id, len(codes))  # …unless it names one
        page = np.zeros(n, dtype=np.int64)
        if self.pages is not None:
            page[:] = [0 if value is None else int(value) for value in self.pages]
        boxes = np.full((n, 4), np.nan) if self.boxes is None else np.asarray(self.boxes, dtype=np.float64)
        boxes = np.where(np.isnan(boxes).any(axis=1, keepdims=True), np.nan, boxes)
        return Segments(document, page, boxes, text_index)


@dataclass
class SegmentClassifier:
    # What gives the final probabilities: the second stage, or the only text model.
    head: Any
    embedding_model: EmbeddingModelId
    confidence_threshold: float
    metadata: dict[str, Any] = field(default_factory=dict)
    # What ran the encoder at training; predictions use the same (trainer.model.encoder.embeddings).
    embedding_backend: str = DEFAULT_EMBEDDING_BACKEND
    features: FeatureSet = EMBEDDING_ONLY
    # Every text model's head by name (trainer.model.segment_model.TEXT_MODELS); when
    # empty, ``head`` is the only text model's.
    text_heads: dict[str, Any] = field(default_factory=dict)
    # A fine-tuned encoder (trainer.model.encoder.fine_tuning): the local directory it is in.
    # Saved under ENCODER_DIRECTORY/ with the model; None: the installed encoder.
    encoder_path: Path | None = None

    def __post_init__(self) -> None:
        if not self.text_heads:
            self.text_heads = {self.features.text_models[0]: self.head}

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.head.classes_]

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """The embedding text model's class probabilities, columns in the order of :attr:`labels`."""
        head = self.text_heads["embedding"]
        return label_aligned(head.predict_proba(embeddings), head.classes_, self.labels)

    def predict_segments(
        self,
        texts: list[str],
        rows: SegmentRows | None = None,
        batch_size: int = 64,
        progress: bool | None = None,
        embed: Callable[[list[str]], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Class probabilities (columns: :attr:`labels`) of segments given by their
        texts and, for layout and neighbour features, where they are (``rows``).
        ``embed`` gives the vectors of distinct texts (e.g. through the embedding
        cache); by default this classifier's encoder embeds them here."""
        labels = self.labels
        if not texts:
            return np.zeros((0, len(labels)))
        distinct: dict[str, int] = {}
        text_index = np.fromiter((distinct.setdefault(text, len(distinct)) for text in texts), dtype=np.int64)
        distinct_texts = list(distinct)
        per_text = []
        for name in self.features.text_models:
            head = self.text_heads[name]
            if name == "embedding" and embed is not None:
                inputs = embed(distinct_texts)
            elif name == "embedding":
                inputs = embed_texts(
                    distinct_texts,
                    batch_size=batch_size,
                    progress=progress,
                    backend=self.embedding_backend,
                    model_path=self.encoder_path,
                )
            else:
                inputs = distinct_texts
            per_text.append(label_aligned(head.predict_proba(inputs), head.classes_, labels).astype(np.float32))
        text_probabilities = np.hstack(per_text)[text_index]
        if not self.features.stacked:
            return text_probabilities
        segments = (rows or SegmentRows()).segments(text_index)
        design = stage_two_features(self.features, segments, text_probabilities, text_statistics(distinct_texts))
        return label_aligned(self.head.predict_proba(design), self.head.classes_, labels)

    def predict(self, texts: list[str], batch_size: int = 64, progress: bool | None = None, rows: SegmentRows | None = None):
        """Return (labels, confidences) for raw texts (and where they are, see :meth:`predict_segments`)."""
        if not texts:
            return [], np.zeros(0)
        probabilities = self.predict_segments(texts, rows, batch_size=batch_size, progress=progress)
        best = probabilities.argmax(axis=1)
        labels = self.labels
        return [labels[i] for i in best], probabilities.max(axis=1)

    # -- persistence --------------------------------------------------------

    def save(self, store: ArtifactStore, directory: str) -> tuple[str, str]:
        """Write the artifact under ``directory``; return its URI and the manifest's sha256."""
        skops_io = _import_skops_io()

        files: dict[str, str] = {}

        def saved(name: str, estimator) -> dict[str, str]:
            _, files[name] = store.write_bytes(f"{directory}/{name}", skops_io.dumps(estimator))
            return {"file": name, "class": type(estimator).__module__ + "." + type(estimator).__name__}

        head = saved(HEAD_FILE, self.head)
        text_models = {
            name: head if estimator is self.head else saved(text_model_file(name), estimator)
            for name, estimator in self.text_heads.items()
        }
        encoder = None
        if self.encoder_path is not None:
            encoder = ENCODER_DIRECTORY
            for path in sorted(self.encoder_path.rglob("*")):
                if path.is_file():
                    name = f"{ENCODER_DIRECTORY}/{path.relative_to(self.encoder_path).as_posix()}"
                    _, files[name] = store.write_file(f"{directory}/{name}", path)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "labels": self.labels,
            "confidence_threshold": self.confidence_threshold,
            "embedding_model": self.embedding_model.to_dict(),
            "embedding_backend": self.embedding_backend,
            "features": self.features.to_dict(),
            "head": head,
            "text_models": text_models,
            "encoder": encoder,
            "files": files,
            **self.metadata,
        }
        data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
        _, manifest_sha256 = store.write_bytes(f"{directory}/{MANIFEST}", data)
        return store.uri(directory), manifest_sha256

    @classmethod
    def load(cls, store: ArtifactStore, uri: str, manifest_sha256: str | None = None) -> SegmentClassifier:
        """Load and verify an artifact: manifest hash, file hashes, encoder weights."""
        skops_io = _import_skops_io()

        raw = store.read_bytes(store.join(uri, MANIFEST))
        if manifest_sha256 is not None and sha256_hex(raw) != manifest_sha256:
            raise ArtifactError(f"artifact {uri}: manifest does not match its recorded sha256")
        manifest = json.loads(raw)
        if manifest.get("format") != FORMAT or manifest.get("format_version") not in READABLE_FORMAT_VERSIONS:
            raise ArtifactError(
                f"artifact {uri}: unsupported format {manifest.get('format')!r} "
                f"version {manifest.get('format_version')!r}"
            )
        encoder_path = None
        if manifest.get("encoder"):
            encoder_path = _check_encoder_modules(uri, _local_encoder(store, uri, manifest))
            installed = fine_tuned_model_id(encoder_path)
        else:
            installed = embedding_model_id()
        if manifest["embedding_model"]["weights_sha256"] != installed.weights_sha256:
            raise ArtifactError(
                f"artifact {uri} was trained with other encoder weights than the installed "
                f"{installed.name} (sha256 {installed.weights_sha256[:12]}…)"
            )
        backend = manifest.get("embedding_backend", DEFAULT_EMBEDDING_BACKEND)
        if backend not in EMBEDDING_BACKENDS:
            raise ArtifactError(
                f"artifact {uri} was trained with embedding backend {backend!r}, which this version does not have "
                f"({', '.join(EMBEDDING_BACKENDS)})"
            )
        loaded: dict[str, Any] = {}

        def estimator(name: str):
            if name not in loaded:
                data = store.read_bytes(store.join(uri, name))
                if sha256_hex(data) != manifest["files"].get(name):
                    raise ArtifactError(f"artifact {uri}: {name} does not match its sha256")
                try:
                    loaded[name] = skops_io.loads(data)
                except Exception as exc:  # skops refuses untrusted types with its own exception
                    raise ArtifactError(f"artifact {uri}: cannot load {name}: {exc}") from exc
            return loaded[name]

        features = FeatureSet.from_dict(manifest["features"]) if "features" in manifest else EMBEDDING_ONLY
        head = estimator(manifest["head"]["file"])
        text_heads = {name: estimator(entry["file"]) for name, entry in manifest.get("text_models", {}).items()}
        metadata = {key: value for key, value in manifest.items() if key not in _OWN_KEYS}
        return cls(
            head, installed, float(manifest["confidence_threshold"]), metadata, backend, features, text_heads, encoder_path
        )


def _check_encoder_modules(uri: str, directory: Path) -> Path:
    """sentence-transformers imports the classes modules.json names: only its own."""
    try:
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
        types = [module["type"] for module in modules]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"artifact {uri}: the fine-tuned encoder has no readable modules.json ({exc})") from exc
    foreign = [name for name in types if not str(name).startswith("sentence_transformers.")]
    if foreign:
        raise ArtifactError(f"artifact {uri}: the fine-tuned encoder names foreign modules {foreign}")
    return directory


def _local_encoder(store: ArtifactStore, uri: str, manifest: dict) -> Path:
    """A local directory holding the model's fine-tuned encoder and nothing else,
    every file checked against its sha256 in the manifest: the stored directory
    itself on a local store, else a copy under the encoder cache
    (trainer.model.encoder.embeddings), kept per weights sha256 and made in a temporary
    directory renamed into place.

    sentence-transformers reads whatever the directory holds (configs, tokenizer
    files, code a config points to), so a file the manifest does not list, in the
    store or in the cache, refuses the load: only what was saved and hashed runs."""
    prefix = manifest["encoder"].rstrip("/") + "/"
    names = sorted(name for name in manifest["files"] if name.startswith(prefix))
    weights = manifest["embedding_model"]["weights_sha256"]
    base = store.relative_path(uri).rstrip("/") + "/"
    stored = [file.relative_path[len(base):] for file in store.list_files(base + prefix)]
    _refuse_unlisted(uri, stored, names, "the stored encoder")
    if store.is_local:
        directory = Path(store.path_of(store.join(uri, manifest["encoder"])))
        for name in names:
            if store.sha256_of(store.join(uri, name)) != manifest["files"][name]:
                raise ArtifactError(f"artifact {uri}: {name} does not match its sha256")
        return directory
    target = encoder_cache_root() / "fine-tuned" / weights
    if target.is_dir():
        cached = [prefix + path.relative_to(target).as_posix() for path in target.rglob("*") if not path.is_dir()]
        _refuse_unlisted(uri, cached, names, f"its copy in the encoder cache {target}")
        for name in names:
            local = target / name[len(prefix):]
            if not local.is_file() or _file_sha256(local) != manifest["files"][name]:
                raise ArtifactError(f"artifact {uri}: {name} in the encoder cache {target} does not match its sha256")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{weights[:12]}.partial-", dir=target.parent))
    try:
        for name in names:
            data = store.read_bytes(store.join(uri, name))
            if sha256_hex(data) != manifest["files"][name]:
                raise ArtifactError(f"artifact {uri}: {name} does not match its sha256")
            local = staging / name[len(prefix):]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
        try:
            staging.rename(target)
        except OSError:  # another process put it there first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _refuse_unlisted(uri: str, present: list[str], listed: list[str], where: str) -> None:
    unlisted = sorted(set(present) - set(listed))
    if unlisted:
        raise ArtifactError(
            f"artifact {uri}: {where} holds files its manifest does not list ({', '.join(unlisted)}); "
            "refusing to load it"
        )


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
