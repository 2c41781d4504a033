"""Short database sessions on DuckDB (embedded) or PostgreSQL (the app's server).

SQL in this package is written once, with ``?`` placeholders; the PostgreSQL
session rewrites them for psycopg. A session is one transaction: it commits when
its block ends normally and rolls back on any exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from trainer.errors import DatabaseUnavailable
from trainer.settings import Settings


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

    def _sql(self, sql: str) -> str:
        if self.dialect == "postgres":
            return sql.replace("%", "%%").replace("?", "%s")
        return sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        if self.dialect == "duckdb":
            rows = self._connection.execute(sql, list(params)).fetchall()
            return Result(rows, len(rows))
        with self._connection.cursor() as cursor:
            cursor.execute(self._sql(sql), list(params) if params else None)
            rows = cursor.fetchall() if cursor.description is not None else []
            return Result(rows, cursor.rowcount)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return list(self.execute(sql, params).fetchall())

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
            cursor.execute(self._sql(sql), list(params) if params else None)
            names = [column.name for column in cursor.description]
            rows = cursor.fetchall()
        return pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})

    def relation_exists(self, schema: str, name: str) -> bool:
        """True when a table or view ``schema.name`` exists."""
        return bool(
            self.scalar(
                "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
                (schema, name),
            )
        )

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
        cursor = self._connection.cursor()
        cursor.execute(f"create temporary table rows_to_insert (like {table} including defaults) on commit drop")
        with cursor.copy(f"copy rows_to_insert ({columns}) from stdin") as copy:
            for row in rows.to_pylist():
                copy.write_row([row[name] for name in rows.column_names])
        cursor.execute(
            f"insert into {table} ({columns}) select {columns} from rows_to_insert as incoming "
            f"where not exists (select 1 from {table} as existing where existing.{key} = incoming.{key})"
        )
        return cursor.rowcount


class Database:
    """Opens sessions on the configured target; holds no connection between them,
    so dbt and analysts can use a DuckDB file while the trainer is busy elsewhere."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dialect = settings.target

    def describe(self) -> str:
        if self.dialect == "duckdb":
            return f"DuckDB file {self.settings.duckdb_path}"
        return "PostgreSQL (PGHOST/PGPORT/PGUSER/PGDATABASE)"

    def exists(self) -> bool:
        return self.dialect != "duckdb" or self.settings.duckdb_path.is_file()

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
            try:
                return duckdb.connect(str(path))
            except duckdb.Error as exc:
                raise DatabaseUnavailable(f"cannot open DuckDB file {path}: {_first_line(exc)}") from exc

        import psycopg

        try:
            return psycopg.connect("", connect_timeout=10)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {_first_line(exc)}") from exc

    @contextmanager
    def session(self, create: bool = False) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any exception."""
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
