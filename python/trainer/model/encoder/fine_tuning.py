"""SetFit-style contrastive fine-tuning of the sentence encoder (``train-st``).

The installed all-MiniLM-L6-v2 is fine-tuned on pairs of accepted examples: two
texts with the same label are a positive pair (target cosine 1), two with
different labels a negative pair (target 0), trained with sentence-transformers'
own ``SentenceTransformerTrainer`` and ``CosineSimilarityLoss`` (the SetFit
recipe). A head is then fitted on the fine-tuned embeddings as on frozen ones
(``trainer.model.encoder.embeddings.embed_texts(..., model_path=…)``).

The pairs are a pure function of the distinct (text, label) items and the seed:
anchors cycle through the labels (each label anchors as many pairs as any other,
so rare labels are not drowned by frequent ones), and positives and negatives
alternate, so the pairs are balanced. ``max_pairs`` caps them, ``max_seconds``
caps the training itself: a callback stops the trainer at the end of the first
step that finishes past the cap, so a run never overruns it by more than one
step.

The result is a plain sentence-transformers directory saved with safetensors
only; :func:`fine_tune_encoder` refuses to hand back a directory holding any
pickle-format file. Nothing is downloaded: training starts from the installed
weights, with no hub, no checkpoints, no evaluation, no experiment trackers.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer.core.errors import ArtifactError, ConfigurationError, DatasetError
from trainer.model.encoder.embeddings import EmbeddingModelId, embedding_model_id, fine_tuned_model_id, model_path

WEIGHTS_FILE = "model.safetensors"
# A fine-tuned directory also holds this: how it was made (settings, pairs, steps, base encoder).
FINE_TUNING_FILE = "fine_tuning.json"
# Serialisations that can run code when loaded; never allowed in a saved encoder.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"})

# FineTuneSettings.loss -> the sentence-transformers loss class.
LOSSES = {"cosine": "CosineSimilarityLoss", "contrastive": "ContrastiveLoss", "online-contrastive": "OnlineContrastiveLoss"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneSettings:
    """How ``train-st`` fine-tunes the encoder.

    The defaults were measured on the demo data with the project's split on 2 CPU
    cores (docs/MODELS.md): they finish well inside 10 minutes.

    Args:
        max_pairs: The number of training pairs (half positive, half negative).
        max_seconds: Wall-clock cap of the training loop; training stops after
            the step that crosses it (``FineTuneResult.stopped_early``).
        epochs: Passes over the pairs.
        batch_size: Pairs per optimisation step.
        learning_rate: Peak learning rate of AdamW (linear warm-up over the
            first 10% of the steps, then linear decay).
        seed: Seeds the pair sampling, the batch order and dropout.
        max_seq_length: Tokens per text during training only (longer texts are
            truncated there); the saved encoder keeps the base model's limit.
            Batches hold pairs of similar length, so a long limit costs little.
        loss: ``"cosine"`` (SetFit's: cosine similarity regressed to 1 or 0),
            ``"contrastive"`` (pulls positives together, pushes negatives past
            a margin) or ``"online-contrastive"`` (the same on the hardest
            pairs of each batch only).
    """

    max_pairs: int = 2000
    max_seconds: float = 420.0
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 5e-5
    seed: int = 42
    max_seq_length: int = 64
    loss: str = "cosine"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigurationError(f"fine-tuning loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigurationError(f"fine-tuning {name} must be an integer of at least {minimum}, got {value!r}")

        integer("max_pairs", 2)
        integer("epochs", 1)
        integer("batch_size", 1)
        integer("max_seq_length", 4)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigurationError(f"fine-tuning seed must be a non-negative integer, got {self.seed!r}")
        for name in ("max_seconds", "learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
                raise ConfigurationError(f"fine-tuning {name} must be a positive number, got {value!r}")
        if self.learning_rate > 1e-2:
            raise ConfigurationError(
                f"fine-tuning learning_rate {self.learning_rate} is far too high for a pretrained encoder (use 1e-5..1e-4)"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Pairs:
    """Training pairs: ``first[i]`` and ``second[i]`` with target cosine ``scores[i]`` (1 or 0)."""

    first: list[str]
    second: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def positives(self) -> int:
        return sum(1 for score in self.scores if score == 1.0)


@dataclass(frozen=True)
class FineTuneResult:
    path: Path  # the saved encoder directory (the ``output_dir`` given)
    pairs: int  # pairs built (the trainer may stop before seeing them all)
    steps: int  # optimisation steps taken
    seconds: float  # wall time of the training loop
    stopped_early: bool  # True when max_seconds stopped the training
    embedding_model: EmbeddingModelId  # names the saved weights (sha256 of model.safetensors)


def build_pairs(texts: list[str], labels: list[str], max_pairs: int, seed: int) -> Pairs:
    """Balanced positive/negative pairs of distinct (text, label) items, a pure function of its inputs.

    The order of ``texts`` does not matter (the items are sorted first). Anchors
    cycle through the labels; each anchor label gives a positive pair (another
    text of the same label) then a negative one (a text of another label, chosen
    label first, then text, so every other label is as likely). A label with a
    single distinct text anchors negatives only. A pair never joins a text to
    itself. DatasetError when no pair can be made.
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise ConfigurationError(f"max_pairs must be a positive integer, got {max_pairs!r}")
    by_label: dict[str, list[str]] = {}
    for text, label in sorted(set(zip(texts, labels))):
        by_label.setdefault(label, []).append(text)
    check_pairable(by_label)
    label_names = sorted(by_label)
    positive_labels = [label for label in label_names if len(by_label[label]) >= 2]
    rng = random.Random(f"train-st-pairs:{seed}")
    first: list[str] = []
    second: list[str] = []
    scores: list[float] = []
    turn = 0
    while len(scores) < max_pairs:
        label = label_names[turn % len(label_names)]
        turn += 1
        if label in positive_labels:
            anchor, partner = rng.sample(by_label[label], 2)
            first.append(anchor)
            second.append(partner)
            scores.append(1.0)
            if len(scores) == max_pairs:
                break
        else:
            anchor = rng.choice(by_label[label])
        other = rng.choice([name for name in label_names if name != label])
        candidates = by_label[other]
        partner = rng.choice(candidates)
        if partner == anchor:  # the same text accepted under two labels: never a pair with itself
            rest = [text for text in candidates if text != anchor]
            if not rest:
                continue
            partner = rng.choice(rest)
        first.append(anchor)
        second.append(partner)
        scores.append(0.0)
    return Pairs(first, second, scores)


def length_batches(pairs: Pairs, tokenizer, batch_size: int, max_length: int, seed: int) -> list[list[int]]:
    """Pair indices in batches of ``batch_size`` pairs of similar token length, in a seeded random order.

    Pairs are ordered by their longer text's token count (capped at
    ``max_length``; ties in a seeded random order) and cut into batches; the
    batches are then shuffled. Every pair is in exactly one batch.
    """
    texts = sorted(set(pairs.first) | set(pairs.second))
    encoded = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    counts = dict(zip(texts, (len(ids) for ids in encoded)))
    rng = random.Random(f"train-st-batches:{seed}")
    tie = [rng.random() for _ in range(len(pairs))]
    order = sorted(
        range(len(pairs)),
        key=lambda i: (min(max(counts[pairs.first[i]], counts[pairs.second[i]]), max_length), tie[i]),
    )
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def check_pairable(by_label: dict[str, list[str]]) -> None:
    """DatasetError, in one line, unless the distinct texts per label allow both kinds of pair."""
    if len(by_label) < 2:
        found = f"only {next(iter(by_label))!r}" if by_label else "none"
        raise DatasetError(f"fine-tuning needs examples of at least 2 labels, found {found}")
    if all(len(texts) < 2 for texts in by_label.values()):
        raise DatasetError(
            "fine-tuning needs at least 2 distinct texts with the same label to make a positive pair; "
            f"each of the {len(by_label)} labels has one"
        )
    distinct = {text for texts in by_label.values() for text in texts}
    if len(distinct) < 2:
        raise DatasetError("fine-tuning needs at least 2 distinct texts; every example has the same text")


def fine_tune_encoder(
    texts: list[str],
    labels: list[str],
    settings: FineTuneSettings | None = None,
    output_dir: Path | str | None = None,
    progress: bool | None = None,
) -> FineTuneResult:
    """Fine-tune the installed encoder on pairs of ``texts`` and save it to ``output_dir``.

    ``texts`` and ``labels`` are the training examples (duplicates are fine: the
    pairs use distinct (text, label) items). ``output_dir`` must not exist or be
    empty; it receives a sentence-transformers directory with ``model.safetensors``
    and ``fine_tuning.json``. ``progress`` shows the trainer's bar (None: only
    on a terminal, as tqdm decides). The trainer's own scratch files go to a
    temporary directory that is removed afterwards.

    ``settings.max_seconds`` bounds the training loop only (not loading the
    model or saving it). Threads are the caller's: torch's setting as it is
    (``torch.set_num_threads``). With ``epochs`` > 1 every epoch goes through
    the same batches, in the same order.
    """
    settings = FineTuneSettings() if settings is None else settings
    if output_dir is None:
        raise ConfigurationError("fine_tune_encoder needs an output directory")
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ConfigurationError(f"{output_dir}: the fine-tuned encoder's directory must be new or empty")
    pairs = build_pairs(list(texts), list(labels), settings.max_pairs, settings.seed)

    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils import logging as transformers_logging

    class _TimeCap(TrainerCallback):
        """Stops training after the step that ends past ``max_seconds`` of training."""

        def __init__(self, max_seconds: float):
            self.max_seconds = max_seconds
            self.started = time.monotonic()
            self.stopped_early = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.started >= self.max_seconds and state.global_step < state.max_steps:
                self.stopped_early = True
                control.should_training_stop = True
            return control

    class _StepBar(ProgressCallback):
        """The step bar alone: transformers' own writes the final metrics dict under it."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    class _Trainer(SentenceTransformerTrainer):
        # No model card: it would embed and copy training texts into the model directory.
        def add_model_card_callback(self, default_args_dict):
            pass

        # Batches of pairs of similar length (sentence-transformers documents this
        # override): a batch is padded to its longest text, so this does the same
        # work in a fraction of the time.
        def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
            return batches

    transformers_logging.disable_progress_bar()
    # A fresh copy of the installed weights: the process-wide encoder of
    # trainer.model.encoder.embeddings must stay the frozen one.
    torch.manual_seed(settings.seed)
    model = SentenceTransformer(str(model_path()), device="cpu")
    full_length = model.max_seq_length
    model.max_seq_length = min(settings.max_seq_length, full_length)
    dataset = Dataset.from_dict({"sentence1": pairs.first, "sentence2": pairs.second, "score": pairs.scores})
    batches = length_batches(pairs, model.tokenizer, settings.batch_size, model.max_seq_length, settings.seed)
    cap = _TimeCap(settings.max_seconds)
    with tempfile.TemporaryDirectory(prefix="train-st-") as scratch:
        arguments = SentenceTransformerTrainingArguments(
            output_dir=scratch,
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            warmup_steps=0.1,  # a float is a share of the steps in transformers 5
            lr_scheduler_type="linear",
            seed=settings.seed,
            data_seed=settings.seed,
            use_cpu=True,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            push_to_hub=False,
            dataloader_num_workers=0,
            disable_tqdm=not progress if progress is not None else None,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            trainer = _Trainer(
                model=model,
                args=arguments,
                train_dataset=dataset,
                loss=getattr(losses, LOSSES[settings.loss])(model),
                callbacks=[cap],
            )
            # Both print the final metrics dict ({'train_runtime': ...}) to the user's terminal.
            trainer.remove_callback(PrinterCallback)
            if trainer.pop_callback(ProgressCallback) is not None:
                trainer.add_callback(_StepBar())
            started = time.monotonic()
            outcome = trainer.train()
            seconds = time.monotonic() - started
        leftovers = [path.name for path in Path(scratch).iterdir()]
    if leftovers:
        log.debug("trainer scratch files discarded: %s", leftovers)

    model.max_seq_length = full_length
    model.eval()
    steps = int(outcome.global_step)
    record = {
        "base_encoder": embedding_model_id().to_dict(),
        "settings": settings.to_dict(),
        "loss": LOSSES[settings.loss],
        "pairs": len(pairs),
        "positive_pairs": pairs.positives,
        "steps": steps,
        "seconds": round(seconds, 3),
        "stopped_early": cap.stopped_early,
    }
    _save(model, output_dir, record)
    identity = fine_tuned_model_id(output_dir)
    return FineTuneResult(output_dir, len(pairs), steps, seconds, cap.stopped_early, identity)


def _save(model, output_dir: Path, record: dict) -> None:
    """Save with safetensors only, plus ``fine_tuning.json``, into a staging sibling
    renamed into place (a reader sees a complete directory or none); refuse pickles."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        model.save(str(staging), safe_serialization=True, create_model_card=False)
        check_safe_directory(staging)
        record = {**record, "encoder": fine_tuned_model_id(staging).to_dict()}
        (staging / FINE_TUNING_FILE).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
        if output_dir.exists():
            output_dir.rmdir()  # checked empty above
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_safe_directory(directory: Path) -> None:
    """ArtifactError unless ``directory`` holds model.safetensors and no pickle-format file."""
    directory = Path(directory)
    pickles = sorted(
        str(path.relative_to(directory)) for path in directory.rglob("*") if path.suffix.lower() in PICKLE_SUFFIXES
    )
    if pickles:
        raise ArtifactError(f"{directory}: the saved encoder holds pickle-format files ({', '.join(pickles)}); refusing it")
    if not (directory / WEIGHTS_FILE).is_file():
        raise ArtifactError(f"{directory}: the saved encoder has no {WEIGHTS_FILE}")
