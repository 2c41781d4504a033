"""The arguments of a training run. Their ``to_dict()`` is stored as the run's params."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from trainer.embeddings import DEFAULT_EMBEDDING_BACKEND, check_backend
from trainer.errors import ConfigurationError

MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DEFAULT_MODEL_NAME = "segment-labeler"


@dataclass
class TrainingArguments:
    """Everything that decides what a training run produces.

    Args:
        model_name: The name the model version is registered under; versions
            count 1, 2, 3… per name. Letters, digits, ``.``, ``_`` and ``-``.
        confidence_threshold: A prediction is *covered* when its top class
            probability is at least this. Decides the ``coverage`` and
            ``selective_accuracy`` metrics and is stored with the model.
        seed: Seed for every random choice of the run; the same examples and
            seed give the same model and metrics.
        embedding_batch_size: Texts per forward pass of the sentence encoder.
        regularization: Inverse regularisation strength ``C`` of the logistic
            regression head; smaller is smoother.
        class_weight: ``"none"`` weighs every example the same;
            ``"balanced"`` weighs labels inversely to their frequency, which
            raises recall on rare labels (headers) at some cost in accuracy.
        max_iter: Iteration cap of the head's solver.
        embedding_cache: Reuse the vectors earlier runs computed for the same
            texts with the same encoder (kept in the blob store under
            ``embeddings/``), and embed only the texts never seen before.
        embedding_backend: What runs the sentence encoder. ``"torch"`` (the
            default) is ``SentenceTransformer.encode``. ``"onnx"`` and
            ``"openvino"`` run the same weights exported to ONNX, in float32,
            with ONNX Runtime or OpenVINO: the same vectors up to rounding.
            ``"onnx-int8"`` runs that export with int8 weights: the fastest,
            with vectors slightly off (docs/BENCHMARKS.md has the speed-up and
            the accuracy change of each). The first use on a machine exports
            the model (seconds, once; see ``TRAINER_ENCODER_CACHE``). The
            model records its backend and predicts with it; cached vectors are
            kept per backend.
        target_precision: The eval split's metrics name the lowest confidence
            threshold at which the predictions it covers are at least this
            right (``threshold_at_target_precision``, with the coverage and
            precision it gives): where to set ``confidence_threshold`` for
            that precision. It changes no prediction.
    """

    model_name: str = DEFAULT_MODEL_NAME
    confidence_threshold: float = 0.5
    seed: int = 42
    embedding_batch_size: int = 64
    regularization: float = 4.0
    class_weight: str = "none"
    max_iter: int = 2000
    embedding_cache: bool = True
    embedding_backend: str = DEFAULT_EMBEDDING_BACKEND
    target_precision: float = 0.9

    def __post_init__(self) -> None:
        if not MODEL_NAME_PATTERN.match(self.model_name or ""):
            raise ConfigurationError(
                f"model name {self.model_name!r} is invalid: use 1-100 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ConfigurationError(f"confidence threshold {self.confidence_threshold} is not between 0 and 1")
        if self.embedding_batch_size < 1:
            raise ConfigurationError("embedding batch size must be at least 1")
        if self.regularization <= 0:
            raise ConfigurationError("regularization must be greater than 0")
        if self.class_weight not in ("balanced", "none"):
            raise ConfigurationError(f"class weight {self.class_weight!r} is not 'balanced' or 'none'")
        if self.max_iter < 1:
            raise ConfigurationError("max_iter must be at least 1")
        if not isinstance(self.embedding_cache, bool):
            raise ConfigurationError("embedding_cache must be true or false")
        check_backend(self.embedding_backend)
        if isinstance(self.target_precision, bool) or not isinstance(self.target_precision, (int, float)) or not (
            0.0 < self.target_precision <= 1.0
        ):
            raise ConfigurationError(f"target precision {self.target_precision!r} is not in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingArguments:
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})
