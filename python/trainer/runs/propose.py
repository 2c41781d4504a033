"""Proposals back to the app (CONTRACT §7): a model version labels the pending live
segments into ``training.proposals``, the app shows them to reviewers least
certain first (``datasets.review_queue``), and the event log tells how they fared
(``datasets.proposal_acceptance``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.core.blob_store import ArtifactStore
from trainer.core.db import Database
from trainer.core.settings import Settings
from trainer.data.live_segments import batches_of_documents, documents_to_propose, read_live_documents
from trainer.model.classifier import SegmentClassifier, SegmentRows
from trainer.model.encoder.cache import EmbeddingCache, EmbeddingJob
from trainer.model.encoder.process import EncoderProcess
from trainer.results.proposal_store import ProposalRow, ProposalStore, proposal_actor
from trainer.results.store import ModelVersion, ResultsStore
from trainer.runs.training import ensure_results_tables

# Segments predicted at a time (whole documents): bounds memory at any scale.
PROPOSE_BATCH_SEGMENTS = 8_192


@dataclass(frozen=True)
class ProposeReport:
    model_version: ModelVersion
    actor: str
    proposed: int  # segments labelled
    new: int  # proposals this version had not made before
    changed: int  # proposals whose label or scores changed
    seconds: float


def resolve_model_version(settings: Settings, model_name: str, version: int | None) -> ModelVersion:
    """The model version to propose with: ``version`` of ``model_name``, or its latest."""
    database = Database(settings)
    store = ResultsStore(database)
    ensure_results_tables(database, store)
    return store.get_model_version(model_name, version)


def propose(
    settings: Settings, model_name: str, version: int | None, all_segments: bool = False, progress: bool | None = None
) -> ProposeReport:
    """``propose_version`` with ``version`` of ``model_name`` (its latest when None)."""
    return propose_version(settings, resolve_model_version(settings, model_name, version), all_segments, progress)


def propose_version(
    settings: Settings,
    model_version: ModelVersion,
    all_segments: bool = False,
    progress: bool | None = None,
    batch_segments: int = PROPOSE_BATCH_SEGMENTS,
    on_batch: Callable[[], None] = lambda: None,
) -> ProposeReport:
    """Label the pending live segments (every live segment with ``all_segments``)
    with ``model_version`` and write its proposals; return what changed.

    Each segment is predicted with its page as the app has it: all the live
    segments of its page, pending and decided ones alike. Running it again writes
    only what changed since (a new label or new scores). ``on_batch`` runs after
    each batch is written (a job's heartbeat check)."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    database = Database(settings)
    store = ResultsStore(database)
    ensure_results_tables(database, store)
    artifacts = ArtifactStore(settings.artifacts_url)
    classifier = SegmentClassifier.load(artifacts, model_version.artifact_uri, model_version.artifact_sha256)
    proposals = ProposalStore(database)
    actor = proposal_actor(model_version)
    with database.session() as session:
        documents = documents_to_propose(session, pending_only=not all_segments)
    total = sum(document.live if all_segments else document.pending for document in documents)
    proposed = new = changed = 0
    with _Embedder(classifier, artifacts) as embedder, tqdm(
        total=total, desc="Proposing", unit="segment", disable=None if progress is None else not progress
    ) as bar:
        for document_ids in batches_of_documents(documents, batch_segments):
            with database.session() as session:
                segments = read_live_documents(session, document_ids)
            rows = _proposal_rows(classifier, segments, all_segments, embedder.embed)
            written = proposals.write_proposals(model_version.model_version_id, actor, rows)
            proposed += len(rows)
            new += written.new
            changed += written.changed
            bar.update(len(rows))
            on_batch()
    return ProposeReport(model_version, actor, proposed, new, changed, time.perf_counter() - started)


def _proposal_rows(classifier: SegmentClassifier, documents: pa.Table, all_segments: bool, embed) -> list[ProposalRow]:
    """Predict every segment of the documents (their pages are the context) and
    return the proposals of the ones to propose for."""
    rows = SegmentRows(
        document_ids=documents.column("document_id").to_pylist(),
        pages=documents.column("page").to_pylist(),
        boxes=np.column_stack(
            [documents.column(name).to_numpy(zero_copy_only=False).astype(np.float64) for name in ("x0", "y0", "x1", "y1")]
        ),
    )
    probabilities = classifier.predict_segments(documents.column("text").to_pylist(), rows, embed=embed)
    wanted = np.ones(documents.num_rows, dtype=bool)
    if not all_segments:
        wanted = pc.equal(documents.column("review_state"), "pending").to_numpy(zero_copy_only=False)
    probabilities = np.clip(probabilities[wanted], 0.0, 1.0)
    top_two = -np.sort(-probabilities, axis=1)[:, :2]
    confidence = top_two[:, 0]
    margin = confidence - (top_two[:, 1] if top_two.shape[1] > 1 else 0.0)
    best = probabilities.argmax(axis=1)
    labels = classifier.labels
    ids = documents.column("annotation_id").filter(pa.array(wanted)).to_pylist()
    return [
        ProposalRow(annotation_id, labels[column], float(top), float(gap))
        for annotation_id, column, top, gap in zip(ids, best, confidence, margin)
    ]


class _Embedder:
    """The vectors of a batch's distinct texts: from the embedding cache where it
    has them (the run that trained the version embedded most of the page), the
    rest by an encoder process started at the first miss and kept for the command."""

    def __init__(self, classifier: SegmentClassifier, artifacts: ArtifactStore):
        # A fine-tuned encoder was that run's alone: its vectors are not in the cache.
        self._cache = (
            None
            if classifier.encoder_path is not None
            else EmbeddingCache(artifacts, classifier.embedding_model, classifier.embedding_backend)
        )
        self._process = EncoderProcess(backend=classifier.embedding_backend, model_path=classifier.encoder_path)

    def __enter__(self) -> _Embedder:
        self._process.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._process.__exit__(*exc_info)

    def embed(self, texts: list[str]) -> np.ndarray:
        with EmbeddingJob(texts, self._cache) as job:
            job.embed_missing(self._process.embed, progress=False)
            return job.result().vectors


def play_demo_reviews(settings: Settings, model_name: str, version: int | None):
    """The demo's app and reviewers answering a version's proposals
    (trainer.data.demo.play_reviews); returns (model version, ReviewReport)."""
    from trainer.data.demo import play_reviews

    model_version = resolve_model_version(settings, model_name, version)
    database = Database(settings)
    report = play_reviews(database, proposal_actor(model_version), model_version.model_version_id, settings.app_schema)
    return model_version, report
