"""Short database sessions on DuckDB (embedded) or PostgreSQL (the app's server).

SQL in this package is written once, with ``?`` placeholders; the PostgreSQL
session rewrites them for psycopg. A session is one transaction: it commits when
its block ends normally and rolls back on any exception.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from trainer.core.errors import DatabaseUnavailable, MissingRelation
from trainer.core.settings import DUCKDB_CATALOG, Settings


def _names_a_missing_relation(exc: Exception, dialect: str) -> bool:
    """A table, view or schema the query names does not exist: an install step not
    yet taken (init-db, dbt build), which the user is told in one line."""
    if dialect == "duckdb":
        import duckdb

        return isinstance(exc, duckdb.CatalogException)
    import psycopg

    return isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName))


class Result:
    """A statement's rows, fetched eagerly (DuckDB refuses new work on a
    connection while a result is still open)."""

    def __init__(self, rows: list[tuple], rowcount: int):
        self.rows = rows
        self.rowcount = rowcount

    def fetchall(self) -> list[tuple]:
        return self.rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None


class Session:
    """One open transaction. Only the methods below touch the connection."""

    def __init__(self, connection: Any, dialect: str):
        self._connection = connection
        self.dialect = dialect

    def _sql(self, sql: str, params: Sequence[Any]) -> str:
        # psycopg reads % as a placeholder only when parameters are passed; SQL
        # without parameters (e.g. compiled by dbt, with its `%` modulo) goes as is.
        if self.dialect == "postgres" and params:
            return sql.replace("%", "%%").replace("?", "%s")
        return sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        try:
            if self.dialect == "duckdb":
                rows = self._connection.execute(sql, list(params)).fetchall()
                return Result(rows, len(rows))
            with self._connection.cursor() as cursor:
                cursor.execute(self._sql(sql, params), list(params) if params else None)
                rows = cursor.fetchall() if cursor.description is not None else []
                return Result(rows, cursor.rowcount)
        except Exception as exc:
            if _names_a_missing_relation(exc, self.dialect):
                raise MissingRelation(
                    f"{_first_line(exc).rstrip('.')}: run `python -m trainer init-db` for the results tables "
                    "and `dbt build` for the dataset views"
                ) from exc
            raise

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return list(self.execute(sql, params).fetchall())

    # -- what only one engine has (every caller goes through these) ----------

    def row_lock(self, skip_locked: bool = False) -> str:
        """The end of a SELECT that locks its rows for this transaction: PostgreSQL's
        ``for update`` (``skip locked``: rows another transaction holds are passed
        over, not waited for). Empty on DuckDB, whose session holds the file's
        single-writer lock, so no other writer can interleave."""
        if self.dialect != "postgres":
            return ""
        return " for update skip locked" if skip_locked else " for update"

    def serialize_on(self, key: int | str) -> None:
        """Wait until no other transaction holds ``key``, and hold it to the end of
        this one: a PostgreSQL transaction-scoped advisory lock (a text key is hashed).
        Nothing to do on DuckDB, where one writer holds the file."""
        if self.dialect != "postgres":
            return
        if isinstance(key, str):
            self.execute("select pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))
        else:
            self.execute("select pg_advisory_xact_lock(?)", (key,))

    def refresh_statistics(self, table: str) -> None:
        """Let the planner see what a bulk load put into ``table``: PostgreSQL's
        ANALYZE (autovacuum would, but later; until then the planner guesses, and
        the review loop's views pair every proposal with every event). DuckDB keeps
        its statistics as it writes."""
        if self.dialect == "postgres":
            self.execute(f"analyze {table}")

    def bytewise_collation(self) -> str:
        """What makes ``order by`` a text column compare by bytes (CONTRACT's
        annotation_id order): PostgreSQL's ``collate "C"``; DuckDB already does."""
        return ' collate "C"' if self.dialect == "postgres" else ""

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self.execute(sql, params).fetchone()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.fetchone(sql, params)
        return None if row is None else row[0]

    def fetch_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """Run a query and return its rows as an Arrow table."""
        if self.dialect == "duckdb":
            return self._connection.sql(sql, params=list(params) or None).to_arrow_table()
        with self._connection.cursor() as cursor:
            cursor.execute(self._sql(sql, params), list(params) if params else None)
            names = [column.name for column in cursor.description]
            rows = cursor.fetchall()
        return pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})

    def stream_arrow(self, sql: str, schema: pa.Schema, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Run a query and yield its rows as record batches of ``schema`` (whose
        names are the query's columns, in order), never holding more than one batch."""
        if self.dialect == "duckdb":
            reader = self._connection.sql(sql).to_arrow_reader(batch_rows)
            for batch in reader:
                yield batch.cast(schema)
            return
        # A server-side cursor: PostgreSQL sends the rows batch by batch.
        with self._connection.cursor(name=f"stream_{uuid.uuid4().hex[:12]}") as cursor:
            cursor.itersize = batch_rows
            cursor.execute(sql)
            while rows := cursor.fetchmany(batch_rows):
                yield pa.record_batch(
                    [pa.array([row[i] for row in rows], type=field.type) for i, field in enumerate(schema)],
                    schema=schema,
                )

    def relation_exists(self, schema: str, name: str) -> bool:
        """True when a table or view ``schema.name`` exists."""
        return bool(
            self.scalar(
                "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
                (schema, name),
            )
        )

    def ensure_schema(self, name: str) -> None:
        """Create a schema unless it exists. PostgreSQL checks the right to create
        schemas even for CREATE SCHEMA IF NOT EXISTS, and a least-privilege role
        that owns its schemas has no such right."""
        exists = self.scalar("select count(*) from information_schema.schemata where schema_name = ?", (name,))
        if not exists:
            self.execute(f"create schema {name}")

    def insert_missing(self, table: str, key: str, rows: pa.Table) -> int:
        """Insert the rows whose ``key`` is not in ``table`` yet; return how many were new."""
        columns = ", ".join(rows.column_names)
        if self.dialect == "duckdb":
            self._connection.register("rows_to_insert", rows)
            try:
                before = self.scalar(f"select count(*) from {table}")
                self.execute(
                    f"insert into {table} ({columns}) select {columns} from rows_to_insert as incoming "
                    f"where not exists (select 1 from {table} as existing where existing.{key} = incoming.{key})"
                )
                return self.scalar(f"select count(*) from {table}") - before
            finally:
                self._connection.unregister("rows_to_insert")
        staging = f"incoming_{uuid.uuid4().hex[:12]}"
        with self._connection.cursor() as cursor:
            cursor.execute(f"create temporary table {staging} (like {table} including defaults) on commit drop")
            with cursor.copy(f"copy {staging} ({columns}) from stdin") as copy:
                for row in rows.to_pylist():
                    copy.write_row([row[name] for name in rows.column_names])
            cursor.execute(
                f"insert into {table} ({columns}) select {columns} from {staging} as incoming "
                f"where not exists (select 1 from {table} as existing where existing.{key} = incoming.{key})"
            )
            inserted = cursor.rowcount
            cursor.execute(f"drop table {staging}")
            return inserted


# DuckDB names a file's catalog after the file ("app.duckdb" -> catalog "app"),
# and a catalog named like one of our schemas makes every `app.documents` ambiguous.
# So the file is always attached under the fixed name DUCKDB_CATALOG, whatever it is
# called; dbt's profile (profiles/profiles.yml) attaches it under the same alias, so
# the SQL dbt compiles (`"warehouse"."app"."documents"`) runs here as well.
def _duckdb_attach(path) -> Any:
    """A connection whose default catalog is the file at ``path``, attached as
    DUCKDB_CATALOG. Sessions nested in one thread share one in-memory instance
    (DuckDB caches instances by name), as connections to the file itself would:
    one file cannot be attached by two instances of a process. The file is
    detached, and its lock released, when the last session on it closes."""
    import hashlib

    import duckdb

    instance = "trainer_" + hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:16]
    connection = duckdb.connect(f":memory:{instance}")
    try:
        quoted = str(path).replace("'", "''")
        connection.execute(f"attach if not exists '{quoted}' as {DUCKDB_CATALOG}")
        connection.execute(f"use {DUCKDB_CATALOG}")
    except BaseException:
        connection.close()
        raise
    return connection


# DuckDB lets one process write a file at a time; within a process, two threads
# (a run and its heartbeat) would still conflict on the same rows, so sessions on
# one file take turns.
_duckdb_file_locks: dict[str, threading.RLock] = {}
_duckdb_file_locks_guard = threading.Lock()


def _duckdb_file_lock(path) -> threading.RLock:
    with _duckdb_file_locks_guard:
        return _duckdb_file_locks.setdefault(str(path), threading.RLock())


class Database:
    """Opens sessions on the configured target; holds no connection between them,
    so dbt and analysts can use a DuckDB file while the trainer is busy elsewhere.

    On DuckDB the file lock is the single-writer lock: a process that finds the
    file held by another waits for it (up to TRAINER_DUCKDB_LOCK_TIMEOUT)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dialect = settings.target

    def describe(self) -> str:
        if self.dialect == "duckdb":
            return f"DuckDB file {self.settings.duckdb_path}"
        return self.settings.postgres_description()

    def _connect(self, create: bool) -> Any:
        if self.dialect == "duckdb":
            import duckdb

            path = self.settings.duckdb_path
            if not create and not path.is_file():
                raise DatabaseUnavailable(
                    f"DuckDB file {path} does not exist: run `python -m trainer init-db` "
                    "(or set TRAINER_DUCKDB_PATH)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            deadline = time.monotonic() + self.settings.duckdb_lock_timeout
            delay = 0.02
            while True:
                try:
                    return _duckdb_attach(path)
                except duckdb.IOException as exc:
                    if "lock" not in str(exc).lower() or time.monotonic() + delay > deadline:
                        raise DatabaseUnavailable(f"cannot open DuckDB file {path}: {_first_line(exc)}") from exc
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                except duckdb.Error as exc:
                    raise DatabaseUnavailable(f"cannot open DuckDB file {path}: {_first_line(exc)}") from exc

        import psycopg

        try:
            return psycopg.connect(connect_timeout=10, **self.settings.postgres)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(
                f"cannot connect to {self.settings.postgres_description()}: {_first_line(exc)}"
            ) from exc

    @contextmanager
    def session(self, create: bool = False) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any exception."""
        if self.dialect == "duckdb":
            with _duckdb_file_lock(self.settings.duckdb_path):
                with self._session(create) as session:
                    yield session
        else:
            with self._session(create) as session:
                yield session

    @contextmanager
    def turn(self) -> Iterator[None]:
        """This process's turn on the DuckDB file for code that opens it by itself
        (dbt compiling in-process): one file cannot be attached twice in a process,
        so sessions in other threads (a run's heartbeat) wait until the block ends."""
        if self.dialect == "duckdb":
            with _duckdb_file_lock(self.settings.duckdb_path):
                yield
        else:
            yield

    @contextmanager
    def _session(self, create: bool) -> Iterator[Session]:
        connection = self._connect(create)
        try:
            if self.dialect == "duckdb":
                connection.execute("begin transaction")
            yield Session(connection, self.dialect)
            connection.commit()
        except BaseException:
            try:
                connection.rollback()
            except Exception:  # the connection may already be gone; the original error matters
                pass
            raise
        finally:
            connection.close()

    def engine_version(self) -> str:
        if self.dialect == "duckdb":
            import duckdb

            return f"duckdb {duckdb.__version__}"
        with self.session() as session:
            return "postgresql " + str(session.scalar("show server_version"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
