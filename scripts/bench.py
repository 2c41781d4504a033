#!/usr/bin/env python
"""Benchmark: the database path against its floor, the legacy CSV flow, plain encoding and cold training.

In one run, for each scale (annotations in the app) and engine (DuckDB, PostgreSQL):
synthetic app data (`trainer.data.synthetic.synthetic_app_data`, about 5 events per
annotation with the contract's dirty cases) is loaded into a fresh database (a
temporary DuckDB file; a PostgreSQL database created for the run and dropped at its
end), `dbt build` is timed, and then:

- reading `datasets.training_examples` through the trainer's own path
  (`stream_training_examples`: record batches in annotation_id order) against the
  floor: one hand-written SQL query that applies CONTRACT §2-§3 to the app's tables
  directly, in the same order, fetched as one Arrow table (`Session.fetch_arrow`);
  both must give the same examples (fingerprint and table);
- the legacy CSV flow (`read_legacy_csv`) on an export of the same annotations;
- on the first engine only: embedding throughput, `embed_texts` against a plain
  `SentenceTransformer.encode` of the same model object; and for the training
  scales, a cold `python -m trainer train` (empty embedding cache) and a retrain
  after 1% new accepted annotations (which uses the cache).

The figures replace this script's own section of docs/BENCHMARKS.md.

    .venv/bin/python scripts/bench.py [--scales 10000,100000,1000000] [--engines duckdb,postgres]
        [--train-scales 10000,100000] [--embed-sample 4000] [--output docs/BENCHMARKS.md]

Run it with the project's virtualenv; PostgreSQL is reached through PGHOST/PGPORT/PGUSER
(default 127.0.0.1:5432, user postgres), and the user must be allowed to create databases.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pyarrow as pa
from benchmark_docs import describe_machine, run_header, write_section
from process_memory import RssSampler

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_MARKER = "<!-- bench:start -->"
END_MARKER = "<!-- bench:end -->"
ENGINES = ("duckdb", "postgres")
LIBRARIES = (
    "duckdb", "dbt-core", "dbt-duckdb", "dbt-postgres", "psycopg", "pyarrow", "sentence-transformers",
    "transformers", "torch", "scikit-learn",
)
PG_HOST = os.environ.get("PGHOST") or "127.0.0.1"
PG_PORT = os.environ.get("PGPORT") or "5432"
PG_USER = os.environ.get("PGUSER") or "postgres"
PG_PREFIX = "tdp_bench_"
READ_REPEATS = 3
EMBED_REPEATS = 2
FAST_BACKEND = "onnx-int8"  # the opt-in fast encoder measured beside plain encode
SEED = 7
MIB = 1024 * 1024
# docs/DEPLOYMENT.md §2: the index the app should have for the deciding-event query.
APP_INDEX = (
    "create index if not exists annotation_events_deciding_idx "
    "on app.annotation_events (annotation_id, occurred_at desc, event_id desc) "
    "include (event_type, label, actor) "
    "where event_type in ('accepted', 'rejected', 'deleted')"
)
SAMPLE_SECONDS = 0.05  # the trainer's memory, read from /proc this often


def log(message: str) -> None:
    print(f"[bench {datetime.now(UTC).strftime('%H:%M:%S')} UTC] {message}", flush=True)


class BenchmarkError(RuntimeError):
    """A check failed: the figures would be meaningless."""


# -- workspaces ----------------------------------------------------------------------


def pg_connect(dbname: str = "postgres"):
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True, connect_timeout=10)


def drop_stale_pg_databases() -> None:
    """Drop databases left by earlier runs of this script whose process is gone (killed with SIGKILL)."""
    with pg_connect() as connection:
        names = [row[0] for row in connection.execute(
            "select datname from pg_database where datname like %s", (PG_PREFIX.replace("_", r"\_") + "%",)
        ).fetchall()]
        for name in names:
            match = re.match(rf"^{PG_PREFIX}(\d+)_", name)
            if not match:
                continue
            pid = int(match.group(1))
            try:
                os.kill(pid, 0)
                continue  # its benchmark is still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            log(f"dropping stale database {name} (its process {pid} is gone)")
            connection.execute(f'drop database if exists "{name}" with (force)')


@dataclass
class Workspace:
    """One engine's database for one scale, plus where dbt and the trainer keep their files."""

    root: Path
    engine: str
    pg_database: str | None = None

    @property
    def duckdb_path(self) -> Path:
        return self.root / "warehouse.duckdb"

    def env(self, artifacts: Path | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TRAINER_TARGET=self.engine,
            TRAINER_DUCKDB_PATH=str(self.duckdb_path),
            TRAINER_ARTIFACTS_URL=str(artifacts or self.root / "artifacts"),
            DBT_SEND_ANONYMOUS_USAGE_STATS="false",
            HF_HUB_OFFLINE="1",
        )
        if self.engine == "postgres":
            env.update(PGHOST=PG_HOST, PGPORT=PG_PORT, PGUSER=PG_USER, PGDATABASE=self.pg_database)
        return env

    def settings(self):
        from trainer.core.settings import Settings

        return Settings.from_env(environ=self.env())

    def database(self):
        from trainer.core.db import Database

        return Database(self.settings())


def new_workspace(parent: Path, engine: str, scale: int, created_databases: list[str]) -> Workspace:
    root = Path(tempfile.mkdtemp(prefix=f"{engine}-{scale}-", dir=parent))
    if engine == "duckdb":
        return Workspace(root, engine)
    name = f"{PG_PREFIX}{os.getpid()}_{secrets.token_hex(3)}_{scale}"
    with pg_connect() as connection:
        connection.execute(f"create database \"{name}\" template template0 encoding 'UTF8'")
    created_databases.append(name)
    return Workspace(root, engine, name)


def drop_workspace(space: Workspace, created_databases: list[str]) -> None:
    if space.pg_database and space.pg_database in created_databases:
        try:
            with pg_connect() as connection:
                connection.execute(f'drop database if exists "{space.pg_database}" with (force)')
            created_databases.remove(space.pg_database)
        except Exception as exc:  # noqa: BLE001 -- reported; the final cleanup tries again
            log(f"could not drop {space.pg_database}: {exc}")
    shutil.rmtree(space.root, ignore_errors=True)


def load_app_data(space: Workspace, data) -> None:
    """Results tables, the app's tables and their rows (setup, not timed)."""
    from trainer.data.app_tables import create_app_tables
    from trainer.results.store import ResultsStore

    database = space.database()
    with database.session(create=True) as session:
        ResultsStore(database).migrate(session)
        create_app_tables(session, "app")
    tables = (("documents", data.documents), ("annotations", data.annotations),
              ("annotation_events", data.annotation_events))
    if space.engine == "duckdb":
        with database.session() as session:
            for name, table in tables:
                session.insert_missing(f"app.{name}", table.column_names[0], table)
        return
    # PostgreSQL: COPY straight into the empty tables, then the app's index and fresh statistics.
    with pg_connect(space.pg_database) as connection:
        with connection.transaction():
            for name, table in tables:
                columns = ", ".join(table.column_names)
                with connection.cursor().copy(f"copy app.{name} ({columns}) from stdin") as copy:
                    for batch in table.to_batches(max_chunksize=100_000):
                        values = [column.to_pylist() for column in batch.columns]
                        for row in zip(*values):
                            copy.write_row(row)
        connection.execute(APP_INDEX)
        connection.execute("vacuum analyze")


def _dbt_command(space: Workspace, verb: str) -> list[str]:
    return [
        str(BIN / "dbt"), verb,
        "--project-dir", str(ROOT),
        "--profiles-dir", str(ROOT / "profiles"),
        "--target", space.engine,
        "--target-path", str(space.root / "dbt-target"),
        "--log-path", str(space.root / "dbt-logs"),
    ]


def terminate_backends(space: Workspace) -> None:
    """End the server-side queries a killed client left running in this workspace's database."""
    if space.engine != "postgres":
        return
    with pg_connect() as connection:
        connection.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
            (space.pg_database,),
        )


def dbt_build(space: Workspace, timeout: float, result: EngineResult) -> None:
    """Time `dbt build`; past ``timeout`` it is stopped, and `dbt run` (views only) makes the views."""
    started = time.perf_counter()
    try:
        completed = subprocess.run(_dbt_command(space, "build"), cwd=ROOT, env=space.env(), capture_output=True,
                                   text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        result.dbt_seconds, result.dbt_timed_out = timeout, True
        terminate_backends(space)
        log(f"  {space.engine}: dbt build STOPPED after {timeout:.0f} s (--dbt-timeout); `dbt run` for the views…")
        started = time.perf_counter()
        completed = subprocess.run(_dbt_command(space, "run"), cwd=ROOT, env=space.env(), capture_output=True,
                                   text=True, check=False)
        if completed.returncode != 0:
            raise BenchmarkError(f"dbt run failed on {space.engine}:\n{completed.stdout[-4000:]}") from None
        result.dbt_statuses = (f"stopped after {timeout:.0f} s (--dbt-timeout); then `dbt run` (views only, "
                               f"no tests) {time.perf_counter() - started:.1f} s")
        return
    result.dbt_seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise BenchmarkError(f"dbt build failed on {space.engine}:\n{completed.stdout[-4000:]}\n{completed.stderr[-2000:]}")
    statuses: dict[str, int] = {}
    results = json.loads((space.root / "dbt-target" / "run_results.json").read_text())["results"]
    for item in results:
        statuses[item["status"]] = statuses.get(item["status"], 0) + 1
    slowest = sorted(results, key=lambda item: -item.get("execution_time", 0))[:3]
    result.dbt_statuses = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    result.dbt_slowest = "; ".join(
        f"{item['unique_id'].split('.', 2)[-1]} {item.get('execution_time', 0):.1f} s" for item in slowest
    )


# -- the floor -----------------------------------------------------------------------


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def floor_sql(dialect: str, split_salt: str, eval_percent: int) -> str:
    """CONTRACT §2-§3 in one query over the app's tables (no dbt, no views).

    The deciding event: the latest decision event by (occurred_at, event_id), picked
    with DISTINCT ON on PostgreSQL (the app's index gives that order) and QUALIFY
    row_number() on DuckDB. event_id is the events' primary key, so there are no
    exact ties to break. Split overrides are not applied (the benchmark checks that
    training.split_overrides is empty). Rows come in annotation_id order (bytewise),
    the order the trainer needs."""
    blank = "ltrim({0}, ' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)) = ''"
    hashed = f"md5({_literal(split_salt)} || a.document_id)"
    # The trainer needs the rows in annotation_id order, bytewise (trainer.data.dataset).
    order = ' collate "C"' if dialect == "postgres" else ""
    if dialect == "postgres":
        bucket = f"(cast(cast('x' || substr({hashed}, 1, 8) as bit(32)) as bigint) % 100)"
        deciding = """
            select distinct on (annotation_id) annotation_id, event_id, event_type, label, actor, occurred_at
            from app.annotation_events
            where event_type in ('accepted', 'rejected', 'deleted')
            order by annotation_id, occurred_at desc, event_id desc"""
    else:
        bucket = f"(cast('0x' || substr({hashed}, 1, 8) as bigint) % 100)"
        deciding = """
            select annotation_id, event_id, event_type, label, actor, occurred_at
            from app.annotation_events
            where event_type in ('accepted', 'rejected', 'deleted')
            qualify row_number() over (partition by annotation_id order by occurred_at desc, event_id desc) = 1"""
    return f"""
        select a.annotation_id, a.document_id, a.page, a.x0, a.y0, a.x1, a.y1, a.text,
               e.label, e.occurred_at as accepted_at, e.actor as accepted_by, e.event_id as accepted_event_id,
               case when {bucket} < {int(eval_percent)} then 'eval' else 'train' end as split
        from ({deciding}) as e
        join app.annotations as a on a.annotation_id = e.annotation_id
        join app.documents as d on d.document_id = a.document_id
        where e.event_type = 'accepted'
          and d.deleted_at is null
          and e.label is not null and not {blank.format('e.label')}
          and not {blank.format('a.text')}
        order by a.annotation_id{order}
    """


def explain(space: Workspace, sql: str, analyze: bool = True) -> str:
    """EXPLAIN ANALYZE (or EXPLAIN) of a query, as text."""
    with space.database().session() as session:
        rows = session.fetchall(("explain analyze " if analyze else "explain ") + sql)
    if space.engine == "duckdb":
        return "\n".join(str(row[-1]) for row in rows)
    # A plan line may quote a literal holding control characters (the blank check's): escape
    # them, and join the lines PostgreSQL split at a newline inside a quoted literal.
    escape = str.maketrans({"\t": "\\t", "\r": "\\r", "\x0b": "\\v", "\x0c": "\\f"})
    lines: list[str] = []
    for row in rows:
        line = str(row[0]).translate(escape)
        if lines and lines[-1].count("'") % 2 == 1:
            lines[-1] += "\\n" + line
        else:
            lines.append(line)
    return "\n".join(lines)


# -- other processes' CPU time ---------------------------------------------------------


def _proc_stat(pid: str) -> tuple[str, int, list[int]] | None:
    """(comm, ppid, [utime, stime, cutime, cstime]) of a process, in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return comm, int(fields[1]), [int(value) for value in fields[11:15]]


class CpuMonitor:
    """CPU seconds the machine spent busy, against those of this benchmark (this process and
    the children it waited for) and of the PostgreSQL server (postmaster with its exited
    backends, plus live ones): the rest is other processes (and the kernel's own work)."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> tuple[float, float, float]:
        values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(values) - values[3] - values[4]) / self.tick  # all but idle and iowait
        times = os.times()
        own = times.user + times.system + times.children_user + times.children_system
        postgres = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            stat = _proc_stat(pid)
            if stat is None or stat[0] != "postgres":
                continue
            _, ppid, (utime, stime, cutime, cstime) = stat
            parent = _proc_stat(str(ppid))
            postgres += utime + stime + (cutime + cstime if parent is None or parent[0] != "postgres" else 0)
        return busy, own, postgres / self.tick

    @staticmethod
    def foreign(start: tuple[float, float, float], end: tuple[float, float, float]) -> float:
        return max(0.0, (end[0] - start[0]) - (end[1] - start[1]) - (end[2] - start[2]))


# -- measurements ----------------------------------------------------------------------


@dataclass
class EngineResult:
    scale: int
    engine: str
    annotations: int
    events: int
    dbt_seconds: float = math.nan
    dbt_statuses: str = ""
    dbt_slowest: str = ""
    dbt_timed_out: bool = False
    examples: int = 0
    trainer_read: float = math.nan  # read_training_examples, best of 3
    view_fetch: float = math.nan  # fetch_arrow of the view alone (no cast, no sort), best of 3
    floor_read: float = math.nan  # fetch_arrow of the floor query, best of 3
    trainer_reads: list[float] = field(default_factory=list)
    floor_reads: list[float] = field(default_factory=list)
    trainer_timed_out: bool = False  # then trainer_read is the timeout: a lower bound
    verified: str = ""  # how the floor's rows were checked
    explain_files: list[str] = field(default_factory=list)
    plans: dict[str, str] = field(default_factory=dict)  # name -> EXPLAIN (ANALYZE) text
    legacy_read: float = math.nan  # read_legacy_csv of the scale's export, best of 3
    legacy_rows: int = 0
    legacy_bytes: int = 0
    legacy_export: float = math.nan  # writing that export from the app's tables, once

    @property
    def read_ratio(self) -> float:
        return self.trainer_read / self.floor_read

    @property
    def legacy_ratio(self) -> float:
        return self.legacy_read / self.trainer_read

    @property
    def legacy_flow_ratio(self) -> float:
        """The whole legacy flow (the app's export, then reading it) against the database path."""
        return (self.legacy_export + self.legacy_read) / self.trainer_read


@dataclass
class EmbedResult:
    scale: int
    texts: int
    distinct_texts: int
    ours: float  # segments/s, best of 2
    plain: float
    max_difference: float  # between our vectors and plain's, normalised
    fast: float  # segments/s of embed_texts with FAST_BACKEND, best of 2
    fast_min_cosine: float  # lowest cosine between a fast vector and ours

    @property
    def ratio(self) -> float:
        return self.ours / self.plain

    @property
    def fast_ratio(self) -> float:
        return self.fast / self.plain


@dataclass
class TrainResult:
    scale: int
    engine: str
    examples: int
    cold_seconds: float
    cold_peak_kib: int
    cold_embedded: int
    distinct_texts: int
    new_annotations: int
    retrain_examples: int
    retrain_seconds: float
    retrain_peak_kib: int
    retrain_embedded: int
    retrain_hits: int

    @property
    def ratio(self) -> float:
        return self.retrain_seconds / self.cold_seconds


def best(values: list[float]) -> float:
    return min(values) if values else math.nan


def timed_query(space: Workspace, run, timeout: float):
    """(seconds, value) of ``run(session)`` in a fresh session, or (None, None) when it
    ran past ``timeout`` and was cancelled (statement_timeout on PostgreSQL, an
    interrupt on DuckDB); setting the limit is not timed."""
    import duckdb
    import psycopg

    try:
        with space.database().session() as session:
            timer = None
            if space.engine == "postgres":
                session.execute(f"set statement_timeout = {int(timeout * 1000)}")
            else:
                timer = threading.Timer(timeout, session._connection.interrupt)
                timer.start()
            try:
                started = time.perf_counter()
                value = run(session)
                seconds = time.perf_counter() - started
            finally:
                if timer is not None:
                    timer.cancel()
        return seconds, value
    except (psycopg.errors.QueryCanceled, duckdb.InterruptException):
        return None, None


def measure_reads(space: Workspace, result: EngineResult, split_salt: str, eval_percent: int,
                  explain_dir: Path, timeout: float, reference: tuple[str, str] | None) -> tuple[pa.Table, str]:
    """Time the trainer path, the view alone and the floor; check they agree. Returns the
    examples and their fingerprint. ``reference``: (engine, fingerprint) of an engine
    already measured at this scale, for when this one's view cannot be read in time."""
    from trainer.data.dataset import (
        EXAMPLE_COLUMNS,
        EXAMPLE_SCHEMA,
        as_examples,
        dataset_fingerprint,
        stream_training_examples,
    )

    def read_training_examples(session) -> pa.Table:
        # What the trainer does: record batches, sorted by the database.
        return pa.Table.from_batches(list(stream_training_examples(session)), schema=EXAMPLE_SCHEMA)

    database = space.database()
    with database.session() as session:
        overrides = session.scalar("select count(*) from training.split_overrides")
    if overrides:
        raise BenchmarkError("training.split_overrides is not empty: the floor query does not apply overrides")
    sql = floor_sql(space.engine, split_salt, eval_percent)
    view_sql = f"select {', '.join(EXAMPLE_COLUMNS)} from datasets.training_examples"
    view_reads: list[float] = []
    trainer_table = floor_table = None
    for attempt in range(READ_REPEATS):
        # Interleaved, so a slow spell of the machine hits both sides alike.
        notes = []
        if not result.trainer_timed_out:
            seconds, table = timed_query(space, read_training_examples, timeout)
            if seconds is None:
                result.trainer_timed_out = True
                notes.append(f"trainer path STOPPED after {timeout:.0f} s (--read-timeout); not repeated")
            else:
                result.trainer_reads.append(seconds)
                trainer_table = table
                notes.append(f"trainer path {seconds:.3f} s")
        seconds, table = timed_query(space, lambda session: session.fetch_arrow(sql), timeout)
        if seconds is None:
            raise BenchmarkError(f"{space.engine} at {result.scale:,}: the floor query ran past {timeout:.0f} s")
        result.floor_reads.append(seconds)
        floor_table = table
        notes.append(f"floor {seconds:.3f} s")
        if not result.trainer_timed_out:  # the same view: it would only time out again
            seconds, _ = timed_query(space, lambda session: session.fetch_arrow(view_sql), timeout)
            if seconds is not None:
                view_reads.append(seconds)
                notes.append(f"view fetch only {seconds:.3f} s")
        log(f"    read {attempt + 1}/{READ_REPEATS}: " + ", ".join(notes))
    result.trainer_read = timeout if result.trainer_timed_out else best(result.trainer_reads)
    result.floor_read = best(result.floor_reads)
    result.view_fetch = best(view_reads)

    floor_examples = as_examples(floor_table)
    theirs = dataset_fingerprint(floor_examples)
    if result.trainer_timed_out:
        # The view could not be read in time: check the floor against another engine's view.
        if reference is None:
            result.verified = "not verified (the view did not finish and no other engine was measured)"
            log(f"    the floor could NOT be checked: {result.verified}")
        elif reference[1] != theirs:
            raise BenchmarkError(f"{space.engine} at {result.scale:,}: the floor's fingerprint {theirs[:12]} is not "
                                 f"{reference[0]}'s datasets.training_examples {reference[1][:12]}")
        else:
            result.verified = f"the floor matches {reference[0]}'s view (fingerprint)"
            log(f"    {result.verified}: {floor_examples.num_rows:,} examples, fingerprint {theirs[:12]}")
        examples, fingerprint = floor_examples, theirs
    else:
        ours = dataset_fingerprint(trainer_table)
        if ours != theirs or not trainer_table.equals(floor_examples):
            raise BenchmarkError(
                f"{space.engine} at {result.scale:,}: the floor query and datasets.training_examples DISAGREE "
                f"({trainer_table.num_rows:,} vs {floor_examples.num_rows:,} rows; fingerprints {ours[:12]} vs "
                f"{theirs[:12]}; tables equal: {trainer_table.equals(floor_examples)})"
            )
        result.verified = "same fingerprint and same table"
        log(f"    the floor and the view agree: {trainer_table.num_rows:,} examples, fingerprint {ours[:12]}")
        examples, fingerprint = trainer_table, ours
    result.examples = examples.num_rows

    if result.trainer_timed_out or result.read_ratio > 1.5:
        explain_dir.mkdir(parents=True, exist_ok=True)
        # A view that did not finish gets a plain EXPLAIN (the plan and its estimates, not run).
        cases = (("view", view_sql, not result.trainer_timed_out), ("floor", sql, True))
        for name, query, analyze in cases:
            plan = explain(space, query, analyze)
            result.plans[name] = plan
            path = explain_dir / f"explain-{result.scale}-{space.engine}-{name}.txt"
            path.write_text(plan + "\n", encoding="utf-8")
            result.explain_files.append(str(path))
        log(f"    trainer/floor {'> ' if result.trainer_timed_out else ''}{result.read_ratio:.2f}x: plans written "
            f"to {', '.join(result.explain_files)}")
    return examples, fingerprint


LEGACY_HEADER = ["annotation_id", "document_id", "page", "text", "label", "status"]


def write_legacy_csv(space: Workspace, path: Path, examples_sql: str) -> int:
    """The old export of the app's annotations (as tests/test_legacy_flow.py makes it):
    the latest-accepted ones with their accepted label, every other one pending or rejected.
    ``examples_sql`` gives the examples (the floor query, checked equal to the view)."""
    with space.database().session() as session:
        rows = session.fetchall(
            f"""
            select a.annotation_id, a.document_id, a.page, a.text,
                   coalesce(e.label, a.label),
                   case when e.annotation_id is not null then 'accepted'
                        when a.status = 'accepted' then 'rejected'
                        else a.status end
            from app.annotations as a
            left join ({examples_sql}) as e on e.annotation_id = a.annotation_id
            order by a.annotation_id
            """
        )
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LEGACY_HEADER)
        writer.writerows(["" if value is None else value for value in row] for row in rows)
    return len(rows)


def measure_legacy(path: Path, expected_fingerprint: str) -> tuple[float, list[float]]:
    from trainer.data.dataset import dataset_fingerprint
    from trainer.data.legacy_csv import read_legacy_csv
    from trainer.data.split_rule import SplitRule

    times = []
    legacy = None
    for attempt in range(READ_REPEATS):
        started = time.perf_counter()
        legacy = read_legacy_csv(path, SplitRule.from_project())
        times.append(time.perf_counter() - started)
        log(f"    read_legacy_csv {attempt + 1}/{READ_REPEATS}: {times[-1]:.3f} s")
    fingerprint = dataset_fingerprint(legacy.examples)
    if fingerprint != expected_fingerprint:
        raise BenchmarkError(
            f"the legacy CSV export does not give the database's examples "
            f"({legacy.examples.num_rows:,} rows, fingerprint {fingerprint[:12]} vs {expected_fingerprint[:12]})"
        )
    log(f"    the legacy export gives the same examples ({legacy.examples.num_rows:,}, fingerprint {fingerprint[:12]})")
    return best(times), times


def measure_embedding(scale: int, examples: pa.Table, sample_size: int) -> EmbedResult:
    import numpy as np

    from trainer.model.encoder.embeddings import embed_texts, load_encoder

    distinct = sorted(set(examples.column("text").to_pylist()))
    texts = random.Random(SEED).sample(distinct, min(sample_size, len(distinct)))
    encoder = load_encoder()  # the very object embed_texts uses (functools.cache)
    warm = texts[:256]
    embed_texts(warm, progress=False)
    embed_texts(warm, progress=False, backend=FAST_BACKEND)  # exports the model first on a new machine
    encoder.encode(warm, batch_size=64, show_progress_bar=False)
    ours_rates, plain_rates, fast_rates = [], [], []
    ours_vectors = plain_vectors = fast_vectors = None
    for attempt in range(EMBED_REPEATS):
        started = time.perf_counter()
        ours_vectors = embed_texts(texts, progress=False)
        ours_rates.append(len(texts) / (time.perf_counter() - started))
        started = time.perf_counter()
        plain_vectors = encoder.encode(texts, batch_size=64, show_progress_bar=False)
        plain_rates.append(len(texts) / (time.perf_counter() - started))
        started = time.perf_counter()
        fast_vectors = embed_texts(texts, progress=False, backend=FAST_BACKEND)
        fast_rates.append(len(texts) / (time.perf_counter() - started))
        log(f"    embedding {attempt + 1}/{EMBED_REPEATS}: embed_texts {ours_rates[-1]:.0f} segments/s, "
            f"plain encode {plain_rates[-1]:.0f} segments/s, {FAST_BACKEND} {fast_rates[-1]:.0f} segments/s")
    plain_normalised = plain_vectors / np.linalg.norm(plain_vectors, axis=1, keepdims=True)
    difference = float(np.abs(ours_vectors - plain_normalised).max())
    min_cosine = float((fast_vectors * ours_vectors).sum(axis=1).min())  # both L2-normalised
    return EmbedResult(scale, len(texts), len(distinct), max(ours_rates), max(plain_rates), difference,
                       max(fast_rates), min_cosine)


def run_trainer(space: Workspace, artifacts: Path, log_dir: Path, name: str) -> tuple[float, int, str]:
    """`python -m trainer train --quiet` in a child process: (wall seconds, peak RSS KiB, how measured).

    The peak is the largest sum over the run's processes (the trainer and, while it
    embeds, its encoder process), sampled from /proc (scripts/process_memory.py):
    `/usr/bin/time -v` or wait4 would give the larger of the two, not their sum.
    """
    command = [sys.executable, "-m", "trainer", "train", "--quiet"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=space.root, env=space.env(artifacts),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = RssSampler(process.pid, SAMPLE_SECONDS)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    sampler.stop()
    (log_dir / f"{name}.stdout").write_text(stdout)
    (log_dir / f"{name}.stderr").write_text(stderr)
    if process.returncode != 0:
        raise BenchmarkError(f"{name}: `python -m trainer train` exited {process.returncode}:\n{stderr[-3000:]}")
    return seconds, sampler.peak_kib, f"the process tree's summed RSS, sampled every {SAMPLE_SECONDS * 1000:.0f} ms"


def last_run(space: Workspace) -> dict:
    with space.database().session() as session:
        row = session.fetchone(
            "select run_id, status, params, train_examples, eval_examples from training.training_runs "
            "order by run_id desc limit 1"
        )
    run_id, status, params, n_train, n_eval = row
    if status != "succeeded":
        raise BenchmarkError(f"run {run_id} is {status}")
    params = json.loads(params) if isinstance(params, str) else params
    return {"run_id": run_id, "params": params, "examples": n_train + n_eval}


def add_new_annotations(space: Workspace, count: int) -> int:
    """``count`` new annotations with new texts in existing live documents, each with one
    `accepted` event (a label, a later occurred_at, a fresh event id). Returns the number
    of new distinct texts."""
    from trainer.data.demo import _ANNOTATIONS, _EVENTS
    from trainer.data.synthetic import _WORDS, LABELS

    generator = random.Random(SEED + count)
    with space.database().session() as session:
        documents = [row[0] for row in session.fetchall(
            "select document_id from app.documents where deleted_at is null order by document_id")]
        next_event = int(session.scalar("select max(event_id) from app.annotation_events")) + 1
        latest = session.scalar("select max(occurred_at) from app.annotation_events")
    at = latest + timedelta(hours=1)
    annotations: dict[str, list] = {name: [] for name in _ANNOTATIONS.names}
    events: dict[str, list] = {name: [] for name in _EVENTS.names}
    texts = set()
    for index in range(count):
        annotation_id = f"bench-new-{index:08d}"
        text = f"{' '.join(generator.choices(_WORDS, k=1 + generator.randrange(4)))} (new segment {index})"
        texts.add(text)
        label = generator.choice(LABELS)
        x0, y0 = generator.random() * 0.8, generator.random() * 0.95
        occurred = at + timedelta(seconds=index)
        for name, value in (("annotation_id", annotation_id), ("document_id", generator.choice(documents)),
                            ("page", 1 + generator.randrange(3)), ("x0", x0), ("y0", y0),
                            ("x1", x0 + 0.05), ("y1", y0 + 0.02), ("text", text), ("label", label),
                            ("status", "accepted"), ("created_at", occurred), ("updated_at", occurred)):
            annotations[name].append(value)
        for name, value in (("event_id", next_event + index), ("annotation_id", annotation_id),
                            ("event_type", "accepted"), ("label", label), ("actor", "user:bench"),
                            ("occurred_at", occurred), ("note", None)):
            events[name].append(value)
    with space.database().session() as session:
        session.insert_missing("app.annotations", "annotation_id", pa.table(annotations, schema=_ANNOTATIONS))
        session.insert_missing("app.annotation_events", "event_id", pa.table(events, schema=_EVENTS))
    return len(texts)


def measure_training(space: Workspace, scale: int, distinct_texts: int, log_dir: Path) -> tuple[TrainResult, str]:
    artifacts = space.root / f"artifacts-cold-{scale}"
    shutil.rmtree(artifacts, ignore_errors=True)  # a fresh blob store: the embedding cache is empty
    log(f"  cold training run ({distinct_texts:,} distinct texts to embed)…")
    cold_seconds, cold_peak, how = run_trainer(space, artifacts, log_dir, f"train-cold-{scale}")
    cold = last_run(space)
    log(f"    cold run {cold['run_id']}: {cold_seconds:.1f} s, peak RSS {cold_peak / 1024:.0f} MiB ({how}); "
        f"embedded_texts {cold['params'].get('embedded_texts')}")
    if cold["params"].get("embedded_texts") != distinct_texts:
        raise BenchmarkError(f"the cold run embedded {cold['params'].get('embedded_texts')} texts, "
                             f"expected {distinct_texts} (the distinct texts): was the cache not empty?")
    new = max(1, round(scale / 100))
    new_texts = add_new_annotations(space, new)
    with space.database().session() as session:
        after = int(session.scalar("select count(*) from datasets.training_examples"))
    if after != cold["examples"] + new:
        raise BenchmarkError(f"after adding {new} accepted annotations the view has {after:,} examples, "
                             f"expected {cold['examples'] + new:,}")
    log(f"  added {new:,} accepted annotations ({new_texts:,} new distinct texts); retraining…")
    retrain_seconds, retrain_peak, how = run_trainer(space, artifacts, log_dir, f"train-retrain-{scale}")
    retrain = last_run(space)
    embedded = retrain["params"].get("embedded_texts")
    log(f"    retrain run {retrain['run_id']}: {retrain_seconds:.1f} s, peak RSS {retrain_peak / 1024:.0f} MiB; "
        f"embedded_texts {embedded}, cache hits {retrain['params'].get('embedding_cache_hits')}")
    if embedded != new_texts:
        raise BenchmarkError(f"the retrain embedded {embedded} texts, expected the {new_texts} new distinct texts")
    return TrainResult(
        scale, space.engine, cold["examples"], cold_seconds, cold_peak, cold["params"]["embedded_texts"],
        distinct_texts, new, retrain["examples"], retrain_seconds, retrain_peak, embedded,
        retrain["params"].get("embedding_cache_hits", 0),
    ), how


# -- the report ----------------------------------------------------------------------


def machine(postgres_version: str | None) -> dict[str, str]:
    return {**describe_machine(LIBRARIES), "postgres": postgres_version or "not used"}


def postgres_server_version() -> str:
    with pg_connect() as connection:
        return str(connection.execute("show server_version").fetchone()[0])


def fmt_ratio(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}×"


def fmt_s(value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def trainer_s(r: EngineResult) -> str:
    return f"> {r.trainer_read:.0f} (stopped)" if r.trainer_timed_out else fmt_s(r.trainer_read)


def read_ratio_s(r: EngineResult) -> str:
    return f"> {r.read_ratio:.0f}×" if r.trainer_timed_out else fmt_ratio(r.read_ratio)


def legacy_ratio_s(r: EngineResult) -> str:
    return f"< {r.legacy_ratio:.3f}×" if r.trainer_timed_out else fmt_ratio(r.legacy_ratio)


def plan_summary(plan: str) -> str | None:
    """For a PostgreSQL plan: the nested loop with a join filter, if there is one, in one sentence."""
    lines = plan.splitlines()
    for index, line in enumerate(lines):
        if "Nested Loop" not in line:
            continue
        estimate = re.search(r"cost=\S+ rows=(\d+)", line)
        actual = re.search(r"actual time=\S+ rows=(\d+) loops=(\d+)", line)
        removed = next((re.search(r"Rows Removed by Join Filter: (\d+)", following)
                        for following in lines[index + 1:index + 4] if "Rows Removed by Join Filter" in following), None)
        text = "a Nested Loop join"
        if estimate:
            text += f" planned for {int(estimate.group(1)):,} rows"
        if actual:
            text += f" that returned {int(actual.group(1)):,}"
        if removed:
            text += f", comparing and discarding {int(removed.group(1)):,} row pairs in its join filter"
        return text
    return None


def plan_excerpt(plan: str, lines: int = 16, width: int = 180) -> str:
    kept = plan.splitlines()[:lines]
    tail = [line for line in plan.splitlines()[lines:] if line.startswith(("Execution Time", "Planning Time"))]
    cut = [(line if len(line) <= width else line[: width - 1] + "…") for line in kept]
    return "\n".join(cut + (["  …"] if len(plan.splitlines()) > lines else []) + tail)


def targets(engine_results: list[EngineResult], embed_results: list[EmbedResult], train_results: list[TrainResult],
            engines: list[str], scales: list[int], train_scales: list[int], estimate_note: str) -> list[str]:
    big = 1_000_000
    items = []
    by = {(r.scale, r.engine): r for r in engine_results}
    for engine in ("duckdb", "postgres"):
        name = "DuckDB" if engine == "duckdb" else "PostgreSQL"
        r = by.get((big, engine))
        if r is None:
            why = "that engine was not run" if engine not in engines else "1,000,000 was not among the scales"
            items.append(f"Reading ≤ 1.5× the floor at 1M on {name}: **not measured** ({why}).")
        else:
            verdict = "met" if r.read_ratio <= 1.5 and not r.trainer_timed_out else "NOT met"
            items.append(f"Reading ≤ 1.5× the floor at 1M on {name}: **{verdict}** ({read_ratio_s(r)}: "
                         f"{trainer_s(r)} s against {fmt_s(r.floor_read)} s).")
    at_big = [by[(big, e)] for e in engines if (big, e) in by]
    if not at_big:
        items.append("Database path ≥ 10× faster than the legacy CSV at 1M: **not measured** (1,000,000 was not "
                     "among the scales).")
    else:
        met = all(r.legacy_ratio >= 10 and not r.trainer_timed_out for r in at_big)
        detail = "; ".join(f"{r.engine} {legacy_ratio_s(r)}" for r in at_big)
        flow = "; ".join(f"{r.engine} {fmt_ratio(r.legacy_flow_ratio)}" for r in at_big)
        floor = "; ".join(f"{r.engine} {fmt_ratio(r.legacy_read / r.floor_read)}" for r in at_big)
        items.append(f"Database path ≥ 10× faster than the legacy CSV at 1M: **{'met' if met else 'NOT met'}** "
                     f"(reading the CSV / the database path: {detail}; counting the app's export too: {flow}; "
                     f"reading the CSV / the floor query, the most any database read could gain: {floor}).")
    if not train_results:
        items.append("Retrain after 1% ≤ 10% of the cold run: **not measured** (no training scale was run).")
    else:
        per_scale = "; ".join(f"{t.scale:,}: **{'met' if t.ratio <= 0.10 else 'NOT met'}** ({t.ratio:.3f}×)"
                              for t in train_results)
        items.append(f"Retrain after 1% ≤ 10% of the cold run, per scale: {per_scale}. A run's fixed cost "
                     "(process start, imports, loading the encoder, reading, fitting the head) does not shrink "
                     "with the share of new texts, so the ratio falls as the scale grows.")
    if not embed_results:
        items.append("Embedding ≥ 0.95× plain encode with the default backend: **not measured**.")
    else:
        worst = min(e.ratio for e in embed_results)
        detail = "; ".join(f"{e.scale:,}: {e.ratio:.3f}×" for e in embed_results)
        items.append(f"Embedding ≥ 0.95× plain encode with the default backend: **{'met' if worst >= 0.95 else 'NOT met'}** "
                     f"(ours/plain {detail}).")
    if not embed_results:
        items.append(f"Fast backend ({FAST_BACKEND}) ≥ 2× plain encode: **not measured**.")
    else:
        worst = min(e.fast_ratio for e in embed_results)
        detail = "; ".join(f"{e.scale:,}: {e.fast_ratio:.2f}×" for e in embed_results)
        items.append(f"Fast backend ({FAST_BACKEND}) ≥ 2× plain encode: **{'met' if worst >= 2 else 'NOT met'}** "
                     f"({FAST_BACKEND}/plain {detail}). Its accuracy change on the demo data (at most 1 point "
                     "lost) is measured by scripts/bench_encoder.py: see \"Embedding backends\" below.")
    rss_big = [t for t in train_results if t.scale == big]
    if rss_big:
        peak = max(max(t.cold_peak_kib, t.retrain_peak_kib) for t in rss_big)
        items.append(f"Trainer peak RSS ≤ 2 GB at 1M: **{'met' if peak * 1024 <= 2e9 else 'NOT met'}** "
                     f"({peak / 1024:.0f} MiB; 2 GB = 2×10^9 bytes = 1907 MiB).")
    else:
        largest = max(train_results, key=lambda t: t.scale) if train_results else None
        seen = (f"; the largest measured, {largest.scale:,} annotations ({largest.examples:,} examples), peaked at "
                f"{max(largest.cold_peak_kib, largest.retrain_peak_kib) / 1024:.0f} MiB") if largest else ""
        items.append(f"Trainer peak RSS ≤ 2 GB at 1M: **not measured** (training at 1M was skipped{estimate_note}"
                     f"{seen}).")
    return items


def render(args, command: str, invoked: str, info: dict[str, str], engine_results: list[EngineResult],
           embed_results: list[EmbedResult], train_results: list[TrainResult], rss_method: str,
           elapsed: float, date: str, estimate_note: str, skipped_training: list[str]) -> str:
    engines, scales, train_scales = args.engines, args.scales, args.train_scales
    name = {"duckdb": "DuckDB", "postgres": "PostgreSQL"}
    lines = [
        START_MARKER,
        "## Dataset path: dbt build, reading against the floor, legacy CSV, embedding, training",
        "",
        (
            "Synthetic app data (`trainer.data.synthetic.synthetic_app_data`: per annotation about 5 events with the "
            "contract's dirty cases: late events, rejections, deletions, edits after an acceptance, blank labels "
            "and texts, equal timestamps, unknown event types, orphan events, deleted documents) is loaded into a "
            "fresh database per scale and engine: a temporary DuckDB file, or a PostgreSQL database created for "
            "the run (COPY, then the app's index of docs/DEPLOYMENT.md §2 and `VACUUM ANALYZE`; loading is setup, "
            "not timed). Then `dbt build` of the project is timed (wall seconds, models and data tests). "
            "**Reading**: `stream_training_examples(session)` collected into one table (the trainer's path: the "
            "view in record batches, sorted by annotation_id in the database, bytewise) against the **floor**, "
            "one hand-written query applying CONTRACT §2–§3 to the app's tables (deciding event by `DISTINCT ON` "
            "on PostgreSQL and `QUALIFY row_number()` on DuckDB, joined to live documents, blank checks, md5 "
            "split, `ORDER BY annotation_id`), fetched as one Arrow table (`Session.fetch_arrow`); both give identical examples at every scale (checked: `dataset_fingerprint` "
            "and the whole table after `as_examples`), best of 3, interleaved. \"View fetch only\" is "
            "`fetch_arrow` of the view alone. **Legacy CSV**: the legacy export of the same annotations "
            "(written as `tests/test_legacy_flow.py` does; timed once, as the export column) read by `read_legacy_csv(path, "
            "SplitRule.from_project())`, best of 3; it gives the same fingerprint as the database. One file per "
            "scale, so the legacy time is the same on both engine rows. **Embedding** (first engine only; it "
            "does not depend on the engine): distinct texts sampled from the scale's examples, "
            "`embed_texts(texts, progress=False)` against `load_encoder().encode(texts, batch_size=64, "
            "show_progress_bar=False)` (the same model object), and the fast backend "
            f"(`embed_texts(texts, backend=\"{FAST_BACKEND}\")`), warm, best of 2. **Training** (first engine "
            "only): `python -m trainer train --quiet` in a child process with an empty blob store (cold: the "
            "embedding cache is empty), then 1% of the scale in new accepted annotations (new texts, in existing "
            "live documents, one `accepted` event each with a later `occurred_at` and fresh event ids; the views "
            "are views, so no dbt) and the same command again (the retrain, using the cache)."
        ),
        "",
        (
            f"Time limits: a read running past {args.read_timeout:g} s is cancelled (`statement_timeout` on "
            "PostgreSQL, an interrupt on DuckDB), not repeated, and shown as a lower bound (\"> N (stopped)\"); the "
            "floor's rows are then checked against the other engine's view at the same scale instead. A `dbt build` "
            f"running past {args.dbt_timeout:g} s is stopped (its server-side queries terminated) and `dbt run` "
            "creates the views without the data tests."
        ),
        "",
        *run_header(date, info, LIBRARIES, command, invoked, also=f"; PostgreSQL server {info['postgres']}"),
        f"- Whole run, including generating and loading the data: {elapsed:.0f} s ({elapsed / 60:.1f} min)",
        (
            f"- CPU time of other processes meanwhile (machine busy time from /proc/stat minus this benchmark's "
            f"and its children's and the PostgreSQL server's; includes the kernel's own): {info['foreign_cpu']}"
        ),
    ]
    if skipped_training:
        lines.append("- Not trained: " + "; ".join(skipped_training))
    lines += [
        "",
        "### dbt build",
        "",
        "| annotations | engine | events | examples | `dbt build` s | results | slowest nodes |",
        "|---:|---|---:|---:|---:|---|---|",
    ]
    for r in engine_results:
        seconds = f"> {r.dbt_seconds:.0f}" if r.dbt_timed_out else fmt_s(r.dbt_seconds)
        lines.append(f"| {r.scale:,} | {name[r.engine]} | {r.events:,} | {r.examples:,} | {seconds} "
                     f"| {r.dbt_statuses} | {r.dbt_slowest or 'n/a'} |")
    lines += [
        "",
        "### Reading the examples into Arrow (best of 3)",
        "",
        "| annotations | engine | examples | trainer path s | view fetch only s | floor s | trainer/floor | rows checked |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in engine_results:
        view = "not run" if r.trainer_timed_out else fmt_s(r.view_fetch)
        lines.append(f"| {r.scale:,} | {name[r.engine]} | {r.examples:,} | {trainer_s(r)} "
                     f"| {view} | {fmt_s(r.floor_read)} | {read_ratio_s(r)} | {r.verified} |")
    lines += [
        "",
        "### Legacy CSV flow against the database path (best of 3)",
        "",
        "| annotations | engine | CSV rows | CSV MB | `read_legacy_csv` s | database path s | legacy/database "
        "| export s (once, not in the ratio) | (export + read)/database |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in engine_results:
        lines.append(f"| {r.scale:,} | {name[r.engine]} | {r.legacy_rows:,} | {r.legacy_bytes / 1e6:.1f} "
                     f"| {fmt_s(r.legacy_read)} | {trainer_s(r)} | {legacy_ratio_s(r)} | {fmt_s(r.legacy_export)} "
                     f"| {fmt_ratio(r.legacy_flow_ratio)} |")
    lines += [
        "",
        "The export column times writing the legacy file from the first engine's tables (the floor query "
        "joined to every annotation, Python's csv writer): the work the app's export does before the "
        "legacy flow can start, which the database path does not need. The ratio column leaves it out; "
        "the last column counts it.",
        "",
        f"### Embedding throughput ({name[engines[0]]} run's examples; best of 2, warm)",
        "",
        (
            "| annotations | distinct texts in the examples | texts encoded | `embed_texts` seg/s "
            "| plain `encode` seg/s | ours/plain | max abs difference (plain normalised) "
            f"| `{FAST_BACKEND}` seg/s | {FAST_BACKEND}/plain | lowest cosine {FAST_BACKEND} to ours |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in embed_results:
        lines.append(f"| {e.scale:,} | {e.distinct_texts:,} | {e.texts:,} | {e.ours:.0f} | {e.plain:.0f} "
                     f"| {fmt_ratio(e.ratio)} | {e.max_difference:.1e} | {e.fast:.0f} | {fmt_ratio(e.fast_ratio)} "
                     f"| {e.fast_min_cosine:.3f} |")
    lines += [
        "",
        f"### Training: cold run and retrain after 1% new annotations ({name[engines[0]]})",
        "",
        (
            "| annotations | examples | cold: texts embedded | cold s | cold peak RSS MiB | new annotations "
            "| retrain: examples | retrain: `embedded_texts` (cache hits) | retrain s | retrain peak RSS MiB "
            "| retrain/cold |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in train_results:
        lines.append(
            f"| {t.scale:,} | {t.examples:,} | {t.cold_embedded:,} | {t.cold_seconds:.1f} | {t.cold_peak_kib / 1024:.0f} "
            f"| {t.new_annotations:,} | {t.retrain_examples:,} | {t.retrain_embedded:,} ({t.retrain_hits:,}) "
            f"| {t.retrain_seconds:.1f} | {t.retrain_peak_kib / 1024:.0f} | {fmt_ratio(t.ratio)} |"
        )
    if train_results:
        lines += [
            "",
            (
                f"Wall time is the child process's, start to exit (Python start-up and imports included); peak "
                f"RSS is {rss_method}. The retrain's `embedded_texts` "
                "equals the number of new distinct texts at every scale (checked)."
            ),
        ]
    slow = [r for r in engine_results if r.plans]
    if slow:
        lines += ["", "### Where the time goes (reads slower than 1.5× the floor)", ""]
        for r in slow:
            kind = "EXPLAIN" if r.trainer_timed_out else "EXPLAIN ANALYZE"
            if r.engine == "duckdb":
                totals = {key: re.search(r"Total Time: ([0-9.]+)s", plan) for key, plan in r.plans.items()}
                shown = ", ".join(f"{key} {m.group(1)} s" for key, m in totals.items() if m)
                lines.append(f"- {r.scale:,} annotations, DuckDB ({read_ratio_s(r)}, {fmt_s(r.trainer_read)} s "
                             f"against {fmt_s(r.floor_read)} s): EXPLAIN ANALYZE total time {shown or 'n/a'}.")
                continue
            summary = plan_summary(r.plans.get("view", ""))
            lines.append(
                f"- {r.scale:,} annotations, PostgreSQL ({read_ratio_s(r)}): the view's plan ({kind}) has "
                + (summary if summary else "no nested loop")
                + "; the floor's EXPLAIN ANALYZE: "
                + next((line.strip() for line in r.plans["floor"].splitlines() if line.startswith("Execution Time")),
                       "n/a")
                + ". The view's plan, top:"
            )
            lines += ["", "```", plan_excerpt(r.plans["view"]), "```", ""]
    lines += ["", "### Targets", ""]
    lines += [f"- {item}" for item in targets(engine_results, embed_results, train_results, engines, scales,
                                               train_scales, estimate_note)]
    lines += ["", "s = seconds, best of the repeats; MB = 10^6 bytes; MiB = 2^20 bytes.", END_MARKER]
    return "\n".join(lines) + "\n"




# -- main ----------------------------------------------------------------------------


def parse_scales(value: str) -> list[int]:
    if value.strip() == "":
        return []
    try:
        scales = [int(part.strip().replace("_", "")) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {value!r}") from None
    if any(scale < 1 for scale in scales):
        raise argparse.ArgumentTypeError("scales must be positive integers")
    return sorted(set(scales))


def parse_engines(value: str) -> list[str]:
    engines = [part.strip().lower() for part in value.split(",") if part.strip()]
    unknown = [engine for engine in engines if engine not in ENGINES]
    if not engines or unknown:
        raise argparse.ArgumentTypeError(f"engines must be among {', '.join(ENGINES)}, got {value!r}")
    return list(dict.fromkeys(engines))


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=parse_scales, default="10000,100000,1000000",
                        help="annotations in the app per run, comma-separated (default: 10000,100000,1000000)")
    parser.add_argument("--engines", type=parse_engines, default="duckdb,postgres",
                        help="comma-separated, the first also measures embedding and training (default: duckdb,postgres)")
    parser.add_argument("--train-scales", type=parse_scales, default="10000,100000",
                        help="scales at which to run a cold training and a retrain on the first engine "
                             "(default: 10000,100000; 1M would embed hundreds of thousands of texts)")
    parser.add_argument("--embed-sample", type=int, default=4000,
                        help="distinct texts encoded in the embedding comparison (default: 4000)")
    parser.add_argument("--read-timeout", type=float, default=300.0,
                        help="seconds after which one read is cancelled and reported as a lower bound (default: 300)")
    parser.add_argument("--dbt-timeout", type=float, default=600.0,
                        help="seconds after which `dbt build` is stopped (then `dbt run` makes the views; default: 600)")
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"),
                        help="Markdown file whose bench section is replaced (default: docs/BENCHMARKS.md)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the temporary workspaces are made, and removed (default: a temp dir)")
    args = parser.parse_args(argv)
    scales, engines = args.scales, args.engines
    if not scales:
        parser.error("--scales is empty")
    output = args.output if args.output.is_absolute() else Path.cwd() / args.output
    not_in_scales = [s for s in args.train_scales if s not in scales]
    if not_in_scales:
        parser.error(f"--train-scales {not_in_scales} are not among --scales")

    command = shlex.join([
        ".venv/bin/python", "scripts/bench.py", "--scales", ",".join(map(str, scales)), "--engines", ",".join(engines),
        "--train-scales", ",".join(map(str, args.train_scales)), "--embed-sample", str(args.embed_sample),
        "--read-timeout", f"{args.read_timeout:g}", "--dbt-timeout", f"{args.dbt_timeout:g}",
        "--output", str(args.output),
    ] + (["--workdir", str(args.workdir)] if args.workdir else []))
    invoked = shlex.join([".venv/bin/python", "scripts/bench.py", *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup, stay deaf to hang-ups
        signal.signal(signal.SIGHUP, _terminate)

    from trainer.data.split_rule import SplitRule
    from trainer.data.synthetic import synthetic_app_data

    began = time.monotonic()
    monitor = CpuMonitor()
    cpu_start = monitor.sample()
    foreign_by_scale: list[tuple[int, float, float]] = []
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    parent = Path(tempfile.mkdtemp(prefix="bench-", dir=args.workdir))
    explain_dir = Path(tempfile.gettempdir()) / f"bench-explain-{os.getpid()}"
    created_databases: list[str] = []
    spaces: list[Workspace] = []
    engine_results: list[EngineResult] = []
    embed_results: list[EmbedResult] = []
    train_results: list[TrainResult] = []
    skipped_training: list[str] = []
    rss_method = ""
    estimate_note = ""
    try:
        log(f"workspaces under {parent}; scales {scales}, engines {engines}, training at {args.train_scales}")
        postgres_version = None
        if "postgres" in engines:
            try:
                postgres_version = postgres_server_version()
            except Exception as exc:
                raise BenchmarkError(f"PostgreSQL unreachable at {PG_HOST}:{PG_PORT} as {PG_USER}: {exc}") from exc
            drop_stale_pg_databases()
            log(f"PostgreSQL {postgres_version} at {PG_HOST}:{PG_PORT}")
        rule = SplitRule.from_project()
        log_dir = parent / "logs"
        log_dir.mkdir()
        for scale in scales:
            log(f"== {scale:,} annotations ==")
            scale_cpu, scale_began = monitor.sample(), time.monotonic()
            started = time.monotonic()
            data = synthetic_app_data(scale, seed=SEED)
            events = data.annotation_events.num_rows
            log(f"  generated {data.documents.num_rows:,} documents, {data.annotations.num_rows:,} annotations, "
                f"{events:,} events in {time.monotonic() - started:.1f} s")
            scale_spaces: dict[str, Workspace] = {}
            scale_results: dict[str, EngineResult] = {}
            examples_by_engine: dict[str, pa.Table] = {}
            fingerprints: dict[str, str] = {}
            for engine in engines:
                space = new_workspace(parent, engine, scale, created_databases)
                spaces.append(space)
                scale_spaces[engine] = space
                started = time.monotonic()
                load_app_data(space, data)
                log(f"  {engine}: loaded in {time.monotonic() - started:.1f} s (setup, not timed); dbt build…")
                result = EngineResult(scale, engine, data.annotations.num_rows, events)
                dbt_build(space, args.dbt_timeout, result)
                log(f"  {engine}: dbt build {'> ' if result.dbt_timed_out else ''}{result.dbt_seconds:.1f} s "
                    f"({result.dbt_statuses}; slowest: {result.dbt_slowest or 'n/a'}); reading…")
                reference = next(iter(fingerprints.items()), None)
                examples_by_engine[engine], fingerprints[engine] = measure_reads(
                    space, result, rule.split_salt, rule.eval_percent, explain_dir, args.read_timeout, reference)
                bound = "> " if result.trainer_timed_out else ""
                log(f"  {engine}: trainer path {bound}{result.trainer_read:.3f} s, floor {result.floor_read:.3f} s, "
                    f"trainer/floor {bound}{result.read_ratio:.2f}x")
                scale_results[engine] = result
                engine_results.append(result)
            del data
            first = engines[0]
            examples = examples_by_engine[first]
            if len(set(fingerprints.values())) != 1:
                raise BenchmarkError(f"the engines disagree at {scale:,}: {fingerprints}")
            del examples_by_engine

            log("  legacy CSV: writing the export (setup)…")
            csv_path = parent / f"legacy-{scale}.csv"
            export_started = time.perf_counter()
            rows = write_legacy_csv(scale_spaces[first], csv_path,
                                    floor_sql(first, rule.split_salt, rule.eval_percent))
            export_seconds = time.perf_counter() - export_started
            legacy_seconds, _ = measure_legacy(csv_path, fingerprints[first])
            for result in scale_results.values():
                result.legacy_read, result.legacy_rows, result.legacy_bytes, result.legacy_export = (
                    legacy_seconds, rows, csv_path.stat().st_size, export_seconds)
                log(f"  {result.engine}: legacy {legacy_seconds:.3f} s, database path {result.trainer_read:.3f} s, "
                    f"legacy/database {result.legacy_ratio:.1f}x")
            csv_path.unlink()

            log(f"  embedding {args.embed_sample:,} distinct texts…")
            embed = measure_embedding(scale, examples, args.embed_sample)
            embed_results.append(embed)
            log(f"  embed_texts {embed.ours:.0f} seg/s, plain encode {embed.plain:.0f} seg/s, ratio {embed.ratio:.2f}")

            distinct = embed.distinct_texts
            if scale in args.train_scales:
                del examples
                result, rss_method = measure_training(scale_spaces[first], scale, distinct, log_dir)
                train_results.append(result)
                log(f"  retrain/cold {result.ratio:.3f}")
            else:
                minutes = distinct / embed.ours / 60
                note = (f"{scale:,} annotations: a cold run would embed {distinct:,} distinct texts, about "
                        f"{minutes:.0f} min of embedding alone at the {embed.ours:.0f} segments/s measured here")
                skipped_training.append(note + " (not in --train-scales)")
                if scale == 1_000_000:
                    estimate_note = f": {note}"
                log(f"  training skipped: {note}")
            for space in scale_spaces.values():
                drop_workspace(space, created_databases)
                spaces.remove(space)
            foreign = CpuMonitor.foreign(scale_cpu, monitor.sample())
            foreign_by_scale.append((scale, foreign, time.monotonic() - scale_began))
            log(f"  CPU time of other processes during this scale: {foreign:.0f} s "
                f"over {time.monotonic() - scale_began:.0f} s of wall time")

        elapsed = time.monotonic() - began
        info = machine(postgres_version)
        foreign = CpuMonitor.foreign(cpu_start, monitor.sample())
        cpus = int(info["nproc"]) if info["nproc"].isdigit() else os.cpu_count() or 1
        info["foreign_cpu"] = (
            f"{foreign:.0f} CPU-seconds, {100 * foreign / (elapsed * cpus):.1f}% of the {cpus} CPUs' time (per scale: "
            + "; ".join(f"{scale:,}: {seconds:.0f} s over {wall:.0f} s" for scale, seconds, wall in foreign_by_scale)
            + ")"
        )
        log(f"CPU time of other processes during the run: {info['foreign_cpu']}")
        date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = render(args, command, invoked, info, engine_results, embed_results,
                         train_results, rss_method, elapsed, date, estimate_note, skipped_training)
        write_section(output, section, START_MARKER, END_MARKER)
        log(f"wrote {output} in {elapsed:.0f} s")
        print(section)
        return 0
    except BenchmarkError as exc:
        log(f"BENCHMARK ABORTED: {exc}")
        return 2
    finally:
        # Cleaning up must not be cut short by a second signal.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for space in spaces:
            drop_workspace(space, created_databases)
        if created_databases:
            try:
                with pg_connect() as connection:
                    for name in created_databases:
                        connection.execute(f'drop database if exists "{name}" with (force)')
            except Exception as exc:  # noqa: BLE001 -- the run's outcome matters more; say what is left
                log(f"could not drop {created_databases}: {exc}")
        shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
