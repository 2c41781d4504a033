"""A training run from the database: read the examples, fit, evaluate, register.

The run is recorded as `running` before anything else happens and ends either
`succeeded` (with its model version and metrics, written in one transaction after
the artifact is complete) or `failed` (with the error text). No model version
ever points at an artifact that is not completely written.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

import numpy as np

from trainer.arguments import TrainingArguments
from trainer.artifacts import ArtifactStore
from trainer.classifier import SegmentClassifier
from trainer.dataset import check_trainable
from trainer.db import Database
from trainer.embedding_cache import EmbeddingCache, embed_with_cache
from trainer.embeddings import embed_texts, embedding_model_id
from trainer.errors import DatasetError, TrainerError, TrainingFailed
from trainer.evaluation import evaluate
from trainer.heartbeat import Heartbeat, worker_identity
from trainer.results_store import Metric, ModelVersion, ResultsStore
from trainer.settings import Settings
from trainer.snapshots import store_snapshot_file
from trainer.sources import DatabaseSource, ExampleSource, source_from_params
from trainer.training_data import collect_examples, fit_layout, text_probabilities
from trainer.versions import library_versions


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
    as the views show it now (see :mod:`trainer.sources` for a point in time, a
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
    store = context.store
    # One pass over the examples, batch by batch: snapshot file, fingerprint,
    # summary and the compact inputs of the fit (trainer.training_data).
    with source.stream(context.database, store, context.artifacts, context.settings.read_batch_rows) as stream:
        collected = collect_examples(stream.batches)
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
    inputs = collected.inputs
    is_train = inputs.is_train
    # One vector per row of the fit, none per example: the train split's distinct
    # (text, label) pairs, each weighted by its number of examples (the objective
    # of one row per example), then the texts only eval has (trainer.training_data).
    layout = fit_layout(inputs)
    texts = layout.texts(inputs)
    backend = args.embedding_backend  # vectors are cached per backend, never shared between two
    cache = EmbeddingCache(context.artifacts, embedding_model_id(), backend) if args.embedding_cache else None
    embedded = embed_with_cache(
        texts,
        cache,
        lambda distinct: embed_texts(distinct, batch_size=args.embedding_batch_size, progress=False, backend=backend),
        progress=progress,
    )
    # Not under "embedding_cache": that key is the TrainingArguments switch.
    store.add_params(run_id, {"embedding_cache_hits": embedded.hits, "embedded_texts": embedded.embedded})
    vectors = embedded.vectors
    head = _fit_head(vectors[: layout.train_rows], layout.train_labels, args, sample_weight=layout.train_counts)
    classifier = SegmentClassifier(
        head=head,
        embedding_model=embedding_model_id(),
        confidence_threshold=args.confidence_threshold,
        embedding_backend=args.embedding_backend,
        metadata={
            "model_name": args.model_name,
            "run_id": run_id,
            "dataset_fingerprint": fingerprint,
            "training_arguments": args.to_dict(),
        },
    )

    # Each distinct text is predicted once; an example takes its text's probabilities.
    probabilities = text_probabilities(classifier.predict_proba, layout, vectors, len(inputs.texts))
    del vectors, embedded
    metrics: list[Metric] = []
    for split, mask in (("eval", ~is_train), ("train", is_train)):
        metrics += evaluate(
            inputs.labels(mask),
            probabilities[inputs.text_index[mask]],
            classifier.labels,
            args.confidence_threshold,
            split,
            target_precision=args.target_precision if split == "eval" else None,
        )

    directory = f"models/{args.model_name}/run-{run_id}-{uuid.uuid4().hex[:12]}"
    artifact_uri, artifact_sha256 = classifier.save(context.artifacts, directory)
    version = store.succeed_run(run_id, context.worker, args.model_name, artifact_uri, artifact_sha256, metrics)
    return TrainingResult(run_id, version, fingerprint, snapshot.uri, train_size, eval_size, metrics)


def _fit_head(embeddings: np.ndarray, labels: list[str], args: TrainingArguments, sample_weight: np.ndarray | None = None):
    from sklearn.linear_model import LogisticRegression

    head = LogisticRegression(
        C=args.regularization,
        class_weight=None if args.class_weight == "none" else args.class_weight,
        max_iter=args.max_iter,
        random_state=args.seed,
    )
    return head.fit(embeddings, labels, sample_weight=sample_weight)


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
