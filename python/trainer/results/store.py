"""The results tables (CONTRACT §5): the only module that writes schema `training`.

Every write is one short session (transaction). The schema and its migrations are
in :mod:`trainer.results.schema`, the records and how rows become them in
:mod:`trainer.results.records`; this module holds the queries: the queue, the
registry of model versions, the reads, the audit log.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from trainer.core.db import Database, Session
from trainer.core.errors import NotFound
from trainer.model.arguments import check_model_name
from trainer.results import schema
from trainer.results.records import (
    AUDIT_COLUMNS,
    AUDIT_OUTCOMES,
    LABEL_ISSUE_COLUMNS,
    METRIC_COLUMNS,
    RUN_COLUMNS,
    RUN_STATUSES,
    VERSION_COLUMNS,
    AuditEntry,
    LabelIssue,
    Metric,
    ModelVersion,
    Page,
    RunStateError,
    TrainingRun,
    audit_entry_from_row,
    label_issue_from_row,
    metric_from_row,
    run_from_row,
    utcnow,
    version_from_row,
)
from trainer.results.schema import MIGRATIONS

# What callers import from here: the store's records and the migrations (tests replay them).
__all__ = [
    "AUDIT_OUTCOMES", "MIGRATIONS", "RUN_STATUSES", "AuditEntry", "LabelIssue", "Metric", "ModelVersion", "Page", "ResultsStore", "RunStateError",
    "TrainingRun", "utcnow",
]  # fmt: skip

# Rows per insert statement for bulk writes: one round trip per chunk on PostgreSQL
# (the session has no executemany), well under its 65,535 bind parameters.
_INSERT_CHUNK_ROWS = 500


def _insert_rows(session: Session, table: str, columns: str, rows: Sequence[tuple]) -> None:
    """Insert many rows with multi-row VALUES statements, a chunk at a time: a
    statement per row would cost a round trip each on PostgreSQL."""
    if not rows:
        return
    marks = "(" + ", ".join("?" for _ in rows[0]) + ")"
    for start in range(0, len(rows), _INSERT_CHUNK_ROWS):
        chunk = rows[start : start + _INSERT_CHUNK_ROWS]
        session.execute(
            f"insert into {table} ({columns}) values {', '.join(marks for _ in chunk)}",
            [value for row in chunk for value in row],
        )


def _filters(**conditions: Any) -> tuple[str, tuple]:
    """A ``where`` clause (or nothing) for the conditions that are not None."""
    given = {column: value for column, value in conditions.items() if value is not None}
    if not given:
        return "", ()
    return " where " + " and ".join(f"{column} = ?" for column in given), tuple(given.values())


class ResultsStore:
    """Reads and writes training runs, model versions, metrics, label issues and the audit log."""

    def __init__(self, database: Database):
        self.database = database

    # -- schema (trainer.results.schema) ------------------------------------

    def migrate(self, session: Session) -> list[int]:
        """Apply the migrations not applied yet, in order; return their numbers."""
        return schema.migrate(session)

    def is_ready(self, session: Session) -> bool:
        return schema.is_ready(session)

    def queue_run(self, model_name: str, params: dict[str, Any]) -> int:
        """Record a `queued` run for a worker to pick up; return its id."""
        check_model_name(model_name)
        with self.database.session() as session:
            return int(
                session.scalar(
                    "insert into training.training_runs (model_name, status, created_at, params) "
                    "values (?, 'queued', ?, ?) returning run_id",
                    (model_name, utcnow(), json.dumps(params, sort_keys=True)),
                )
            )

    def start_run(self, model_name: str, params: dict[str, Any], worker: str) -> int:
        """Record a new run that starts right away (`running`, owned by ``worker``)."""
        check_model_name(model_name)
        now = utcnow()
        with self.database.session() as session:
            return int(
                session.scalar(
                    "insert into training.training_runs "
                    "(model_name, status, created_at, started_at, heartbeat_at, worker, params) "
                    "values (?, 'running', ?, ?, ?, ?, ?) returning run_id",
                    (model_name, now, now, now, worker, json.dumps(params, sort_keys=True)),
                )
            )

    def claim_run(self, run_id: int, worker: str) -> TrainingRun:
        """Move one queued run to `running` for ``worker``; refuse any other state."""
        now = utcnow()
        with self.database.session() as session:
            claimed = session.fetchone(
                "update training.training_runs set status = 'running', started_at = ?, heartbeat_at = ?, "
                "worker = ? where run_id = ? and status = 'queued' returning run_id",
                (now, now, worker, run_id),
            )
            if claimed is None:
                status = session.scalar("select status from training.training_runs where run_id = ?", (run_id,))
                if status is None:
                    raise NotFound(f"training run {run_id} does not exist")
                raise RunStateError(f"training run {run_id} is {status}, not queued")
        return self.get_run(run_id)

    def claim_next(self, worker: str) -> TrainingRun | None:
        """Atomically take the oldest queued run for ``worker``, or None.

        PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so concurrent workers never take
        the same run and never wait on each other. DuckDB: the session holds the
        file's single-writer lock, so select-and-update cannot interleave.
        """
        now = utcnow()
        with self.database.session() as session:
            row = session.fetchone(
                "update training.training_runs set status = 'running', started_at = ?, heartbeat_at = ?, "
                "worker = ? where run_id = (select run_id from training.training_runs where status = 'queued' "
                f"order by created_at, run_id limit 1{session.row_lock(skip_locked=True)}) and status = 'queued' "
                "returning run_id",
                (now, now, worker),
            )
        return None if row is None else self.get_run(int(row[0]))

    def add_params(self, run_id: int, extra: dict[str, Any]) -> None:
        """Merge keys into a run's params (what is only known when it starts)."""
        with self.database.session() as session:
            current = json.loads(
                session.scalar(
                    f"select params from training.training_runs where run_id = ?{session.row_lock()}", (run_id,)
                )
            )
            session.execute(
                "update training.training_runs set params = ? where run_id = ?",
                (json.dumps({**current, **extra}, sort_keys=True), run_id),
            )

    def heartbeat(self, run_id: int, worker: str) -> bool:
        """Refresh a running run's heartbeat; False when the run is no longer this worker's."""
        with self.database.session() as session:
            row = session.fetchone(
                "update training.training_runs set heartbeat_at = ? "
                "where run_id = ? and status = 'running' and worker = ? returning run_id",
                (utcnow(), run_id, worker),
            )
        return row is not None

    def reap(self, timeout_seconds: float) -> list[int]:
        """Mark `failed` ("worker lost") every running run whose heartbeat is older
        than ``timeout_seconds``; return their ids."""
        now = utcnow()
        cutoff = now - timedelta(seconds=timeout_seconds)
        with self.database.session() as session:
            stale = session.fetchall(
                "select run_id, worker, coalesce(heartbeat_at, started_at, created_at) from training.training_runs "
                "where status = 'running' and coalesce(heartbeat_at, started_at, created_at) < ?"
                + session.row_lock(skip_locked=True),
                (cutoff,),
            )
            for run_id, worker, last_seen in stale:
                session.execute(
                    "update training.training_runs set status = 'failed', finished_at = ?, error = ? "
                    "where run_id = ? and status = 'running'",
                    (
                        now,
                        f"worker lost: {worker or 'its worker'} sent no heartbeat since {last_seen:%Y-%m-%d %H:%M:%S} UTC "
                        f"(timeout {timeout_seconds:g}s)",
                        run_id,
                    ),
                )
        return [int(row[0]) for row in stale]

    def record_dataset(
        self,
        run_id: int,
        fingerprint: str,
        train_examples: int,
        eval_examples: int,
        snapshot_uri: str,
        snapshot_sha256: str,
        summary: list[dict[str, Any]],
        as_of: datetime | None = None,
    ) -> None:
        """Record what a run trains on: fingerprint, counts, the stored snapshot
        (already complete in the blob store) and the summary per split and label."""
        with self.database.session() as session:
            session.execute(
                "update training.training_runs set dataset_fingerprint = ?, train_examples = ?, "
                "eval_examples = ?, snapshot_uri = ?, snapshot_sha256 = ?, dataset_summary = ?, dataset_as_of = ? "
                "where run_id = ?",
                (
                    fingerprint,
                    train_examples,
                    eval_examples,
                    snapshot_uri,
                    snapshot_sha256,
                    json.dumps(summary, sort_keys=True),
                    as_of,
                    run_id,
                ),
            )

    def fail_run(self, run_id: int, error: str) -> None:
        """Mark a run `failed` with its error text (a finished run keeps its status)."""
        with self.database.session() as session:
            session.execute(
                "update training.training_runs set status = 'failed', error = ?, finished_at = ? "
                "where run_id = ? and status in ('queued', 'running')",
                (error, utcnow(), run_id),
            )

    def succeed_run(
        self,
        run_id: int,
        worker: str,
        model_name: str,
        artifact_uri: str,
        artifact_sha256: str,
        metrics: list[Metric],
        *,
        label_issues: Sequence[LabelIssue] = (),
    ) -> ModelVersion:
        """Register the model version, write the metrics and the label issues and
        mark the run `succeeded`, all in one transaction: either everything is
        visible or nothing (a run has label issues exactly when it succeeded).

        Refuses (and writes nothing) when the run is no longer this worker's
        running run, e.g. because a reaper declared it lost.
        """
        check_model_name(model_name)
        now = utcnow()
        with self.database.session() as session:
            # Serialise version allocation per model name across concurrent trainers.
            session.serialize_on(model_name)
            owned = session.fetchone(
                "update training.training_runs set status = 'succeeded', finished_at = ?, artifact_uri = ?, "
                "error = null where run_id = ? and status = 'running' and worker = ? returning run_id",
                (now, artifact_uri, run_id, worker),
            )
            if owned is None:
                current = session.fetchone(
                    "select status, error from training.training_runs where run_id = ?", (run_id,)
                )
                raise RunStateError(
                    f"training run {run_id} was {current[0] if current else 'removed'} before it could be "
                    f"registered{': ' + current[1] if current and current[1] else ''}"
                )
            version = int(
                session.scalar(
                    "select coalesce(max(version), 0) + 1 from training.model_versions where model_name = ?",
                    (model_name,),
                )
            )
            model_version_id = int(
                session.scalar(
                    "insert into training.model_versions "
                    "(model_name, version, run_id, artifact_uri, artifact_sha256, created_at) "
                    "values (?, ?, ?, ?, ?, ?) returning model_version_id",
                    (model_name, version, run_id, artifact_uri, artifact_sha256, now),
                )
            )
            _insert_rows(
                session,
                "training.metrics",
                "run_id, model_version_id, split, name, label, value",
                [(run_id, model_version_id, m.split, m.name, m.label, m.value) for m in metrics],
            )
            _insert_rows(
                session,
                "training.label_issues",
                f"run_id, {LABEL_ISSUE_COLUMNS}",
                [
                    (
                        run_id,
                        issue.rank,
                        issue.annotation_id,
                        issue.document_id,
                        issue.split,
                        issue.label,
                        issue.suggested_label,
                        issue.label_probability,
                        issue.suggested_probability,
                    )
                    for issue in label_issues
                ],
            )
        return ModelVersion(model_version_id, model_name, version, run_id, artifact_uri, artifact_sha256, now)

    # -- reads --------------------------------------------------------------

    def get_run(self, run_id: int) -> TrainingRun:
        with self.database.session() as session:
            row = session.fetchone(f"select {RUN_COLUMNS} from training.training_runs where run_id = ?", (run_id,))
        if row is None:
            raise NotFound(f"training run {run_id} does not exist")
        return run_from_row(row)

    def list_runs(self, limit: int = 20) -> list[TrainingRun]:
        with self.database.session() as session:
            rows = session.fetchall(
                f"select {RUN_COLUMNS} from training.training_runs order by run_id desc limit ?", (limit,)
            )
        return [run_from_row(row) for row in rows]

    def find_snapshot(self, fingerprint_prefix: str, succeeded_only: bool = False) -> TrainingRun:
        """The latest run (``succeeded_only``: the latest succeeded run) that recorded a
        snapshot of the dataset whose fingerprint starts with ``fingerprint_prefix``;
        refuses an ambiguous prefix."""
        prefix = fingerprint_prefix.strip().lower()
        status = " and status = 'succeeded'" if succeeded_only else ""
        with self.database.session() as session:
            rows = session.fetchall(
                f"select {RUN_COLUMNS} from training.training_runs where snapshot_uri is not null "
                f"and substr(dataset_fingerprint, 1, ?) = ?{status} order by run_id desc",
                (len(prefix), prefix),
            )
        if not rows:
            raise NotFound(f"no run recorded a snapshot of a dataset with fingerprint {prefix}…")
        runs = [run_from_row(row) for row in rows]
        fingerprints = {run.dataset_fingerprint for run in runs}
        if len(fingerprints) > 1:
            raise NotFound(
                f"fingerprint prefix {prefix} is ambiguous: it matches {len(fingerprints)} datasets; give more digits"
            )
        return runs[0]

    def referenced_artifacts(self) -> set[str]:
        """Every artifact and snapshot URI a row points at (for garbage collection)."""
        with self.database.session() as session:
            rows = session.fetchall(
                "select artifact_uri from training.training_runs where artifact_uri is not null "
                "union select snapshot_uri from training.training_runs where snapshot_uri is not null "
                "union select artifact_uri from training.model_versions"
            )
        return {row[0] for row in rows}

    def active_run_ids(self) -> set[int]:
        """Runs still queued or running (their artifacts may be half-written)."""
        with self.database.session() as session:
            rows = session.fetchall("select run_id from training.training_runs where status in ('queued', 'running')")
        return {int(row[0]) for row in rows}

    def page_runs(self, limit: int, offset: int = 0, status: str | None = None, model_name: str | None = None) -> Page:
        """Runs newest first, optionally only those of one status and/or model."""
        where, params = _filters(status=status, model_name=model_name)
        with self.database.session() as session:
            total = int(session.scalar(f"select count(*) from training.training_runs{where}", params))
            rows = session.fetchall(
                f"select {RUN_COLUMNS} from training.training_runs{where} order by run_id desc limit ? offset ?",
                (*params, limit, offset),
            )
        return Page([run_from_row(row) for row in rows], total, limit, offset)

    def page_model_versions(self, limit: int, offset: int = 0, model_name: str | None = None) -> Page:
        """Model versions newest first, optionally of one model."""
        where, params = _filters(model_name=model_name)
        with self.database.session() as session:
            total = int(session.scalar(f"select count(*) from training.model_versions{where}", params))
            rows = session.fetchall(
                f"select {VERSION_COLUMNS} from training.model_versions{where} "
                "order by model_version_id desc limit ? offset ?",
                (*params, limit, offset),
            )
        return Page([version_from_row(row) for row in rows], total, limit, offset)

    def model_versions_of_runs(self, run_ids: list[int]) -> dict[int, ModelVersion]:
        if not run_ids:
            return {}
        marks = ", ".join("?" for _ in run_ids)
        with self.database.session() as session:
            rows = session.fetchall(
                f"select {VERSION_COLUMNS} from training.model_versions where run_id in ({marks})", run_ids
            )
        return {version.run_id: version for version in (version_from_row(row) for row in rows)}

    def get_model_version_by_id(self, model_version_id: int) -> ModelVersion:
        with self.database.session() as session:
            row = session.fetchone(
                f"select {VERSION_COLUMNS} from training.model_versions where model_version_id = ?",
                (model_version_id,),
            )
        if row is None:
            raise NotFound(f"model version {model_version_id} does not exist")
        return version_from_row(row)

    # -- audit log ----------------------------------------------------------

    def record_audit(self, entry: AuditEntry) -> int:
        if entry.outcome not in AUDIT_OUTCOMES:
            raise ValueError(f"unknown audit outcome {entry.outcome!r}")
        with self.database.session() as session:
            return int(
                session.scalar(
                    "insert into training.audit_log (occurred_at, finished_at, token_name, method, route, object_id, "
                    "details, status_code, bytes_sent, sha256, outcome, error, token_state, request_id) "
                    "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) returning audit_id",
                    (
                        entry.occurred_at,
                        entry.finished_at,
                        entry.token_name,
                        entry.method,
                        entry.route,
                        entry.object_id,
                        json.dumps(entry.details, sort_keys=True),
                        entry.status_code,
                        entry.bytes_sent,
                        entry.sha256,
                        entry.outcome,
                        entry.error,
                        entry.token_state,
                        entry.request_id,
                    ),
                )
            )

    def page_audit_log(self, limit: int, offset: int = 0) -> Page:
        with self.database.session() as session:
            total = int(session.scalar("select count(*) from training.audit_log"))
            rows = session.fetchall(
                f"select {AUDIT_COLUMNS} from training.audit_log order by audit_id desc limit ? offset ?",
                (limit, offset),
            )
        return Page([audit_entry_from_row(row) for row in rows], total, limit, offset)

    def get_model_version_by_run(self, run_id: int) -> ModelVersion | None:
        with self.database.session() as session:
            row = session.fetchone(f"select {VERSION_COLUMNS} from training.model_versions where run_id = ?", (run_id,))
        return None if row is None else version_from_row(row)

    def latest_run_id(self) -> int:
        with self.database.session() as session:
            run_id = session.scalar("select max(run_id) from training.training_runs")
        if run_id is None:
            raise NotFound("no training run has been recorded yet")
        return int(run_id)

    def run_metrics(self, run_id: int) -> list[Metric]:
        with self.database.session() as session:
            rows = session.fetchall(
                f"select {METRIC_COLUMNS} from training.metrics where run_id = ? "
                "order by split, label is not null, label, name",
                (run_id,),
            )
        return [metric_from_row(row) for row in rows]

    def run_label_issues(self, run_id: int, limit: int | None = None) -> list[LabelIssue]:
        """A run's label issues, most doubtful first (all of them, or the first ``limit``)."""
        sql = f"select {LABEL_ISSUE_COLUMNS} from training.label_issues where run_id = ? order by rank"
        params: tuple = (run_id,)
        if limit is not None:
            sql += " limit ?"
            params += (limit,)
        with self.database.session() as session:
            rows = session.fetchall(sql, params)
        return [label_issue_from_row(row) for row in rows]

    def get_model_version(self, model_name: str, version: int | None) -> ModelVersion:
        """The given version of a model, or its latest when ``version`` is None."""
        with self.database.session() as session:
            if version is None:
                row = session.fetchone(
                    f"select {VERSION_COLUMNS} from training.model_versions where model_name = ? "
                    "order by version desc limit 1",
                    (model_name,),
                )
            else:
                row = session.fetchone(
                    f"select {VERSION_COLUMNS} from training.model_versions where model_name = ? and version = ?",
                    (model_name, version),
                )
        if row is None:
            which = "versions" if version is None else f"version {version}"
            raise NotFound(f"model {model_name!r} has no {which} (train one with `python -m trainer train`)")
        return version_from_row(row)
