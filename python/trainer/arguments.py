"""The arguments of a training run. Their ``to_dict()`` is stored as the run's params."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from trainer.embeddings import DEFAULT_EMBEDDING_BACKEND, check_backend
from trainer.errors import ConfigurationError
from trainer.segment_model import FeatureSet

# The one rule for a model name (CLI, API, results store, and PostgreSQL's CHECK):
# 1-100 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit. It
# is safe in a file name, a header and a URL as it is.
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MODEL_NAME_RULE = "use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
DEFAULT_MODEL_NAME = "segment-labeler"


def check_model_name(name: object) -> str:
    """``name`` if it follows the rule; a ConfigurationError naming it otherwise."""
    # fullmatch: re's `$` would also accept a trailing newline.
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.fullmatch(name):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 120 else repr(name[:120]) + "…"
        raise ConfigurationError(f"model name {shown} is invalid: {MODEL_NAME_RULE}")
    return name

_SWITCHES = (
    "embedding_cache", "embedding_features", "char_ngram_features", "layout_features", "neighbour_features",
    "label_issues", "fine_tune",
)  # fmt: skip


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
        embedding_batch_size: Texts per forward pass of the sentence encoder; long
            texts go fewer at a time, to bound memory (``trainer.embeddings``).
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
        embedding_features: Use the sentence embedding of the text (a
            logistic regression on it is one of the text models).
        char_ngram_features: Use the text's character 2–4-grams (hashed,
            sublinear tf-idf; a second text model): spelling, digits and
            punctuation the embedding blurs.
        layout_features: Use where the segment sits on its page: its box
            relative to the page, its size, its place in reading order.
        neighbour_features: Use the nearest segments left, right, above and
            below on the same page: their position and size relative to the
            segment, their text statistics and the text models' probabilities
            of their text (never their labels).
            With layout or neighbour features, or both text models, a
            second stage (a logistic regression) combines everything
            (trainer.segment_model); with one text model alone, that model's
            logistic regression is the model.
        stacking_folds: Document folds over the train split. The second stage
            learns from text-model probabilities cross-fitted over them, and
            the label-quality check uses them to judge every train example by
            a model that did not see its document. Capped at the number of
            train documents.
        label_issues: Look for examples whose accepted label the model finds
            most unlikely (trainer.label_issues) and record them in
            ``training.label_issues``. Costs one more fit per fold.
        max_label_issues: At most this many label issues are recorded per
            run, most unlikely first.
        fine_tune: Fine-tune the sentence encoder on the train split first
            (``train-st``; trainer.fine_tuning: SetFit-style pairs of texts
            with the same and with different labels), then embed with it. The
            encoder is saved with the model (safetensors) and predicts with it.
            Needs the embedding features and the ``torch`` backend.
        fine_tune_max_pairs: Pairs the encoder is fine-tuned on, at most.
        fine_tune_max_seconds: Wall-clock cap of the fine-tuning loop; it stops
            after the step that crosses it.
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
    embedding_features: bool = True
    char_ngram_features: bool = True
    layout_features: bool = True
    neighbour_features: bool = True
    stacking_folds: int = 5
    label_issues: bool = True
    max_label_issues: int = 1000
    fine_tune: bool = False
    fine_tune_max_pairs: int = 2000
    fine_tune_max_seconds: float = 420.0

    def __post_init__(self) -> None:
        check_model_name(self.model_name)
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
        check_backend(self.embedding_backend)
        if isinstance(self.target_precision, bool) or not isinstance(self.target_precision, (int, float)) or not (
            0.0 < self.target_precision <= 1.0
        ):
            raise ConfigurationError(f"target precision {self.target_precision!r} is not in (0, 1]")
        for name in _SWITCHES:
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"{name} must be true or false")
        if not (self.embedding_features or self.char_ngram_features):
            raise ConfigurationError(
                "a model needs at least one text model: keep embedding_features or char_ngram_features on"
            )
        for name in ("stacking_folds", "max_label_issues"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"{name} must be an integer, not {value!r}")
        if self.stacking_folds < 2:
            raise ConfigurationError("stacking_folds must be at least 2")
        if self.max_label_issues < 0:
            raise ConfigurationError("max_label_issues must be 0 or more")
        if self.fine_tune:
            if not self.embedding_features:
                raise ConfigurationError("fine-tuning needs the embedding features: drop --no-embedding")
            if self.embedding_backend != "torch":
                raise ConfigurationError(
                    f"fine-tuning embeds with torch; embedding backend {self.embedding_backend!r} runs the installed "
                    "weights only"
                )
        self.fine_tune_settings()  # refuses unusable caps now, not after the examples are read

    def fine_tune_settings(self):
        from trainer.fine_tuning import FineTuneSettings

        return FineTuneSettings(
            max_pairs=self.fine_tune_max_pairs, max_seconds=self.fine_tune_max_seconds, seed=self.seed
        )

    @property
    def features(self) -> FeatureSet:
        return FeatureSet(
            embedding=self.embedding_features,
            char_ngrams=self.char_ngram_features,
            layout=self.layout_features,
            neighbours=self.neighbour_features,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingArguments:
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})
