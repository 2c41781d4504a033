"""The segment classifier: frozen sentence embeddings and a scikit-learn head.

Saved without pickle: the head with skops (loaded with only skops' default-trusted
types), the encoder named by its weights' sha256 and the backend that ran it
(``embedding_backend``; a manifest without it predates backends: ``torch``), and a
JSON manifest written last that lists every file with its sha256. A directory
without a manifest is incomplete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.artifacts import ArtifactStore, sha256_hex
from trainer.embeddings import (
    DEFAULT_EMBEDDING_BACKEND,
    EMBEDDING_BACKENDS,
    EmbeddingModelId,
    embed_texts,
    embedding_model_id,
)
from trainer.errors import ArtifactError

MANIFEST = "model.json"
HEAD_FILE = "head.skops"
FORMAT = "training-db-pipeline/segment-classifier"
FORMAT_VERSION = 1
# The manifest's own keys; the others are the metadata it was saved with.
_OWN_KEYS = frozenset(
    {"format", "format_version", "labels", "confidence_threshold", "embedding_model", "embedding_backend", "head", "files"}
)


@dataclass
class SegmentClassifier:
    head: Any
    embedding_model: EmbeddingModelId
    confidence_threshold: float
    metadata: dict[str, Any] = field(default_factory=dict)
    # What ran the encoder at training; predictions use the same (trainer.embeddings).
    embedding_backend: str = DEFAULT_EMBEDDING_BACKEND

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.head.classes_]

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities, columns in the order of :attr:`labels`."""
        return self.head.predict_proba(embeddings)

    def predict(self, texts: list[str], batch_size: int = 64, progress: bool | None = None):
        """Return (labels, confidences) for raw texts, embedded with the model's own backend."""
        if not texts:
            return [], np.zeros(0)
        embeddings = embed_texts(texts, batch_size=batch_size, progress=progress, backend=self.embedding_backend)
        probabilities = self.predict_proba(embeddings)
        best = probabilities.argmax(axis=1)
        labels = self.labels
        return [labels[i] for i in best], probabilities.max(axis=1)

    # -- persistence --------------------------------------------------------

    def save(self, store: ArtifactStore, directory: str) -> tuple[str, str]:
        """Write the artifact under ``directory``; return its URI and the manifest's sha256."""
        import skops.io

        head_uri, head_sha256 = store.write_bytes(f"{directory}/{HEAD_FILE}", skops.io.dumps(self.head))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "labels": self.labels,
            "confidence_threshold": self.confidence_threshold,
            "embedding_model": self.embedding_model.to_dict(),
            "embedding_backend": self.embedding_backend,
            "head": {"file": HEAD_FILE, "class": type(self.head).__module__ + "." + type(self.head).__name__},
            "files": {HEAD_FILE: head_sha256},
            **self.metadata,
        }
        data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
        _, manifest_sha256 = store.write_bytes(f"{directory}/{MANIFEST}", data)
        return store.uri(directory), manifest_sha256

    @classmethod
    def load(cls, store: ArtifactStore, uri: str, manifest_sha256: str | None = None) -> SegmentClassifier:
        """Load and verify an artifact: manifest hash, file hashes, encoder weights."""
        import skops.io

        raw = store.read_bytes(store.join(uri, MANIFEST))
        if manifest_sha256 is not None and sha256_hex(raw) != manifest_sha256:
            raise ArtifactError(f"artifact {uri}: manifest does not match its recorded sha256")
        manifest = json.loads(raw)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"artifact {uri}: unsupported format {manifest.get('format')!r}")
        head_bytes = store.read_bytes(store.join(uri, manifest["head"]["file"]))
        if sha256_hex(head_bytes) != manifest["files"][manifest["head"]["file"]]:
            raise ArtifactError(f"artifact {uri}: {manifest['head']['file']} does not match its sha256")
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
        try:
            head = skops.io.loads(head_bytes)
        except Exception as exc:  # skops refuses untrusted types with its own exception
            raise ArtifactError(f"artifact {uri}: cannot load {manifest['head']['file']}: {exc}") from exc
        metadata = {key: value for key, value in manifest.items() if key not in _OWN_KEYS}
        return cls(head, installed, float(manifest["confidence_threshold"]), metadata, backend)
