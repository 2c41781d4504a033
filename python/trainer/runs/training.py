"""A training run from the database: read the examples, fit, evaluate, register.

The run is recorded as `running` before anything else happens and ends either
`succeeded` (with its model version and metrics, written in one transaction after
the artifact is complete) or `failed` (with the error text). No model version
ever points at an artifact that is not completely written.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from trainer.core.blob_store import ArtifactStore
from trainer.core.db import Database
from trainer.core.errors import DatasetError, TrainerError, TrainingFailed
from trainer.core.scratch import scratch_directory
from trainer.core.settings import Settings
from trainer.core.versions import library_versions
from trainer.data.dataset import check_trainable
from trainer.data.snapshots import store_snapshot_file
from trainer.model.arguments import TrainingArguments
from trainer.model.classifier import SegmentClassifier
from trainer.model.encoder.cache import EmbeddingCache, EmbeddingJob
from trainer.model.encoder.embeddings import embedding_model_id
from trainer.model.encoder.process import EncoderProcess
from trainer.model.evaluation import evaluate
from trainer.model.fit_inputs import NO_PAGE_CONTEXT, collect_examples, row_order, with_page_context
from trainer.model.fitting import fit_segment_model
from trainer.model.label_issues import find_label_issues, label_issue_rows
from trainer.results.run_outputs import (
    PAGE_CONTEXT_FILE,
    PAGE_CONTEXT_SHA256_PARAM,
    PREDICTIONS_FILE,
    write_page_context,
    write_predictions,
)
from trainer.results.store import LabelIssue, Metric, ModelVersion, ResultsStore
from trainer.runs.heartbeat import Heartbeat, worker_identity
from trainer.runs.sources import DatabaseSource, ExampleSource, source_from_params


@dataclass(frozen=True)
class TrainingResult:
    run_id: int
    model_version: ModelVersion
    dataset_fingerprint: str
    snapshot_uri: str
    train_examples: int
    eval_examples: int
    metrics: list[Metric]


def describe_error(exc: BaseException) -> str:
    """One line for the run's `error` column and the terminal."""
    if isinstance(exc, TrainerError):
        return str(exc)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def ensure_results_tables(database: Database, store: ResultsStore) -> None:
    with database.session() as session:
        if not store.is_ready(session):
            raise DatasetError(
                f"the results tables in {database.describe()} are missing or out of date: "
                "run `python -m trainer init-db`"
            )


def train(
    args: TrainingArguments,
    settings: Settings,
    progress: bool | None = None,
    source: ExampleSource | None = None,
) -> TrainingResult:
    """Train one model now and record everything.

    The examples come from ``source``: by default ``datasets.training_examples``
    as the views show it now (see :mod:`trainer.runs.sources` for a point in time, a
    stored snapshot or the legacy CSV export).

    Raises :class:`TrainingFailed` (after marking the run `failed`) when the run
    cannot complete, and other :class:`TrainerError`\\ s when no run could be started.
    """
    source = source or DatabaseSource()
    context = _Context(settings)
    context.store.reap(settings.heartbeat_timeout)
    run_id = context.store.start_run(args.model_name, run_params(args, settings, source), context.worker)
    return _execute(context, run_id, args, source, progress)


def run_queued(run_id: int, settings: Settings, progress: bool | None = None) -> TrainingResult:
    """Claim the queued run ``run_id`` and train it with the params it was queued with."""
    context = _Context(settings)
    context.store.reap(settings.heartbeat_timeout)
    run = context.store.claim_run(run_id, context.worker)
    return execute_claimed(context, run, progress)


def execute_claimed(context: _Context, run, progress: bool | None) -> TrainingResult:
    """Train a run this process has claimed; a run with unusable params fails."""
    try:
        args = TrainingArguments.from_dict(run.params)
        source = source_from_params(run.params)
    except TrainerError as exc:
        context.store.fail_run(run.run_id, f"invalid params: {exc}")
        raise TrainingFailed(run.run_id, f"invalid params: {exc}") from exc
    return _execute(context, run.run_id, args, source, progress)


def run_params(args: TrainingArguments, settings: Settings, source: ExampleSource | None = None) -> dict:
    """What a run records as its params before it starts: the training arguments,
    where the examples come from, and the target database."""
    return {**args.to_dict(), **(source or DatabaseSource()).params(), "target": settings.target}


class _Context:
    """What every run of this process shares: database, stores, identity."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.database = Database(settings)
        self.store = ResultsStore(self.database)
        self.artifacts = ArtifactStore(settings.artifacts_url)
        self.worker = worker_identity()
        ensure_results_tables(self.database, self.store)


def _execute(
    context: _Context, run_id: int, args: TrainingArguments, source: ExampleSource, progress: bool | None
) -> TrainingResult:
    """Run a claimed run to `succeeded`, or mark it `failed` and raise."""
    try:
        with Heartbeat(context.store, run_id, context.worker, context.settings.heartbeat_interval):
            context.store.add_params(
                run_id, {"library_versions": library_versions(context.database.engine_version()), "worker": context.worker}
            )
            return _train_run(run_id, args, source, context, progress)
    except BaseException as exc:
        message = describe_error(exc) if isinstance(exc, Exception) else f"interrupted ({type(exc).__name__})"
        context.store.fail_run(run_id, message)
        if isinstance(exc, Exception):
            raise TrainingFailed(run_id, message) from exc
        raise


def _train_run(
    run_id: int, args: TrainingArguments, source: ExampleSource, context: _Context, progress: bool | None
) -> TrainingResult:
    # The run's local files (snapshot spool, spooled vectors, a fine-tuned encoder),
    # removed at the end, or by a later run if this process is killed (trainer.core.scratch).
    with scratch_directory("run") as scratch:
        return _train_in(Path(scratch), run_id, args, source, context, progress)


def _train_in(
    scratch: Path, run_id: int, args: TrainingArguments, source: ExampleSource, context: _Context, progress: bool | None
) -> TrainingResult:
    store = context.store
    # One pass over the examples, batch by batch: snapshot file, fingerprint,
    # summary and the compact inputs of the fit (trainer.model.fit_inputs).
    with source.stream(context.database, store, context.artifacts, context.settings.read_batch_rows) as stream:
        collected = collect_examples(stream.batches, str(scratch))
    try:
        summary = collected.summary
        check_trainable(summary)
        fingerprint = collected.fingerprint
        train_size, eval_size = summary.split_size("train"), summary.split_size("eval")
        # The snapshot is complete in the blob store before the run points at it.
        snapshot = store_snapshot_file(context.artifacts, collected.snapshot_path, collected.snapshot_sha256, fingerprint)
    finally:
        collected.discard_snapshot_file()
    store.record_dataset(
        run_id, fingerprint, train_size, eval_size, snapshot.uri, snapshot.sha256, summary.to_rows(), stream.as_of
    )

    _seed_everything(args.seed)
    inputs, page_context = _with_page_context(run_id, args, source, context, collected.inputs)
    # One vector per row of the fit, none per example: the train split's distinct
    # (text, label) pairs, each weighted by its number of examples (the objective
    # of one row per example), then the texts only eval has (trainer.model.fit_inputs).
    order = row_order(inputs)
    encoder = _fine_tune(run_id, order, inputs, args, store, scratch / "encoder", progress) if args.fine_tune else None
    # The vectors are handed over, never named here: the fit drops them once the
    # text models are done (hundreds of MB at a million examples).
    fitted = fit_segment_model(
        inputs,
        order,
        _embed(run_id, order, inputs, args, context, store, encoder, scratch / "vectors", progress)
        if args.embedding_features
        else None,
        args,
        progress,
        page_context,
    )
    store.add_params(run_id, {"fit_seconds": {name: round(value, 3) for name, value in fitted.seconds.items()}})
    return _register(
        run_id, args, context, inputs, fitted, encoder, fingerprint, snapshot, train_size, eval_size, page_context
    )


def _with_page_context(run_id, args, source, context, inputs):
    """The examples and the rest of their pages (trainer.model.fit_inputs.PageContext)
    when the features look at the page and the source has the live pages."""
    features = args.features
    if not (args.page_context and features.stacked and (features.layout or features.neighbours)):
        return inputs, NO_PAGE_CONTEXT
    with source.live_pages(context.database, context.store, context.artifacts) as batches:
        if batches is None:
            context.store.add_params(run_id, {"page_context_segments": None})
            return inputs, NO_PAGE_CONTEXT
        inputs, page_context = with_page_context(inputs, batches)
    context.store.add_params(run_id, {"page_context_segments": page_context.rows})
    return inputs, page_context


def _fine_tune(run_id, order, inputs, args, store, directory: Path, progress):
    """Fine-tune the encoder on the train split's distinct (text, label) pairs; return its id and directory."""
    from trainer.model.encoder.fine_tuning import fine_tune_encoder

    train_texts = [inputs.texts[i] for i in order.train_text]
    tuned = fine_tune_encoder(train_texts, order.train_labels, args.fine_tune_settings(), directory, progress)
    store.add_params(
        run_id,
        {"fine_tuning": {"pairs": tuned.pairs, "steps": tuned.steps, "seconds": round(tuned.seconds, 3),
                         "stopped_early": tuned.stopped_early}},
    )  # fmt: skip
    return tuned


def _embed(run_id, order, inputs, args, context, store, encoder, spool: Path, progress):
    """One vector per row of the row order, from the cache where it has them."""
    backend = args.embedding_backend  # vectors are cached per backend, never shared between two
    model_id = encoder.embedding_model if encoder else embedding_model_id()
    # A fine-tuned encoder is this run's alone: nothing to share through the cache.
    cache = EmbeddingCache(context.artifacts, model_id, backend) if args.embedding_cache and not encoder else None
    model_path = encoder.path if encoder else None
    # The encoder runs in a process of its own, started when the cache lacks a text:
    # torch and the model leave no memory behind in this one, where the fit comes
    # next (trainer.model.encoder.process). The matrix is built once that process is gone.
    with EmbeddingJob(order.texts(inputs), cache, spool_directory=spool) as job:
        with EncoderProcess(batch_size=args.embedding_batch_size, backend=backend, model_path=model_path) as process:
            job.embed_missing(process.embed, progress)
        embedded = job.result()
    # Not under "embedding_cache": that key is the TrainingArguments switch.
    store.add_params(run_id, {"embedding_cache_hits": embedded.hits, "embedded_texts": embedded.embedded})
    return embedded.vectors


def _register(run_id, args, context, inputs, fitted, encoder, fingerprint, snapshot, train_size, eval_size, page_context):
    """Evaluate, save the model and its predictions, and record the run as succeeded."""
    store = context.store
    classifier = SegmentClassifier(
        head=fitted.head if fitted.head is not None else next(iter(fitted.text_heads.values())),
        embedding_model=encoder.embedding_model if encoder else embedding_model_id(),
        confidence_threshold=args.confidence_threshold,
        embedding_backend=args.embedding_backend,
        features=args.features,
        text_heads=fitted.text_heads,
        encoder_path=encoder.path if encoder else None,
        metadata={
            "model_name": args.model_name,
            "run_id": run_id,
            "dataset_fingerprint": fingerprint,
            "training_arguments": args.to_dict(),
        },
    )

    probabilities = fitted.probabilities
    is_train = inputs.is_train
    metrics: list[Metric] = []
    for split, mask in (("eval", ~is_train), ("train", is_train)):
        metrics += evaluate(
            inputs.labels(mask),
            probabilities[mask],
            fitted.classes,
            args.confidence_threshold,
            split,
            target_precision=args.target_precision if split == "eval" else None,
        )

    directory = f"models/{args.model_name}/run-{run_id}-{uuid.uuid4().hex[:12]}"
    artifact_uri, artifact_sha256 = classifier.save(context.artifacts, directory)
    write_predictions(context.artifacts, f"{directory}/{PREDICTIONS_FILE}", inputs, fitted)
    if page_context.table is not None:
        _, page_context_sha256 = write_page_context(context.artifacts, f"{directory}/{PAGE_CONTEXT_FILE}", page_context.table)
        store.add_params(run_id, {PAGE_CONTEXT_SHA256_PARAM: page_context_sha256})
    issues = label_issues_of(inputs, fitted, args.max_label_issues) if args.label_issues else []
    version = store.succeed_run(
        run_id, context.worker, args.model_name, artifact_uri, artifact_sha256, metrics, label_issues=issues
    )
    return TrainingResult(run_id, version, fingerprint, snapshot.uri, train_size, eval_size, metrics)


def label_issues_of(inputs, fitted, limit: int) -> list[LabelIssue]:
    """The run's label issues (trainer.model.label_issues) from its out-of-sample
    probabilities. An eval example whose label the train split never had cannot
    be judged: the model has no column for it."""
    if fitted.out_of_sample is None or limit == 0:
        return []
    column_of = {label: column for column, label in enumerate(fitted.classes)}
    code = np.array([column_of.get(label, -1) for label in inputs.classes], dtype=np.int64)[inputs.label_code]
    rows = np.flatnonzero(code >= 0)
    candidates = find_label_issues(code[rows], np.clip(fitted.out_of_sample[rows], 0.0, 1.0), limit)
    picked = rows[[candidate.index for candidate in candidates]]
    take = pa.array(picked, pa.int64())
    return label_issue_rows(
        [dataclasses.replace(candidate, index=position) for position, candidate in enumerate(candidates)],
        fitted.classes,
        inputs.annotation_id.take(take).to_pylist(),
        inputs.document_id.take(take).to_pylist(),
        ["train" if inputs.is_train[row] else "eval" for row in picked],
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    # torch takes over a second to import, and a run that never encodes (--no-embedding,
    # cached vectors, ONNX) need not pay for it: encoding is deterministic, and
    # fine-tuning seeds torch itself (trainer.model.encoder.fine_tuning).
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
