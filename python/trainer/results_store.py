"""The results tables (CONTRACT §5): the only module that writes schema `training`.

Every write is one short session (transaction). Versions of the schema are
applied as numbered migrations recorded in ``training.schema_migrations``, so
``init-db`` is idempotent and later releases add columns without rewriting.

Constraint names are spelled the way DuckDB names constraints itself
(``<table>_<columns>_pkey``, ``..._fkey``, ``..._check``), so both engines show
the same names.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from trainer.db import Database, Session
from trainer.arguments import check_model_name
from trainer.errors import ConfigurationError, NotFound, TrainerError

RUN_STATUSES = ("queued", "running", "succeeded", "failed")
# MODEL_NAME_PATTERN (trainer.arguments) for PostgreSQL: `\Z`, not `$`, ends the text.
_MODEL_NAME_SQL = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\\Z"
# … and for DuckDB's regexp_full_match, which matches the whole text (RE2).
_MODEL_NAME_DUCKDB = "[A-Za-z0-9][A-Za-z0-9._-]{0,99}"

# complete; disconnected (the client left first); failed (cut off by an error, or a
# 5xx); refused (answered with a 4xx before any data). Migration 6 added `refused`.
AUDIT_OUTCOMES = ("complete", "disconnected", "failed", "refused")
_AUDIT_OUTCOMES_SQL = "(" + ", ".join(f"'{outcome}'" for outcome in AUDIT_OUTCOMES) + ")"
# training.audit_log as of migration 6, for DuckDB's rebuild (same names as migration 4's).
_AUDIT_LOG_ALL_COLUMNS = (
    "audit_id, occurred_at, finished_at, token_name, method, route, object_id, details, status_code, "
    "bytes_sent, sha256, outcome, error, token_state, request_id"
)
_AUDIT_LOG_DUCKDB_COLUMNS = f"""
    audit_id bigint not null default nextval('training.audit_log_audit_id_seq'),
    occurred_at timestamp not null,
    finished_at timestamp not null,
    token_name text not null,
    method text not null,
    route text not null,
    object_id text,
    details text,
    status_code integer not null,
    bytes_sent bigint not null,
    sha256 text,
    outcome text not null,
    error text,
    token_state text,
    request_id text,
    constraint audit_log_audit_id_pkey primary key (audit_id),
    constraint audit_log_outcome_check check (outcome in {_AUDIT_OUTCOMES_SQL}),
    constraint audit_log_bytes_sent_check check (bytes_sent >= 0)
"""

# Shared by the migration that made them and migration 7, which remakes them on DuckDB.
_METRICS_TABLE = """
            create table if not exists training.metrics (
                metric_id bigint not null default nextval('training.metrics_metric_id_seq'),
                run_id bigint not null,
                model_version_id bigint,
                split text not null,
                name text not null,
                label text,
                value double precision,
                constraint metrics_metric_id_pkey primary key (metric_id),
                constraint metrics_run_id_run_id_fkey
                    foreign key (run_id) references training.training_runs (run_id),
                constraint metrics_model_version_id_model_version_id_fkey
                    foreign key (model_version_id) references training.model_versions (model_version_id),
                constraint metrics_split_check check (split in ('train', 'eval'))
            )"""
# A figure over all labels has a null label; coalesce makes it unique too.
_METRICS_UNIQUE_INDEX = """
            create unique index if not exists metrics_run_id_split_name_label_key
                on training.metrics (run_id, split, name, coalesce(label, ''))"""
# Written with the run's metrics when it succeeds (trainer/label_issues.py finds
# them); one row per example to re-check, rank 1 the most doubtful. Ids and labels
# are copied, not referenced: the app's rows change later, and the issue must still
# say what the run saw.
_LABEL_ISSUES_TABLE = """
            create table if not exists training.label_issues (
                run_id bigint not null,
                rank integer not null,
                annotation_id text not null,
                document_id text,
                split text not null,
                label text not null,
                suggested_label text not null,
                label_probability double precision not null,
                suggested_probability double precision not null,
                constraint label_issues_run_id_rank_pkey primary key (run_id, rank),
                constraint label_issues_run_id_run_id_fkey
                    foreign key (run_id) references training.training_runs (run_id),
                constraint label_issues_split_check check (split in ('train', 'eval')),
                constraint label_issues_rank_check check (rank >= 1),
                constraint label_issues_suggested_label_label_check check (suggested_label <> label),
                constraint label_issues_label_probability_check check (label_probability between 0 and 1),
                constraint label_issues_suggested_probability_check check (suggested_probability between 0 and 1)
            )"""

# A statement is SQL for every engine, or a {dialect: SQL} mapping for some.
# A callable gets the session and returns the statements to run.
_Statement = str | dict[str, "str | Callable[[Session], list[str]]"]
MIGRATIONS: list[tuple[int, str, list[_Statement]]] = [
    (
        1,
        "results tables: training_runs, model_versions, metrics",
        [
            "create sequence if not exists training.training_runs_run_id_seq",
            """
            create table if not exists training.training_runs (
                run_id bigint not null default nextval('training.training_runs_run_id_seq'),
                model_name text not null,
                status text not null,
                created_at timestamp not null,
                started_at timestamp,
                finished_at timestamp,
                error text,
                params text not null,
                dataset_fingerprint text,
                train_examples integer,
                eval_examples integer,
                artifact_uri text,
                constraint training_runs_run_id_pkey primary key (run_id),
                constraint training_runs_status_check
                    check (status in ('queued', 'running', 'succeeded', 'failed')),
                constraint training_runs_finished_at_check
                    check (status not in ('succeeded', 'failed') or finished_at is not null),
                constraint training_runs_artifact_uri_check
                    check (status <> 'succeeded' or artifact_uri is not null)
            )""",
            "create sequence if not exists training.model_versions_model_version_id_seq",
            """
            create table if not exists training.model_versions (
                model_version_id bigint not null
                    default nextval('training.model_versions_model_version_id_seq'),
                model_name text not null,
                version integer not null,
                run_id bigint not null,
                artifact_uri text not null,
                artifact_sha256 text not null,
                created_at timestamp not null,
                constraint model_versions_model_version_id_pkey primary key (model_version_id),
                constraint model_versions_model_name_version_key unique (model_name, version),
                constraint model_versions_run_id_key unique (run_id),
                constraint model_versions_run_id_run_id_fkey
                    foreign key (run_id) references training.training_runs (run_id),
                constraint model_versions_version_check check (version >= 1)
            )""",
            "create sequence if not exists training.metrics_metric_id_seq",
            _METRICS_TABLE,
            _METRICS_UNIQUE_INDEX,
        ],
    ),
    (
        2,
        "queue: heartbeat and worker of a running run",
        [
            "alter table training.training_runs add column if not exists heartbeat_at timestamp",
            "alter table training.training_runs add column if not exists worker text",
            # Workers look for the oldest queued run and reapers for stale running ones.
            {
                "postgres": "create index if not exists training_runs_status_created_at_idx "
                "on training.training_runs (status, created_at, run_id)"
            },
        ],
    ),
    (
        3,
        "lineage: dataset snapshot, summary and point in time of a run; pinned split overrides",
        [
            "alter table training.training_runs add column if not exists snapshot_uri text",
            "alter table training.training_runs add column if not exists snapshot_sha256 text",
            # JSON text: [{split, label, examples, documents}, …] as in datasets.dataset_summary.
            "alter table training.training_runs add column if not exists dataset_summary text",
            "alter table training.training_runs add column if not exists dataset_as_of timestamp",
            # Runs trained from one snapshot share a fingerprint: find them without a scan.
            "create index if not exists training_runs_dataset_fingerprint_idx "
            "on training.training_runs (dataset_fingerprint)",
            # Read by dbt (models/staging/stg_training__split_overrides.sql), kept by people.
            """
            create table if not exists training.split_overrides (
                document_id text not null,
                split text not null,
                note text,
                constraint split_overrides_document_id_pkey primary key (document_id),
                constraint split_overrides_split_check check (split in ('train', 'eval'))
            )""",
        ],
    ),
    (
        4,
        "audit log: who exported or downloaded what, and who queued which run",
        [
            "create sequence if not exists training.audit_log_audit_id_seq",
            # One row per API request that hands out data or starts work, written when
            # the response ends: complete, cut off by the client, or failed midway.
            """
            create table if not exists training.audit_log (
                audit_id bigint not null default nextval('training.audit_log_audit_id_seq'),
                occurred_at timestamp not null,
                finished_at timestamp not null,
                token_name text not null,
                method text not null,
                route text not null,
                object_id text,
                details text,
                status_code integer not null,
                bytes_sent bigint not null,
                sha256 text,
                outcome text not null,
                error text,
                constraint audit_log_audit_id_pkey primary key (audit_id),
                constraint audit_log_outcome_check check (outcome in ('complete', 'disconnected', 'failed')),
                constraint audit_log_bytes_sent_check check (bytes_sent >= 0)
            )""",
            "create index if not exists audit_log_occurred_at_idx on training.audit_log (occurred_at)",
        ],
    ),
    (
        5,
        "label issues: accepted labels a run's model finds most unlikely",
        [
            _LABEL_ISSUES_TABLE,
        ],
    ),
    (
        6,
        "audit log: the request id, whether a token was presented, and a refused outcome; model names checked",
        [
            # Every attempt is audited now, refused ones too: `token_state` says whether
            # the request carried a valid token, none, or an unknown one (token_name is
            # then "(none)" or "(unknown)"), and `request_id` ties a row to the server's log.
            "alter table training.audit_log add column if not exists token_state text",
            "alter table training.audit_log add column if not exists request_id text",
            # A refused attempt (4xx) gets its own outcome, apart from one that failed.
            # PostgreSQL widens the CHECK in place (existing rows all pass it).
            {"postgres": "alter table training.audit_log drop constraint if exists audit_log_outcome_check"},
            {
                "postgres": "alter table training.audit_log add constraint audit_log_outcome_check "
                f"check (outcome in {_AUDIT_OUTCOMES_SQL})"
            },
            # DuckDB cannot alter a CHECK: the table is rebuilt (nothing references it).
            # Ids are copied; the new table takes its defaults from the same sequence, so
            # new rows continue after the old ones. The index goes with the old table and
            # is made again after the rename (DuckDB renames no table that has one).
            {"duckdb": f"create table training.audit_log_rebuilt ({_AUDIT_LOG_DUCKDB_COLUMNS})"},
            {
                "duckdb": f"insert into training.audit_log_rebuilt ({_AUDIT_LOG_ALL_COLUMNS}) "
                f"select {_AUDIT_LOG_ALL_COLUMNS} from training.audit_log"
            },
            {"duckdb": "drop table training.audit_log"},
            {"duckdb": "alter table training.audit_log_rebuilt rename to audit_log"},
            {"duckdb": "create index if not exists audit_log_occurred_at_idx on training.audit_log (occurred_at)"},
            # DuckDB cannot add a CHECK to an existing table: migration 7 rebuilds them there.
            # NOT VALID: rows written before the rule stay readable; new rows must follow it.
            {
                "postgres": "alter table training.model_versions add constraint model_versions_model_name_check "
                f"check (model_name ~ '{_MODEL_NAME_SQL}') not valid"
            },
            {
                "postgres": "alter table training.training_runs add constraint training_runs_model_name_check "
                f"check (model_name ~ '{_MODEL_NAME_SQL}') not valid"
            },
        ],
    ),
    (
        7,
        "model names checked by the table on DuckDB too",
        [{"duckdb": lambda session: _rebuild_with_model_name_checks(session)}],
    ),
]
# Rows per insert statement for bulk writes: one round trip per chunk on PostgreSQL
# (the session has no executemany), well under its 65,535 bind parameters.
_INSERT_CHUNK_ROWS = 500
# An advisory-lock key for schema changes on PostgreSQL (any constant shared by all trainers).
_MIGRATION_LOCK_KEY = 7_316_250_921


def utcnow() -> datetime:
    """The current UTC time as a naive timestamp (the contract's columns are UTC)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class Metric:
    split: str
    name: str
    label: str | None
    value: float | None


class RunStateError(TrainerError):
    """A run is not in the state an operation needs (e.g. not queued, or reaped)."""


@dataclass(frozen=True)
class TrainingRun:
    run_id: int
    model_name: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    params: dict[str, Any]
    dataset_fingerprint: str | None
    train_examples: int | None
    eval_examples: int | None
    artifact_uri: str | None
    heartbeat_at: datetime | None
    worker: str | None
    snapshot_uri: str | None
    snapshot_sha256: str | None
    dataset_summary: list[dict[str, Any]] | None
    dataset_as_of: datetime | None


@dataclass(frozen=True)
class LabelIssue:
    """A row of ``training.label_issues``: an example of a run whose accepted label
    the run's model finds unlikely, and the label it confidently suggests instead."""

    rank: int
    annotation_id: str
    document_id: str | None
    split: str
    label: str
    suggested_label: str
    label_probability: float
    suggested_probability: float


@dataclass(frozen=True)
class ModelVersion:
    model_version_id: int
    model_name: str
    version: int
    run_id: int
    artifact_uri: str
    artifact_sha256: str
    created_at: datetime


_RUN_COLUMNS = (
    "run_id, model_name, status, created_at, started_at, finished_at, error, params, "
    "dataset_fingerprint, train_examples, eval_examples, artifact_uri, heartbeat_at, worker, "
    "snapshot_uri, snapshot_sha256, dataset_summary, dataset_as_of"
)
_VERSION_COLUMNS = "model_version_id, model_name, version, run_id, artifact_uri, artifact_sha256, created_at"
_LABEL_ISSUE_COLUMNS = (
    "rank, annotation_id, document_id, split, label, suggested_label, label_probability, suggested_probability"
)
_AUDIT_COLUMNS = _AUDIT_LOG_ALL_COLUMNS


@dataclass(frozen=True)
class AuditEntry:
    """One audited request: who (the token's name, never the token) got what, how much of it."""

    audit_id: int | None
    occurred_at: datetime
    finished_at: datetime
    token_name: str
    method: str
    route: str
    object_id: str | None
    details: dict[str, Any]
    status_code: int
    bytes_sent: int
    sha256: str | None
    outcome: str
    error: str | None
    token_state: str | None = None  # valid, none or unknown; null on rows from before migration 6
    request_id: str | None = None


@dataclass(frozen=True)
class Page:
    """One page of a listing, newest first, and how many rows match in all."""

    items: list
    total: int
    limit: int
    offset: int


# The results tables as of migration 7 on DuckDB, in the order they reference each
# other, with the columns later migrations added (heartbeat_at … dataset_as_of).
_RUN_TABLE_COLUMNS = (
    "run_id, model_name, status, created_at, started_at, finished_at, error, params, dataset_fingerprint, "
    "train_examples, eval_examples, artifact_uri, heartbeat_at, worker, snapshot_uri, snapshot_sha256, "
    "dataset_summary, dataset_as_of"
)


def _training_runs_table(exempt: str) -> str:
    return f"""
        create table training.training_runs (
            run_id bigint not null default nextval('training.training_runs_run_id_seq'),
            model_name text not null,
            status text not null,
            created_at timestamp not null,
            started_at timestamp,
            finished_at timestamp,
            error text,
            params text not null,
            dataset_fingerprint text,
            train_examples integer,
            eval_examples integer,
            artifact_uri text,
            heartbeat_at timestamp,
            worker text,
            snapshot_uri text,
            snapshot_sha256 text,
            dataset_summary text,
            dataset_as_of timestamp,
            constraint training_runs_run_id_pkey primary key (run_id),
            constraint training_runs_status_check
                check (status in ('queued', 'running', 'succeeded', 'failed')),
            constraint training_runs_finished_at_check
                check (status not in ('succeeded', 'failed') or finished_at is not null),
            constraint training_runs_artifact_uri_check
                check (status <> 'succeeded' or artifact_uri is not null),
            constraint training_runs_model_name_check
                check (regexp_full_match(model_name, '{_MODEL_NAME_DUCKDB}'){exempt})
        )"""


def _model_versions_table(exempt: str) -> str:
    return f"""
        create table training.model_versions (
            model_version_id bigint not null
                default nextval('training.model_versions_model_version_id_seq'),
            model_name text not null,
            version integer not null,
            run_id bigint not null,
            artifact_uri text not null,
            artifact_sha256 text not null,
            created_at timestamp not null,
            constraint model_versions_model_version_id_pkey primary key (model_version_id),
            constraint model_versions_model_name_version_key unique (model_name, version),
            constraint model_versions_run_id_key unique (run_id),
            constraint model_versions_run_id_run_id_fkey
                foreign key (run_id) references training.training_runs (run_id),
            constraint model_versions_version_check check (version >= 1),
            constraint model_versions_model_name_check
                check (regexp_full_match(model_name, '{_MODEL_NAME_DUCKDB}'){exempt})
        )"""


def _rebuild_with_model_name_checks(session: Session) -> list[str]:
    """Migration 7 on DuckDB, which can neither add a CHECK to a table nor drop one
    that others reference: copy the four results tables aside, drop them (referencing
    ones first), make them again with the CHECK, copy the rows back with their ids
    (the sequences stay, so new ids follow the old ones), and make the indexes again.

    Rows written before the rule keep their names and stay readable, as PostgreSQL's
    NOT VALID keeps them: the CHECK exempts exactly their ids."""

    def exemption(table: str, key: str) -> str:
        ids = [row[0] for row in session.fetchall(
            f"select {key} from training.{table} "
            f"where not regexp_full_match(model_name, '{_MODEL_NAME_DUCKDB}') order by {key}"
        )]
        return f" or {key} in ({', '.join(str(int(i)) for i in ids)})" if ids else ""

    tables = [
        ("training_runs", _training_runs_table(exemption("training_runs", "run_id")), _RUN_TABLE_COLUMNS),
        ("model_versions", _model_versions_table(exemption("model_versions", "model_version_id")),
         _VERSION_COLUMNS),
        ("metrics", _METRICS_TABLE, "metric_id, run_id, model_version_id, split, name, label, value"),
        ("label_issues", _LABEL_ISSUES_TABLE, "run_id, " + _LABEL_ISSUE_COLUMNS),
    ]
    statements = [f"create temp table {name}_before_7 as select * from training.{name}" for name, _, _ in tables]
    statements += [f"drop table training.{name}" for name, _, _ in reversed(tables)]
    for name, create, columns in tables:
        statements += [
            create,
            f"insert into training.{name} ({columns}) select {columns} from {name}_before_7",
            f"drop table {name}_before_7",
        ]
    return statements + [
        _METRICS_UNIQUE_INDEX,
        "create index if not exists training_runs_dataset_fingerprint_idx on training.training_runs (dataset_fingerprint)",
    ]


def _refuse_newer_schema(applied: set[int]) -> None:
    known = {number for number, _, _ in MIGRATIONS}
    if applied - known:
        raise ConfigurationError(
            f"the results schema has migration(s) {sorted(applied - known)} that this trainer does not know: "
            "upgrade training-db-pipeline"
        )


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


def _run(row: tuple) -> TrainingRun:
    values = list(row)
    values[7] = json.loads(values[7])
    values[16] = None if values[16] is None else json.loads(values[16])
    return TrainingRun(*values)


def _audit(row: tuple) -> AuditEntry:
    values = list(row)
    values[7] = json.loads(values[7]) if values[7] else {}
    return AuditEntry(*values)


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

    # -- schema -------------------------------------------------------------

    def migrate(self, session: Session) -> list[int]:
        """Apply the migrations not applied yet, in order; return their numbers."""
        if session.dialect == "postgres":
            # Two init-db at once: the second waits, then finds nothing to do.
            session.execute("select pg_advisory_xact_lock(?)", (_MIGRATION_LOCK_KEY,))
        session.ensure_schema("training")
        session.execute(
            """create table if not exists training.schema_migrations (
                version integer not null,
                name text not null,
                applied_at timestamp not null,
                constraint schema_migrations_version_pkey primary key (version)
            )"""
        )
        applied = {row[0] for row in session.fetchall("select version from training.schema_migrations")}
        _refuse_newer_schema(applied)
        new = []
        for number, name, statements in MIGRATIONS:
            if number in applied:
                continue
            for statement in statements:
                if isinstance(statement, dict):
                    statement = statement.get(session.dialect)
                    if statement is None:
                        continue
                # A callable decides its SQL from what the database holds (migration 7).
                for sql in statement(session) if callable(statement) else [statement]:
                    session.execute(sql)
            session.execute(
                "insert into training.schema_migrations (version, name, applied_at) values (?, ?, ?)",
                (number, name, utcnow()),
            )
            new.append(number)
        return new

    def is_ready(self, session: Session) -> bool:
        if not session.relation_exists("training", "schema_migrations"):
            return False
        applied = {row[0] for row in session.fetchall("select version from training.schema_migrations")}
        _refuse_newer_schema(applied)
        return applied >= {number for number, _, _ in MIGRATIONS}

    # -- runs ---------------------------------------------------------------

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
        skip_locked = " for update skip locked" if self.database.dialect == "postgres" else ""
        now = utcnow()
        with self.database.session() as session:
            row = session.fetchone(
                "update training.training_runs set status = 'running', started_at = ?, heartbeat_at = ?, "
                "worker = ? where run_id = (select run_id from training.training_runs where status = 'queued' "
                f"order by created_at, run_id limit 1{skip_locked}) and status = 'queued' returning run_id",
                (now, now, worker),
            )
        return None if row is None else self.get_run(int(row[0]))

    def add_params(self, run_id: int, extra: dict[str, Any]) -> None:
        """Merge keys into a run's params (what is only known when it starts)."""
        lock = " for update" if self.database.dialect == "postgres" else ""
        with self.database.session() as session:
            current = json.loads(
                session.scalar(f"select params from training.training_runs where run_id = ?{lock}", (run_id,))
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
        skip_locked = " for update skip locked" if self.database.dialect == "postgres" else ""
        with self.database.session() as session:
            stale = session.fetchall(
                "select run_id, worker, coalesce(heartbeat_at, started_at, created_at) from training.training_runs "
                f"where status = 'running' and coalesce(heartbeat_at, started_at, created_at) < ?{skip_locked}",
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
            if session.dialect == "postgres":
                # Serialise version allocation per model name across concurrent trainers.
                session.execute("select pg_advisory_xact_lock(hashtextextended(?, 0))", (model_name,))
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
            for metric in metrics:
                session.execute(
                    "insert into training.metrics (run_id, model_version_id, split, name, label, value) "
                    "values (?, ?, ?, ?, ?, ?)",
                    (run_id, model_version_id, metric.split, metric.name, metric.label, metric.value),
                )
            _insert_rows(
                session,
                "training.label_issues",
                f"run_id, {_LABEL_ISSUE_COLUMNS}",
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
            row = session.fetchone(f"select {_RUN_COLUMNS} from training.training_runs where run_id = ?", (run_id,))
        if row is None:
            raise NotFound(f"training run {run_id} does not exist")
        return _run(row)

    def list_runs(self, limit: int = 20) -> list[TrainingRun]:
        with self.database.session() as session:
            rows = session.fetchall(
                f"select {_RUN_COLUMNS} from training.training_runs order by run_id desc limit ?", (limit,)
            )
        return [_run(row) for row in rows]

    def find_snapshot(self, fingerprint_prefix: str) -> TrainingRun:
        """The latest run that recorded a snapshot of the dataset whose fingerprint
        starts with ``fingerprint_prefix``; refuses an ambiguous prefix."""
        prefix = fingerprint_prefix.strip().lower()
        with self.database.session() as session:
            rows = session.fetchall(
                f"select {_RUN_COLUMNS} from training.training_runs where snapshot_uri is not null "
                "and substr(dataset_fingerprint, 1, ?) = ? order by run_id desc",
                (len(prefix), prefix),
            )
        if not rows:
            raise NotFound(f"no run recorded a snapshot of a dataset with fingerprint {prefix}…")
        fingerprints = {row[8] for row in rows}
        if len(fingerprints) > 1:
            raise NotFound(
                f"fingerprint prefix {prefix} is ambiguous: it matches {len(fingerprints)} datasets; give more digits"
            )
        return _run(rows[0])

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
                f"select {_RUN_COLUMNS} from training.training_runs{where} order by run_id desc limit ? offset ?",
                (*params, limit, offset),
            )
        return Page([_run(row) for row in rows], total, limit, offset)

    def page_model_versions(self, limit: int, offset: int = 0, model_name: str | None = None) -> Page:
        """Model versions newest first, optionally of one model."""
        where, params = _filters(model_name=model_name)
        with self.database.session() as session:
            total = int(session.scalar(f"select count(*) from training.model_versions{where}", params))
            rows = session.fetchall(
                f"select {_VERSION_COLUMNS} from training.model_versions{where} "
                "order by model_version_id desc limit ? offset ?",
                (*params, limit, offset),
            )
        return Page([ModelVersion(*row) for row in rows], total, limit, offset)

    def model_versions_of_runs(self, run_ids: list[int]) -> dict[int, ModelVersion]:
        if not run_ids:
            return {}
        marks = ", ".join("?" for _ in run_ids)
        with self.database.session() as session:
            rows = session.fetchall(
                f"select {_VERSION_COLUMNS} from training.model_versions where run_id in ({marks})", run_ids
            )
        return {version.run_id: version for version in (ModelVersion(*row) for row in rows)}

    def get_model_version_by_id(self, model_version_id: int) -> ModelVersion:
        with self.database.session() as session:
            row = session.fetchone(
                f"select {_VERSION_COLUMNS} from training.model_versions where model_version_id = ?",
                (model_version_id,),
            )
        if row is None:
            raise NotFound(f"model version {model_version_id} does not exist")
        return ModelVersion(*row)

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
                f"select {_AUDIT_COLUMNS} from training.audit_log order by audit_id desc limit ? offset ?",
                (limit, offset),
            )
        return Page([_audit(row) for row in rows], total, limit, offset)

    def get_model_version_by_run(self, run_id: int) -> ModelVersion | None:
        with self.database.session() as session:
            row = session.fetchone(f"select {_VERSION_COLUMNS} from training.model_versions where run_id = ?", (run_id,))
        return None if row is None else ModelVersion(*row)

    def latest_run_id(self) -> int:
        with self.database.session() as session:
            run_id = session.scalar("select max(run_id) from training.training_runs")
        if run_id is None:
            raise NotFound("no training run has been recorded yet")
        return int(run_id)

    def run_metrics(self, run_id: int) -> list[Metric]:
        with self.database.session() as session:
            rows = session.fetchall(
                "select split, name, label, value from training.metrics where run_id = ? "
                "order by split, label is not null, label, name",
                (run_id,),
            )
        return [Metric(*row) for row in rows]

    def run_label_issues(self, run_id: int, limit: int | None = None) -> list[LabelIssue]:
        """A run's label issues, most doubtful first (all of them, or the first ``limit``)."""
        sql = f"select {_LABEL_ISSUE_COLUMNS} from training.label_issues where run_id = ? order by rank"
        params: tuple = (run_id,)
        if limit is not None:
            sql += " limit ?"
            params += (limit,)
        with self.database.session() as session:
            rows = session.fetchall(sql, params)
        return [LabelIssue(*row) for row in rows]

    def get_model_version(self, model_name: str, version: int | None) -> ModelVersion:
        """The given version of a model, or its latest when ``version`` is None."""
        with self.database.session() as session:
            if version is None:
                row = session.fetchone(
                    f"select {_VERSION_COLUMNS} from training.model_versions where model_name = ? "
                    "order by version desc limit 1",
                    (model_name,),
                )
            else:
                row = session.fetchone(
                    f"select {_VERSION_COLUMNS} from training.model_versions where model_name = ? and version = ?",
                    (model_name, version),
                )
        if row is None:
            which = "versions" if version is None else f"version {version}"
            raise NotFound(f"model {model_name!r} has no {which} (train one with `python -m trainer train`)")
        return ModelVersion(*row)
