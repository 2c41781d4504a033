"""The review loop's tables (CONTRACT §7.3): ``training.proposals``, what model
versions propose for the app's segments, and ``training.proposal_jobs``, the queue
of `propose` runs that the API requests and `worker` runs.

The app never writes these tables and the pipeline never writes the app's: the
app reads the proposals (``datasets.review_queue``), and what reviewers decide
comes back through its event log (``datasets.proposal_outcomes``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from trainer.core.db import Database, Session
from trainer.core.errors import NotFound
from trainer.results.records import (
    PROPOSAL_COLUMNS,
    PROPOSAL_JOB_COLUMNS,
    ModelVersion,
    Page,
    ProposalJob,
    RunStateError,
    proposal_from_row,
    proposal_job_from_row,
    utcnow,
)

# Annotation ids per statement when comparing and writing proposals: well under
# PostgreSQL's 65,535 bind parameters, and few round trips.
_CHUNK_ROWS = 2_000
# Two scores closer than this are the same score: a proposal whose label is the same
# and whose scores moved less is not rewritten (floating-point noise between runs).
SCORE_TOLERANCE = 1e-9


def proposal_actor(version: ModelVersion) -> str:
    """The actor the app records a version's proposals under (CONTRACT §7)."""
    return f"model:{version.model_name}@{version.version}"


@dataclass(frozen=True)
class ProposalRow:
    annotation_id: str
    label: str
    confidence: float
    margin: float


@dataclass(frozen=True)
class WrittenProposals:
    new: int
    changed: int


def _same(old: tuple[str, float, float], new: ProposalRow) -> bool:
    label, confidence, margin = old
    return (
        label == new.label
        and abs(confidence - new.confidence) <= SCORE_TOLERANCE
        and abs(margin - new.margin) <= SCORE_TOLERANCE
    )


class ProposalStore:
    """Reads and writes proposals and propose jobs."""

    def __init__(self, database: Database):
        self.database = database

    # -- proposals ------------------------------------------------------------

    def write_proposals(self, model_version_id: int, actor: str, rows: Sequence[ProposalRow]) -> WrittenProposals:
        """Insert the proposals this version has not made yet and rewrite those whose
        label or scores changed (with a new ``created_at``); leave the others as they
        are. One transaction: a batch is written whole or not at all."""
        now = utcnow()
        new = changed = 0
        with self.database.session() as session:
            for start in range(0, len(rows), _CHUNK_ROWS):
                chunk = rows[start : start + _CHUNK_ROWS]
                stored = self._stored(session, model_version_id, [row.annotation_id for row in chunk])
                fresh = [row for row in chunk if row.annotation_id not in stored]
                moved = [row for row in chunk if row.annotation_id in stored and not _same(stored[row.annotation_id], row)]
                if fresh:
                    marks = ", ".join("(?, ?, ?, ?, ?, ?, ?)" for _ in fresh)
                    session.execute(
                        f"insert into training.proposals ({PROPOSAL_COLUMNS}) values {marks}",
                        [value for row in fresh for value in
                         (model_version_id, row.annotation_id, actor, row.label, row.confidence, row.margin, now)],
                    )  # fmt: skip
                if moved:
                    marks = ", ".join("(?, ?, ?, ?)" for _ in moved)
                    session.execute(
                        "update training.proposals set label = incoming.label, confidence = incoming.confidence, "
                        "margin = incoming.margin, actor = ?, created_at = ? "
                        f"from (values {marks}) as incoming (annotation_id, label, confidence, margin) "
                        "where training.proposals.model_version_id = ? "
                        "and training.proposals.annotation_id = incoming.annotation_id",
                        [actor, now]
                        + [value for row in moved for value in (row.annotation_id, row.label, row.confidence, row.margin)]
                        + [model_version_id],
                    )
                new += len(fresh)
                changed += len(moved)
        return WrittenProposals(new, changed)

    @staticmethod
    def _stored(session: Session, model_version_id: int, annotation_ids: list[str]) -> dict[str, tuple[str, float, float]]:
        marks = ", ".join("?" for _ in annotation_ids)
        rows = session.fetchall(
            "select annotation_id, label, confidence, margin from training.proposals "
            f"where model_version_id = ? and annotation_id in ({marks})",
            [model_version_id, *annotation_ids],
        )
        return {row[0]: (row[1], float(row[2]), float(row[3])) for row in rows}

    def page_proposals(self, model_version_id: int, limit: int, offset: int = 0) -> Page:
        """A version's proposals, least confident first (as reviewers see them)."""
        with self.database.session() as session:
            total = int(
                session.scalar("select count(*) from training.proposals where model_version_id = ?", (model_version_id,))
            )
            rows = session.fetchall(
                f"select {PROPOSAL_COLUMNS} from training.proposals where model_version_id = ? "
                "order by confidence, annotation_id limit ? offset ?",
                (model_version_id, limit, offset),
            )
        return Page([proposal_from_row(row) for row in rows], total, limit, offset)

    # -- propose jobs -----------------------------------------------------------

    def queue_job(self, model_version_id: int, params: dict[str, Any]) -> int:
        """Record a `queued` propose job of a model version; return its id."""
        with self.database.session() as session:
            return int(
                session.scalar(
                    "insert into training.proposal_jobs (model_version_id, status, created_at, params) "
                    "values (?, 'queued', ?, ?) returning job_id",
                    (model_version_id, utcnow(), json.dumps(params, sort_keys=True)),
                )
            )

    def claim_next_job(self, worker: str) -> ProposalJob | None:
        """Atomically take the oldest queued job for ``worker``, or None (as
        ResultsStore.claim_next does for runs)."""
        now = utcnow()
        with self.database.session() as session:
            row = session.fetchone(
                "update training.proposal_jobs set status = 'running', started_at = ?, heartbeat_at = ?, worker = ? "
                "where job_id = (select job_id from training.proposal_jobs where status = 'queued' "
                f"order by created_at, job_id limit 1{session.row_lock(skip_locked=True)}) and status = 'queued' "
                "returning job_id",
                (now, now, worker),
            )
        return None if row is None else self.get_job(int(row[0]))

    def heartbeat(self, job_id: int, worker: str) -> bool:
        """Refresh a running job's heartbeat; False when it is no longer this worker's."""
        with self.database.session() as session:
            row = session.fetchone(
                "update training.proposal_jobs set heartbeat_at = ? "
                "where job_id = ? and status = 'running' and worker = ? returning job_id",
                (utcnow(), job_id, worker),
            )
        return row is not None

    def finish_job(self, job_id: int, worker: str, proposed: int, new: int, changed: int) -> None:
        """Mark this worker's running job `succeeded` with its summary."""
        with self.database.session() as session:
            row = session.fetchone(
                "update training.proposal_jobs set status = 'succeeded', finished_at = ?, proposed = ?, "
                "new_proposals = ?, changed_proposals = ? "
                "where job_id = ? and status = 'running' and worker = ? returning job_id",
                (utcnow(), proposed, new, changed, job_id, worker),
            )
        if row is None:
            raise RunStateError(f"propose job {job_id} is no longer this worker's running job (reaped?)")

    def fail_job(self, job_id: int, error: str) -> None:
        with self.database.session() as session:
            session.execute(
                "update training.proposal_jobs set status = 'failed', error = ?, finished_at = ? "
                "where job_id = ? and status in ('queued', 'running')",
                (error, utcnow(), job_id),
            )

    def reap(self, timeout_seconds: float) -> list[int]:
        """Fail every running job whose heartbeat is older than the timeout; return their ids."""
        now = utcnow()
        with self.database.session() as session:
            stale = session.fetchall(
                "select job_id, worker, coalesce(heartbeat_at, started_at, created_at) from training.proposal_jobs "
                "where status = 'running' and coalesce(heartbeat_at, started_at, created_at) < ?"
                + session.row_lock(skip_locked=True),
                (now - timedelta(seconds=timeout_seconds),),
            )
            for job_id, worker, last_seen in stale:
                session.execute(
                    "update training.proposal_jobs set status = 'failed', finished_at = ?, error = ? "
                    "where job_id = ? and status = 'running'",
                    (
                        now,
                        f"worker lost: {worker or 'its worker'} sent no heartbeat since {last_seen:%Y-%m-%d %H:%M:%S} UTC "
                        f"(timeout {timeout_seconds:g}s)",
                        job_id,
                    ),
                )
        return [int(row[0]) for row in stale]

    def get_job(self, job_id: int) -> ProposalJob:
        with self.database.session() as session:
            row = session.fetchone(f"select {PROPOSAL_JOB_COLUMNS} from training.proposal_jobs where job_id = ?", (job_id,))
        if row is None:
            raise NotFound(f"propose job {job_id} does not exist")
        return proposal_job_from_row(row)
