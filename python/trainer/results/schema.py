"""The results schema: its numbered migrations, and applying them.

Versions of the schema are applied as numbered migrations recorded in
``training.schema_migrations``, so ``init-db`` is idempotent and later releases add
columns without rewriting; a shipped migration never changes. Constraint names are
spelled the way DuckDB names constraints itself (``<table>_<columns>_pkey``,
``..._fkey``, ``..._check``), so both engines show the same names.
"""

from __future__ import annotations

from collections.abc import Callable

from trainer.core.db import Session
from trainer.core.errors import ConfigurationError
from trainer.results.records import AUDIT_COLUMNS, AUDIT_OUTCOMES, LABEL_ISSUE_COLUMNS, VERSION_COLUMNS, utcnow

# MODEL_NAME_PATTERN (trainer.model.arguments) for PostgreSQL: `\Z`, not `$`, ends the text.
_MODEL_NAME_SQL = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\\Z"
# … and for DuckDB's regexp_full_match, which matches the whole text (RE2).
_MODEL_NAME_DUCKDB = "[A-Za-z0-9][A-Za-z0-9._-]{0,99}"

_AUDIT_OUTCOMES_SQL = "(" + ", ".join(f"'{outcome}'" for outcome in AUDIT_OUTCOMES) + ")"
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
# Written with the run's metrics when it succeeds (trainer/model/label_issues.py finds
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
                "duckdb": f"insert into training.audit_log_rebuilt ({AUDIT_COLUMNS}) "
                f"select {AUDIT_COLUMNS} from training.audit_log"
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
    (
        8,
        "the review loop: proposals of model versions for the app's segments, and the queue of propose jobs",
        [
            # CONTRACT §7.3: one row per (model version, annotation), written by `propose`
            # and read by dbt (models/staging/stg_training__proposals.sql). The annotation
            # id is copied, not referenced: the app's rows are not the pipeline's.
            """
            create table if not exists training.proposals (
                model_version_id bigint not null,
                annotation_id text not null,
                actor text not null,
                label text not null,
                confidence double precision not null,
                margin double precision not null,
                created_at timestamp not null,
                constraint proposals_model_version_id_annotation_id_pkey
                    primary key (model_version_id, annotation_id),
                constraint proposals_model_version_id_model_version_id_fkey
                    foreign key (model_version_id) references training.model_versions (model_version_id),
                constraint proposals_confidence_check check (confidence >= 0 and confidence <= 1),
                constraint proposals_margin_check check (margin >= 0 and margin <= confidence)
            )""",
            # The review queue joins a segment to its proposals.
            "create index if not exists proposals_annotation_id_idx on training.proposals (annotation_id)",
            "create sequence if not exists training.proposal_jobs_job_id_seq",
            # A propose job queued through the API; `worker` runs it like a training run.
            """
            create table if not exists training.proposal_jobs (
                job_id bigint not null default nextval('training.proposal_jobs_job_id_seq'),
                model_version_id bigint not null,
                status text not null,
                created_at timestamp not null,
                started_at timestamp,
                finished_at timestamp,
                heartbeat_at timestamp,
                worker text,
                error text,
                params text not null,
                proposed integer,
                new_proposals integer,
                changed_proposals integer,
                constraint proposal_jobs_job_id_pkey primary key (job_id),
                constraint proposal_jobs_model_version_id_model_version_id_fkey
                    foreign key (model_version_id) references training.model_versions (model_version_id),
                constraint proposal_jobs_status_check
                    check (status in ('queued', 'running', 'succeeded', 'failed')),
                constraint proposal_jobs_finished_at_check
                    check (status not in ('succeeded', 'failed') or finished_at is not null)
            )""",
            {
                "postgres": "create index if not exists proposal_jobs_status_created_at_idx "
                "on training.proposal_jobs (status, created_at, job_id)"
            },
        ],
    ),
]
# An advisory-lock key for schema changes on PostgreSQL (any constant shared by all trainers).
_MIGRATION_LOCK_KEY = 7_316_250_921


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
         VERSION_COLUMNS),
        ("metrics", _METRICS_TABLE, "metric_id, run_id, model_version_id, split, name, label, value"),
        ("label_issues", _LABEL_ISSUES_TABLE, "run_id, " + LABEL_ISSUE_COLUMNS),
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


def migrate(session: Session) -> list[int]:
    """Apply the migrations not applied yet, in order; return their numbers."""
    # Two init-db at once: the second waits, then finds nothing to do.
    session.serialize_on(_MIGRATION_LOCK_KEY)
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


def is_ready(session: Session) -> bool:
    if not session.relation_exists("training", "schema_migrations"):
        return False
    applied = {row[0] for row in session.fetchall("select version from training.schema_migrations")}
    _refuse_newer_schema(applied)
    return applied >= {number for number, _, _ in MIGRATIONS}

# -- runs ---------------------------------------------------------------
