"""Where things live (CONTRACT §6). Every setting comes from an option or the
environment; nothing secret has a default."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trainer.core.errors import ConfigurationError

TARGETS = ("duckdb", "postgres")
# libpq's own variables (CONTRACT §6); unset ones keep libpq's defaults.
POSTGRES_VARIABLES = {"PGHOST": "host", "PGPORT": "port", "PGUSER": "user", "PGPASSWORD": "password", "PGDATABASE": "dbname"}
DEFAULT_TARGET = "duckdb"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# The name the DuckDB file is attached under, whatever the file is called (trainer.core.db).
DUCKDB_CATALOG = "warehouse"
# Catalogs every DuckDB connection of the trainer has: a schema named like one of
# them would make `schema.table` ambiguous.
DUCKDB_CATALOGS = (DUCKDB_CATALOG, "memory", "system", "temp")


@dataclass(frozen=True)
class EnvironmentSetting:
    """A setting read from the environment: the variables, and what they mean
    (with the default). ``--help`` lists these (:func:`environment_help`); a test
    checks that every variable the code reads is here."""

    names: tuple[str, ...]
    meaning: str


ENVIRONMENT = (
    EnvironmentSetting(("TRAINER_TARGET",), "duckdb (default) or postgres"),
    EnvironmentSetting(("TRAINER_DUCKDB_PATH",), "DuckDB file (default: warehouse.duckdb at the repo root)"),
    EnvironmentSetting(tuple(POSTGRES_VARIABLES), "the PostgreSQL connection (libpq's defaults)"),
    EnvironmentSetting(("TRAINER_APP_SCHEMA",), "schema of the app's tables (default: app)"),
    EnvironmentSetting(
        ("TRAINER_ARTIFACTS_URL",), "blob store: a path, file://, memory:// or s3:// (default: artifacts/ at the repo root)"
    ),
    EnvironmentSetting(
        ("TRAINER_HEARTBEAT_INTERVAL", "TRAINER_HEARTBEAT_TIMEOUT"),
        'seconds (15, 120): how often a running run beats, and when a silent one is reaped as "worker lost"',
    ),
    EnvironmentSetting(
        ("TRAINER_DUCKDB_LOCK_TIMEOUT",), "seconds to wait for another process to release the DuckDB file (60)"
    ),
    EnvironmentSetting(
        ("TRAINER_READ_BATCH_ROWS",), "rows per record batch when a run reads its examples (65536)"
    ),
    EnvironmentSetting(
        ("TRAINER_API_TOKENS", "TRAINER_API_TOKENS_FILE"),
        "serve: name:role:secret entries (roles reader, trainer), or a file of them",
    ),
    EnvironmentSetting(("TRAINER_API_HOST", "TRAINER_API_PORT"), "serve: where to listen (127.0.0.1, 8000)"),
    EnvironmentSetting(
        ("TRAINER_ENCODER_CACHE",),
        "where --embedding-backend onnx/onnx-int8/openvino keep the encoder's ONNX exports "
        "(default: ~/.cache/training-db-pipeline/encoders)",
    ),
)


def environment_help(width: int = 78) -> str:
    """The settings as ``--help`` lists them (click keeps a block after ``\\b`` as is)."""
    import textwrap

    lines = ["\b", "Settings (CONTRACT §6):"]
    indent = " " * 25
    for setting in ENVIRONMENT:
        names = ", ".join(setting.names)
        wrapped = textwrap.wrap(setting.meaning, width - len(indent))
        if len(names) <= 21:
            lines.append(f"  {names:<21}  {wrapped[0]}")
            wrapped = wrapped[1:]
        else:
            lines.append(f"  {names}")
        lines += [indent + line for line in wrapped]
    return "\n".join(lines) + "\n"


def project_root() -> Path:
    """The repository root (the directory holding dbt_project.yml).

    The package is installed in editable mode from ``python/trainer``, so the root
    is found upward from this file; outside a checkout the working directory is used.
    """
    for parent in Path(__file__).resolve().parents:
        if (parent / "dbt_project.yml").is_file():
            return parent
    return Path.cwd()


def _has_scheme(url: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url) is not None


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one command."""

    target: str
    duckdb_path: Path
    artifacts_url: str
    app_schema: str = "app"
    # A running run refreshes its heartbeat this often (seconds)…
    heartbeat_interval: float = 15.0
    # …and is declared lost ("worker lost") when it is older than this.
    heartbeat_timeout: float = 120.0
    # How long to wait for another process to release the DuckDB file.
    duckdb_lock_timeout: float = 60.0
    # psycopg connection keywords from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE.
    postgres: dict = field(default_factory=dict, repr=False)
    # Rows per record batch when a run reads its examples (TRAINER_READ_BATCH_ROWS).
    read_batch_rows: int = 65_536

    def postgres_description(self) -> str:
        """Where PostgreSQL is, for messages (never the password)."""
        host = self.postgres.get("host", "libpq default host")
        port = self.postgres.get("port", "5432")
        return f"PostgreSQL database {self.postgres.get('dbname', '(libpq default)')} on {host}:{port}"

    @classmethod
    def from_env(
        cls,
        target: str | None = None,
        app_schema: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        env = os.environ if environ is None else environ
        root = project_root()

        chosen = (target or env.get("TRAINER_TARGET") or DEFAULT_TARGET).strip().lower()
        if chosen not in TARGETS:
            raise ConfigurationError(
                f"unknown target {chosen!r} (TRAINER_TARGET or --target): expected one of {', '.join(TARGETS)}"
            )

        duckdb_path = Path(env.get("TRAINER_DUCKDB_PATH") or root / "warehouse.duckdb")
        artifacts = env.get("TRAINER_ARTIFACTS_URL") or str(root / "artifacts")
        if not _has_scheme(artifacts):
            # A bare path is local; make it absolute so stored URIs do not depend on the cwd.
            artifacts = str(Path(artifacts).expanduser().resolve())

        schema = app_schema or env.get("TRAINER_APP_SCHEMA") or "app"
        if not _IDENTIFIER.match(schema):
            raise ConfigurationError(f"app schema {schema!r} is not a plain SQL identifier")
        if chosen == "duckdb" and schema.lower() in DUCKDB_CATALOGS:
            raise ConfigurationError(
                f"app schema {schema!r} cannot be used on DuckDB: it is the name of a catalog "
                f"({', '.join(DUCKDB_CATALOGS)}); choose another"
            )

        interval = _seconds(env, "TRAINER_HEARTBEAT_INTERVAL", 15.0)
        timeout = _seconds(env, "TRAINER_HEARTBEAT_TIMEOUT", 120.0)
        if timeout < 2 * interval:
            raise ConfigurationError(
                f"TRAINER_HEARTBEAT_TIMEOUT ({timeout:g}s) must be at least twice "
                f"TRAINER_HEARTBEAT_INTERVAL ({interval:g}s), or live runs would be reaped"
            )

        return cls(
            target=chosen,
            duckdb_path=duckdb_path.expanduser().resolve(),
            artifacts_url=artifacts,
            app_schema=schema,
            heartbeat_interval=interval,
            heartbeat_timeout=timeout,
            duckdb_lock_timeout=_seconds(env, "TRAINER_DUCKDB_LOCK_TIMEOUT", 60.0),
            postgres={keyword: env[variable] for variable, keyword in POSTGRES_VARIABLES.items() if env.get(variable)},
            read_batch_rows=_positive_int(env, "TRAINER_READ_BATCH_ROWS", 65_536),
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigurationError(f"{name}={raw!r} is not a positive whole number")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigurationError(f"{name}={raw!r} is not a positive number of seconds")
    return value
