"""The arguments of a training run. Their ``to_dict()`` is stored as the run's params."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, get_type_hints

from trainer.core.errors import ConfigurationError
from trainer.model.encoder.embeddings import DEFAULT_EMBEDDING_BACKEND, EMBEDDING_BACKENDS
from trainer.model.segment_model import FeatureSet

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

@dataclass(frozen=True)
class ArgumentSpec:
    """What a field of TrainingArguments allows, and its help: the CLI's options
    (trainer.cli.commands.training_options) and the API's request schema
    (trainer.api.schemas.TrainingRequest) are generated from these, and
    ``TrainingArguments`` checks its own values against them."""

    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False  # the minimum itself is not allowed
    choices: tuple[str, ...] | None = None
    pattern: str | None = None  # a text field's whole value must match
    max_length: int | None = None
    # Earlier spellings of the command-line option, kept working: "--batch-size", or
    # "--embedding/--no-embedding" for a switch.
    aliases: tuple[str, ...] = ()


def _argument(default: Any, help: str, **spec: Any) -> Any:
    return field(default=default, metadata={"spec": ArgumentSpec(help, **spec)})


def argument_specs() -> dict[str, tuple[Any, type, ArgumentSpec]]:
    """{field name: (default, type, spec)} of every TrainingArguments field, in order."""
    hints = get_type_hints(TrainingArguments)
    return {item.name: (item.default, hints[item.name], item.metadata["spec"]) for item in fields(TrainingArguments)}


@dataclass
class TrainingArguments:
    """Everything that decides what a training run produces; stored as the run's
    params (``to_dict()``). Each field's help and allowed values are its
    ``ArgumentSpec`` (the field's metadata), the one declaration the CLI options and
    the API schema are made from."""

    model_name: str = _argument(
        DEFAULT_MODEL_NAME,
        "Name the model version is registered under; versions count 1, 2, 3... per name "
        "(1-100 letters, digits, '.', '_' or '-', starting with a letter or digit).",
        pattern=MODEL_NAME_PATTERN.pattern,
        max_length=100,
    )
    confidence_threshold: float = _argument(
        0.5,
        "A prediction is covered when its top probability is at least this (the coverage and "
        "selective_accuracy metrics; stored with the model).",
        minimum=0.0,
        maximum=1.0,
    )
    seed: int = _argument(
        42, "Seed of every random choice of the run: the same examples and seed give the same model.",
        minimum=0, maximum=2**32 - 1,
    )  # fmt: skip
    embedding_batch_size: int = _argument(
        64, "Texts per encoder batch (fewer for long texts, to bound memory).",
        minimum=1, maximum=4096, aliases=("--batch-size",),
    )  # fmt: skip
    regularization: float = _argument(
        4.0, "Inverse regularisation strength C of the logistic regressions; smaller is smoother.",
        minimum=0.0, exclusive_minimum=True, maximum=1e6,
    )  # fmt: skip
    class_weight: str = _argument(
        "none",
        "none weighs every example the same; balanced weighs labels inversely to their frequency "
        "(more recall on rare labels, at some cost in accuracy).",
        choices=("none", "balanced"),
    )
    max_iter: int = _argument(2000, "Iteration cap of the logistic regressions' solver.", minimum=1, maximum=100_000)
    embedding_cache: bool = _argument(
        True,
        "Reuse the vectors earlier runs computed for the same texts with the same encoder (blob store, "
        "embeddings/); embed only new texts.",
    )
    embedding_backend: str = _argument(
        DEFAULT_EMBEDDING_BACKEND,
        "What runs the sentence encoder. torch: SentenceTransformer.encode. onnx / openvino: the same model "
        "exported to ONNX, run in float32 by ONNX Runtime / OpenVINO (same vectors up to rounding). "
        "onnx-int8: that export with int8 weights (the fastest; vectors slightly off). docs/BENCHMARKS.md has "
        "the figures. The first use on a machine exports the model once (kept under TRAINER_ENCODER_CACHE); "
        "cached vectors are kept per backend, and the model predicts with the backend it was trained with.",
        choices=tuple(EMBEDDING_BACKENDS),
    )
    target_precision: float = _argument(
        0.9,
        "The eval metrics name the lowest confidence threshold whose covered predictions are at least this "
        "right (threshold_at_target_precision, with its coverage and precision). It changes no prediction.",
        minimum=0.0, exclusive_minimum=True, maximum=1.0,
    )  # fmt: skip
    embedding_features: bool = _argument(
        True, "A text model on the sentence embedding. docs/MODELS.md compares the families.",
        aliases=("--embedding/--no-embedding",),
    )  # fmt: skip
    char_ngram_features: bool = _argument(
        True, "A text model on character 2-4-grams (hashed, tf-idf): spelling, digits, punctuation.",
        aliases=("--char-ngrams/--no-char-ngrams",),
    )  # fmt: skip
    layout_features: bool = _argument(
        True, "Features of where the segment sits on its page (box relative to the page, size, reading order).",
        aliases=("--layout/--no-layout",),
    )  # fmt: skip
    neighbour_features: bool = _argument(
        True,
        "Features of the nearest segments left, right, above and below on the same page (position, size, "
        "text statistics, the text models' view of their text; never their labels). With layout or "
        "neighbour features, or both text models, a second stage combines everything.",
        aliases=("--neighbours/--no-neighbours",),
    )
    page_context: bool = _argument(
        True,
        "Compute the layout and neighbour features of each example among every live segment of its page "
        "(datasets.live_segments: pending and rejected segments too), the page `propose` predicts with; off: "
        "among the examples alone. Only a run that reads the views now has the live pages: with --as-of, "
        "--from-snapshot or --from-csv the examples are the page.",
    )
    stacking_folds: int = _argument(
        5,
        "Document folds over the train split: the second stage learns from text-model probabilities "
        "cross-fitted over them, and the label-issue check judges each example by a model that did not see "
        "its document. Capped at the number of train documents.",
        minimum=2, maximum=50,
    )  # fmt: skip
    label_issues: bool = _argument(
        True,
        "Look for examples whose accepted label the model finds most unlikely (cross-validated) and record "
        "them in training.label_issues. Costs one more fit per fold.",
    )
    max_label_issues: int = _argument(
        1000, "Record at most this many label issues, most unlikely first.", minimum=0, maximum=1_000_000
    )
    fine_tune: bool = _argument(
        False,
        "Fine-tune the sentence encoder on the train split first (what train-st does: SetFit-style pairs of "
        "texts with the same and different labels), then embed with it; the encoder is saved with the model. "
        "Needs the embedding features and the torch backend.",
    )
    fine_tune_max_pairs: int = _argument(
        2000, "Pairs of texts (same label / different labels) the encoder is fine-tuned on, at most.",
        minimum=2, maximum=10_000_000,
    )  # fmt: skip
    fine_tune_max_seconds: float = _argument(
        420.0, "Wall-clock cap of the fine-tuning loop (it stops after the step that crosses it).",
        minimum=0.0, exclusive_minimum=True, maximum=86_400.0,
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name, (_, kind, spec) in argument_specs().items():
            _check_value(name, getattr(self, name), kind, spec)
        check_model_name(self.model_name)
        if not (self.embedding_features or self.char_ngram_features):
            raise ConfigurationError(
                "a model needs at least one text model: keep embedding_features or char_ngram_features on"
            )
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
        from trainer.model.encoder.fine_tuning import FineTuneSettings

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
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def _check_value(name: str, value: Any, kind: type, spec: ArgumentSpec) -> None:
    """Refuse a value its field's type and spec do not allow, in one line naming the field."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigurationError(f"{name} must be true or false")
        return
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigurationError(f"{name} must be an integer, not {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)):
        raise ConfigurationError(f"{name} must be a number, not {value!r}")
    if kind is str and not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a text, not {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigurationError(f"{name} {value!r} is not one of {', '.join(spec.choices)}")
    low, high = spec.minimum, spec.maximum
    if low is not None and (value <= low if spec.exclusive_minimum else value < low):
        if spec.exclusive_minimum:
            raise ConfigurationError(f"{name} must be greater than {low:g}, not {value!r}")
        raise ConfigurationError(f"{name} must be {'0 or more' if low == 0 else f'at least {low:g}'}, not {value!r}")
    if high is not None and value > high:
        raise ConfigurationError(f"{name} must be at most {high:g}, not {value!r}")
