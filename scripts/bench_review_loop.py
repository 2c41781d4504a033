#!/usr/bin/env python
"""Benchmark: the review loop (CONTRACT §7): `datasets.review_queue` against a hand-written floor, and `propose`.

In one run:

1. **The review queue**, per scale (annotations in the app) and engine (DuckDB,
   PostgreSQL): synthetic app data (`trainer.data.synthetic.synthetic_app_data`)
   loaded into a fresh database as scripts/bench.py loads it (COPY, the app's index,
   VACUUM ANALYZE on PostgreSQL), the results schema migrated, two model versions
   registered (rows in training_runs and model_versions; no artifacts behind them)
   and seeded synthetic proposals in training.proposals: the newer version for 90% of
   the pending live segments, the older one for 50%. `dbt build` is timed. Then, best
   of 3 rounds, the order of the cases rotating each round:
   the view (`select <its columns> from datasets.review_queue order by priority` into
   Arrow with `Session.fetch_arrow`), its first page (`… limit 50`), and the floor: one
   hand-written query from the app's tables and training.proposals applying §7.1
   (live, pending) and the queue's order (DISTINCT ON on PostgreSQL, QUALIFY on
   DuckDB), with its first page too. The view and the floor must give the same rows:
   every column of every row, in the same order.
2. **propose** at about 100,000 pending live segments (`--propose-scale` annotations,
   first engine): a model version trained by `python -m trainer train` on the same
   data, then `python -m trainer propose --quiet` in a child process twice: the
   first writes every proposal, embedding what training left out of the cache (with
   --cold-propose: the cache emptied, every text of its pages), the second finds
   every vector in the cache and has nothing to write (warm). Wall time,
   segments/s, proposals new/changed and the peak RSS of the process tree.

`--results-json F` keeps the figures; `--render-from F` writes the section from them
again (e.g. after the FINDINGS text below was written for that run's plans).

Every database and file it creates is removed at the end (and on Ctrl-C or SIGTERM).
The figures replace this script's own section of docs/BENCHMARKS.md.

    .venv/bin/python scripts/bench_review_loop.py [--scales 100000,1000000] [--engines duckdb,postgres]
        [--propose-scale 211000] [--train-args='--no-label-issues …'] [--cold-propose] [--output docs/BENCHMARKS.md] [--workdir DIR]

Run it with the project's virtualenv; PostgreSQL is reached through PGHOST/PGPORT/PGUSER
(default 127.0.0.1:5432, user postgres), and the user must be allowed to create databases.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

import bench  # scripts/bench.py: workspaces, loading, dbt build, timed queries, EXPLAIN, other load
import pyarrow as pa
from benchmark_docs import describe_machine, run_header, write_section
from process_memory import RssSampler

START_MARKER = "<!-- bench_review_loop:start -->"
END_MARKER = "<!-- bench_review_loop:end -->"
ENGINES = bench.ENGINES
NAME = {"duckdb": "DuckDB", "postgres": "PostgreSQL"}
LIBRARIES = ("duckdb", "dbt-core", "dbt-duckdb", "dbt-postgres", "psycopg", "pyarrow", "sentence-transformers",
             "torch", "scikit-learn")
SEED = bench.SEED
REPEATS = 3
PAGE_ROWS = 50
TARGET_RATIO = 1.5
NEWER_SHARE, OLDER_SHARE = 0.90, 0.50  # of the pending live segments, with a proposal of each version
MODEL_NAME = "bench-labeler"
SAMPLE_SECONDS = 0.05
# datasets.review_queue's columns (models/marts/_marts__models.yml), in order.
QUEUE_COLUMNS = (
    "annotation_id", "document_id", "page", "x0", "y0", "x1", "y1", "text", "review_state", "current_label",
    "model_version_id", "proposed_label", "confidence", "margin", "model_name", "version", "proposed_at", "priority",
)
PROPOSAL_COLUMNS = ("model_version_id", "proposed_label", "confidence", "margin", "model_name", "version",
                    "proposed_at")
CASES = ("view", "view_page", "floor", "floor_page")
DEFAULT_PROPOSE_SCALE = 211_000  # about 100,000 pending live segments (47.5% of the annotations at 10,000)
# Cheaper than the default and the same kind of model: no search for label issues (the
# model version does not use them; a fit per fold saved) and the int8 ONNX encoder
# (2.4x plain encode in bench.py's section) for the ~100,000 texts training embeds.
DEFAULT_TRAIN_ARGS = ["--no-label-issues", "--embedding-backend", "onnx-int8"]


def log(message: str) -> None:
    print(f"[bench_review_loop {datetime.now(UTC).strftime('%H:%M:%S')} UTC] {message}", flush=True)


BenchmarkError = bench.BenchmarkError


# -- the floor -------------------------------------------------------------------------


def _blank(expression: str) -> str:
    """CONTRACT §2's blank text (as macros/is_blank.sql); the app's text is not null."""
    return f"ltrim({expression}, ' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)) = ''"


def _model_name(actor: str) -> str:
    reference = f"substr({actor}, 7)"
    return (f"case when position('@' in {reference}) = 0 then {reference} "
            f"else left({reference}, length({reference}) - position('@' in reverse({reference}))) end")


def _model_version(actor: str) -> str:
    reference = f"substr({actor}, 7)"
    return (f"case when position('@' in {reference}) = 0 then null "
            f"else right({reference}, position('@' in reverse({reference})) - 1) end")


def _latest_events(dialect: str, types: str, columns: str) -> str:
    """Each annotation's latest event of ``types`` by (occurred_at, event_id); event_id is
    the events' primary key, so there are no exact ties."""
    if dialect == "postgres":
        return f"""
            select distinct on (annotation_id) {columns}
            from app.annotation_events
            where event_type in ({types})
            order by annotation_id, occurred_at desc, event_id desc"""
    return f"""
            select {columns}
            from app.annotation_events
            where event_type in ({types})
            qualify row_number() over (partition by annotation_id order by occurred_at desc, event_id desc) = 1"""


def _newest_proposals(dialect: str) -> str:
    """Each annotation's proposal of the greatest model_version_id (the table's key is
    (model_version_id, annotation_id): no ties)."""
    columns = "annotation_id, model_version_id, actor, label, confidence, margin, created_at"
    if dialect == "postgres":
        return f"""
            select distinct on (annotation_id) {columns}
            from training.proposals
            order by annotation_id, model_version_id desc"""
    return f"""
            select {columns}
            from training.proposals
            qualify row_number() over (partition by annotation_id order by model_version_id desc) = 1"""


def pending_sql(dialect: str) -> str:
    """CONTRACT §7.1 over the app's tables: the live segments in `pending` review state
    (no deciding event, or a latest change after it, and a deciding event that is not
    `deleted`), with their latest change's label. The app's tables have primary keys,
    so no annotation or document is stored twice. The joins and filters only: the
    caller adds the proposals and the order."""
    decisions = _latest_events(dialect, "'accepted', 'rejected', 'deleted'",
                               "annotation_id, event_id, event_type, occurred_at")
    changes = _latest_events(dialect, "'created', 'proposed', 'edited'",
                             "annotation_id, event_id, label, occurred_at")
    return f"""
        from app.annotations as a
        join app.documents as d on d.document_id = a.document_id
        left join ({decisions}) as e on e.annotation_id = a.annotation_id
        left join ({changes}) as c on c.annotation_id = a.annotation_id
        where d.deleted_at is null
          and not {_blank('a.text')}
          and (e.event_id is null
               or (e.event_type <> 'deleted'
                   and (c.occurred_at > e.occurred_at
                        or (c.occurred_at = e.occurred_at and c.event_id > e.event_id))))"""


def floor_sql(dialect: str, limit: int | None = None) -> str:
    """The review queue in one hand-written query: pending live segments, their newest
    proposal, priority by (confidence nulls last, document_id bytewise, page, y0, x0,
    annotation_id bytewise), rows in that order."""
    collate = ' collate "C"' if dialect == "postgres" else ""
    order = (f"p.confidence asc nulls last, a.document_id{collate} asc, a.page asc nulls last, "
             f"a.y0 asc nulls last, a.x0 asc nulls last, a.annotation_id{collate} asc")
    body = pending_sql(dialect).replace(
        "where d.deleted_at is null",
        f"left join ({_newest_proposals(dialect)}) as p on p.annotation_id = a.annotation_id\n"
        "        where d.deleted_at is null", 1)
    return f"""
        select a.annotation_id, a.document_id, a.page, a.x0, a.y0, a.x1, a.y1, a.text,
               'pending' as review_state, c.label as current_label,
               p.model_version_id, p.label as proposed_label, p.confidence, p.margin,
               {_model_name('p.actor')} as model_name, {_model_version('p.actor')} as version,
               p.created_at as proposed_at,
               row_number() over (order by {order}) as priority
        {body}
        order by {order}{f' limit {int(limit)}' if limit else ''}"""


def view_sql(limit: int | None = None) -> str:
    return (f"select {', '.join(QUEUE_COLUMNS)} from datasets.review_queue order by priority"
            + (f" limit {int(limit)}" if limit else ""))


# -- setup: model versions and proposals ---------------------------------------------------


def register_versions(space: bench.Workspace, count: int = 2) -> list[tuple[int, int]]:
    """``count`` model versions of MODEL_NAME, registered as the store would (a succeeded
    run, then its version): [(model_version_id, version), …], oldest first."""
    now = datetime(2026, 6, 1)
    versions = []
    with space.database().session() as session:
        for version in range(1, count + 1):
            at = now + timedelta(days=version)
            run_id = int(session.scalar(
                "insert into training.training_runs (model_name, status, created_at, started_at, finished_at, "
                "params, artifact_uri) values (?, 'succeeded', ?, ?, ?, ?, ?) returning run_id",
                (MODEL_NAME, at, at, at, json.dumps({"benchmark": True}), f"bench://model/{version}")))
            model_version_id = int(session.scalar(
                "insert into training.model_versions (model_name, version, run_id, artifact_uri, artifact_sha256, "
                "created_at) values (?, ?, ?, ?, ?, ?) returning model_version_id",
                (MODEL_NAME, version, run_id, f"bench://model/{version}", "0" * 64, at)))
            versions.append((model_version_id, version))
    return versions


def pending_ids(space: bench.Workspace) -> list[str]:
    collate = ' collate "C"' if space.engine == "postgres" else ""
    with space.database().session() as session:
        rows = session.fetchall(f"select a.annotation_id {pending_sql(space.engine)} order by a.annotation_id{collate}")
    return [row[0] for row in rows]


def synthetic_proposals(ids: list[str], versions: list[tuple[int, int]]) -> pa.Table:
    """Seeded proposals: the newest version for NEWER_SHARE of ``ids``, the one before for
    OLDER_SHARE (independently), random labels, confidences in [0.25, 1] and margins in
    [0, confidence]; the same rows on every engine."""
    from trainer.data.synthetic import LABELS

    generator = random.Random(SEED)
    (older_id, older), (newer_id, newer) = versions[-2], versions[-1]
    columns: dict[str, list] = {name: [] for name in
                                ("model_version_id", "annotation_id", "actor", "label", "confidence", "margin",
                                 "created_at")}
    base = datetime(2026, 6, 10)
    for index, annotation_id in enumerate(ids):
        for version_id, version, share, day in ((older_id, older, OLDER_SHARE, 0), (newer_id, newer, NEWER_SHARE, 5)):
            if generator.random() >= share:
                continue
            confidence = generator.uniform(0.25, 1.0)
            columns["model_version_id"].append(version_id)
            columns["annotation_id"].append(annotation_id)
            columns["actor"].append(f"model:{MODEL_NAME}@{version}")
            columns["label"].append(generator.choice(LABELS))
            columns["confidence"].append(confidence)
            columns["margin"].append(confidence * generator.random())
            columns["created_at"].append(base + timedelta(days=day, milliseconds=index))
    return pa.table(columns, schema=pa.schema([
        ("model_version_id", pa.int64()), ("annotation_id", pa.string()), ("actor", pa.string()),
        ("label", pa.string()), ("confidence", pa.float64()), ("margin", pa.float64()),
        ("created_at", pa.timestamp("us")),
    ]))


def insert_proposals(space: bench.Workspace, proposals: pa.Table) -> None:
    """Bulk insert (setup, not timed); fresh statistics on PostgreSQL, as after a load."""
    columns = ", ".join(proposals.column_names)
    if space.engine == "duckdb":
        with space.database().session() as session:
            session._connection.register("bench_proposals", proposals)
            session.execute(f"insert into training.proposals ({columns}) select {columns} from bench_proposals")
            session._connection.unregister("bench_proposals")
        return
    with bench.pg_connect(space.pg_database) as connection:
        with connection.transaction():
            with connection.cursor().copy(f"copy training.proposals ({columns}) from stdin") as copy:
                for batch in proposals.to_batches(max_chunksize=100_000):
                    values = [column.to_pylist() for column in batch.columns]
                    for row in zip(*values):
                        copy.write_row(row)
        connection.execute("vacuum analyze training.proposals")


# -- 1. the review queue ----------------------------------------------------------------


@dataclass
class QueueResult:
    scale: int
    engine: str
    annotations: int
    events: int
    live_pending: int = 0
    proposals_newer: int = 0
    proposals_older: int = 0
    dbt_seconds: float = math.nan
    dbt_statuses: str = ""
    dbt_slowest: str = ""
    dbt_timed_out: bool = False
    rows: int = 0
    times: dict[str, list[float]] = field(default_factory=lambda: {case: [] for case in CASES})
    verified: str = ""
    plans: dict[str, str] = field(default_factory=dict)
    foreign_cpu: float = 0.0
    wall: float = 0.0

    def best(self, case: str) -> float:
        return min(self.times[case]) if self.times[case] else math.nan

    @property
    def ratio(self) -> float:
        return self.best("view") / self.best("floor")

    @property
    def page_ratio(self) -> float:
        return self.best("view_page") / self.best("floor_page")


def _same_rows(view: pa.Table, floor: pa.Table) -> str | None:
    """None when both tables hold the same values in every column and row, in order;
    else what differs."""
    if view.num_rows != floor.num_rows:
        return f"{view.num_rows:,} rows in the view, {floor.num_rows:,} in the floor"
    for name in QUEUE_COLUMNS:
        ours, theirs = view.column(name), floor.column(name)
        if theirs.type != ours.type:
            theirs = theirs.cast(ours.type)
        if not ours.equals(theirs):
            ours_list, theirs_list = ours.to_pylist(), theirs.to_pylist()
            index = next(i for i, (a, b) in enumerate(zip(ours_list, theirs_list)) if a != b)
            return (f"column {name} differs first at row {index + 1:,} (annotation "
                    f"{view.column('annotation_id')[index].as_py()!r}): view {ours_list[index]!r}, "
                    f"floor {theirs_list[index]!r}")
    return None


def measure_queue(space: bench.Workspace, result: QueueResult, timeout: float) -> None:
    queries = {
        "view": view_sql(),
        "view_page": view_sql(PAGE_ROWS),
        "floor": floor_sql(space.engine),
        "floor_page": floor_sql(space.engine, PAGE_ROWS),
    }
    tables: dict[str, pa.Table] = {}
    for attempt in range(REPEATS):
        order = CASES[attempt % len(CASES):] + CASES[:attempt % len(CASES)]  # rotate: each case leads once
        notes = []
        for case in order:
            seconds, table = bench.timed_query(space, lambda session, sql=queries[case]: session.fetch_arrow(sql),
                                               timeout)
            if seconds is None:
                raise BenchmarkError(f"{space.engine} at {result.scale:,}: {case} ran past {timeout:.0f} s")
            result.times[case].append(seconds)
            tables[case] = table
            notes.append(f"{case} {seconds:.3f} s")
        log(f"    round {attempt + 1}/{REPEATS}: " + ", ".join(notes))
    result.rows = tables["view"].num_rows
    problems = [problem for problem in (
        _same_rows(tables["view"], tables["floor"]),
        _same_rows(tables["view_page"], tables["floor_page"]),
        _same_rows(tables["view_page"], tables["view"].slice(0, PAGE_ROWS)),
    ) if problem]
    if problems:
        raise BenchmarkError(f"{space.engine} at {result.scale:,}: the view and the floor DISAGREE: "
                             + "; ".join(problems))
    view = tables["view"]
    with_proposal = view.num_rows - view.column("model_version_id").null_count
    result.verified = (f"same {result.rows:,} rows, all {len(QUEUE_COLUMNS)} columns, same order "
                       f"({with_proposal:,} with a proposal); first pages equal too")
    log(f"    the view and the floor agree: {result.verified}")
    if result.ratio > TARGET_RATIO:
        for name in ("view", "floor"):
            result.plans[name] = bench.explain(space, queries[name], analyze=True)
        log(f"    view/floor {result.ratio:.2f}x > {TARGET_RATIO}: EXPLAIN ANALYZE taken")


def run_queue_scale(scale: int, engines: list[str], parent: Path, created: list[str], spaces: list,
                    monitor: bench.CpuMonitor, args) -> list[QueueResult]:
    from trainer.data.synthetic import synthetic_app_data

    started = time.monotonic()
    data = synthetic_app_data(scale, seed=SEED)
    log(f"  generated {data.documents.num_rows:,} documents, {data.annotations.num_rows:,} annotations, "
        f"{data.annotation_events.num_rows:,} events in {time.monotonic() - started:.1f} s")
    results = []
    for engine in engines:
        cpu_before, began = monitor.sample(), time.monotonic()
        space = bench.new_workspace(parent, engine, scale, created)
        spaces.append(space)
        try:
            started = time.monotonic()
            bench.load_app_data(space, data)  # results schema migrated, app tables, rows (COPY + index + analyze)
            versions = register_versions(space)
            ids = pending_ids(space)
            proposals = synthetic_proposals(ids, versions)
            insert_proposals(space, proposals)
            result = QueueResult(scale, engine, data.annotations.num_rows, data.annotation_events.num_rows)
            result.live_pending = len(ids)
            newest = versions[-1][0]
            result.proposals_newer = int(sum(1 for v in proposals.column("model_version_id").to_pylist() if v == newest))
            result.proposals_older = proposals.num_rows - result.proposals_newer
            log(f"  {engine}: loaded in {time.monotonic() - started:.1f} s (setup); {len(ids):,} pending live "
                f"segments, proposals {result.proposals_newer:,} (version 2) + {result.proposals_older:,} "
                f"(version 1); dbt build…")
            bench.dbt_build(space, args.dbt_timeout, result)
            log(f"  {engine}: dbt build {'> ' if result.dbt_timed_out else ''}{result.dbt_seconds:.1f} s "
                f"({result.dbt_statuses}; slowest: {result.dbt_slowest or 'n/a'}); reading…")
            measure_queue(space, result, args.read_timeout)
            log(f"  {engine}: view {result.best('view'):.3f} s, first page {result.best('view_page'):.3f} s, "
                f"floor {result.best('floor'):.3f} s, view/floor {result.ratio:.2f}x")
        finally:
            bench.drop_workspace(space, created)
            spaces.remove(space)
        result.foreign_cpu = bench.CpuMonitor.foreign(cpu_before, monitor.sample())
        result.wall = time.monotonic() - began
        results.append(result)
    return results


# -- 2. propose ------------------------------------------------------------------------


@dataclass
class ChildRun:
    name: str
    seconds: float
    tree_peak_kib: int  # the sampled sum over the process tree
    hwm_kib: list[int]  # each process's own VmHWM, the command's process first
    stdout: str


@dataclass
class ProposeResult:
    scale: int
    engine: str
    live: int = 0
    pending: int = 0
    documents: int = 0  # with a pending segment
    page_segments: int = 0  # live segments of those documents: what propose predicts
    page_texts: int = 0  # their distinct texts
    uncached_texts: int = 0  # of them, not among the training examples' texts
    examples: int = 0
    train_args: list[str] = field(default_factory=list)
    train: ChildRun | None = None
    train_embedded: int = 0
    runs: list[tuple[ChildRun, dict]] = field(default_factory=list)  # (run, parsed summary)
    stored: int = 0  # rows in training.proposals after the runs
    train_params: dict = field(default_factory=dict)
    cached_before: int = 0  # vectors in the embedding cache after training
    cold: bool = False  # the cache was emptied before the first propose
    foreign_cpu: float = 0.0
    wall: float = 0.0


PROPOSE_LINE = re.compile(
    r"Proposed (\d+) label\(s\) with (\S+) version (\d+) \((\S+)\): (\d+) new, (\d+) changed, (\d+) unchanged, "
    r"in ([0-9.]+) s\.")


def cached_vectors(directory: Path) -> int:
    """Rows in the embedding cache's shards (trainer.model.encoder.cache) under ``directory``."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(path).metadata.num_rows for path in directory.rglob("*.parquet")) if directory.is_dir() else 0


def run_child(space: bench.Workspace, artifacts: Path, arguments: list[str], name: str, log_dir: Path) -> ChildRun:
    """`python -m trainer <arguments>` in a child process: wall time and the process tree's memory."""
    command = [sys.executable, "-m", "trainer", *arguments]
    started = time.perf_counter()
    # An ONNX export the run may need (--embedding-backend) is made in the workspace, and removed with it.
    env = {**space.env(artifacts), "TRAINER_ENCODER_CACHE": str(space.root / "encoders")}
    process = subprocess.Popen(command, cwd=space.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    sampler = RssSampler(process.pid, SAMPLE_SECONDS)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    sampler.stop()
    (log_dir / f"{name}.stdout").write_text(stdout)
    (log_dir / f"{name}.stderr").write_text(stderr)
    if process.returncode != 0:
        raise BenchmarkError(f"{name}: `{shlex.join(command[1:])}` exited {process.returncode}:\n{stderr[-3000:]}")
    hwm = [sampler.hwm_kib.get(process.pid, 0)] + [kib for pid, kib in sampler.hwm_kib.items() if pid != process.pid]
    return ChildRun(name, seconds, sampler.peak_kib, hwm, stdout)


def run_propose(scale: int, engine: str, parent: Path, created: list[str], spaces: list, log_dir: Path,
                monitor: bench.CpuMonitor, train_args: list[str], cold: bool) -> ProposeResult:
    from trainer.data.synthetic import synthetic_app_data

    cpu_before, began = monitor.sample(), time.monotonic()
    result = ProposeResult(scale, engine, train_args=train_args, cold=cold)
    space = bench.new_workspace(parent, engine, scale, created)
    spaces.append(space)
    try:
        started = time.monotonic()
        data = synthetic_app_data(scale, seed=SEED)
        bench.load_app_data(space, data)
        del data
        completed = subprocess.run(bench._dbt_command(space, "run"), cwd=bench.ROOT, env=space.env(),
                                   capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise BenchmarkError(f"dbt run failed on {engine}:\n{completed.stdout[-4000:]}")
        with space.database().session() as session:
            result.live, result.pending = (int(value) for value in session.fetchone(
                "select count(*), sum(case when review_state = 'pending' then 1 else 0 end) "
                "from datasets.live_segments"))
            result.examples = int(session.scalar("select count(*) from datasets.training_examples"))
            pages = ("select * from datasets.live_segments where document_id in (select document_id from "
                     "datasets.live_segments where review_state = 'pending')")
            result.documents, result.page_segments, result.page_texts = (int(value) for value in session.fetchone(
                f"select count(distinct document_id), count(*), count(distinct text) from ({pages}) as pages"))
            result.uncached_texts = int(session.scalar(
                f"select count(distinct text) from ({pages}) as pages "
                "where text not in (select text from datasets.training_examples)"))
        log(f"  propose workspace ({engine}) ready in {time.monotonic() - started:.1f} s (setup): "
            f"{result.pending:,} pending of {result.live:,} live segments in {result.documents:,} documents "
            f"({result.page_segments:,} segments on their pages, {result.page_texts:,} distinct texts, "
            f"{result.uncached_texts:,} not among the {result.examples:,} training examples' texts)")
        artifacts = space.root / "artifacts"
        log(f"  training the model version: train --quiet {shlex.join(train_args)}…")
        result.train = run_child(space, artifacts, ["train", "--quiet", *train_args], "train", log_dir)
        with space.database().session() as session:
            params = session.scalar("select params from training.training_runs order by run_id desc limit 1")
        params = json.loads(params) if isinstance(params, str) else params
        result.train_embedded = int(params.get("embedded_texts") or 0)
        result.train_params = {key: params.get(key) for key in ("embedded_texts", "page_context_segments",
                                                                "fit_seconds")}
        log(f"    trained in {result.train.seconds:.1f} s (embedded {result.train_embedded:,} texts), "
            f"tree peak {result.train.tree_peak_kib / 1024:.0f} MiB; {json.dumps(result.train_params)}")
        # The training run embedded the examples and the rest of their pages, the pending
        # segments there included. With --cold-propose the cache is emptied, so that the
        # first propose embeds every text of its pages.
        cache = artifacts / "embeddings"
        result.cached_before = cached_vectors(cache)
        if result.cached_before == 0:
            raise BenchmarkError(f"no embedding cache at {cache} after training: where does the blob store keep it?")
        if cold:
            shutil.rmtree(cache)
            log(f"    emptied the embedding cache ({result.cached_before:,} vectors) for a cold first propose")
        else:
            log(f"    the embedding cache holds {result.cached_before:,} vectors from training")
        for name in ("propose-first", "propose-warm"):
            run = run_child(space, artifacts, ["propose", "--quiet", "--model-name", "segment-labeler"], name,
                            log_dir)
            match = PROPOSE_LINE.search(run.stdout)
            if match is None:
                raise BenchmarkError(f"{name}: no summary line in its output:\n{run.stdout[-2000:]}")
            summary = {"proposed": int(match.group(1)), "new": int(match.group(5)), "changed": int(match.group(6)),
                       "unchanged": int(match.group(7)), "seconds": float(match.group(8)),
                       "actor": match.group(4)}
            summary["cached_after"] = cached_vectors(artifacts / "embeddings")
            result.runs.append((run, summary))
            log(f"    {name}: {run.seconds:.1f} s wall ({summary['seconds']:.1f} s inside), {summary['proposed']:,} "
                f"proposed: {summary['new']:,} new, {summary['changed']:,} changed; tree peak "
                f"{run.tree_peak_kib / 1024:.0f} MiB, VmHWM {', '.join(f'{k / 1024:.0f}' for k in run.hwm_kib)} MiB")
        with space.database().session() as session:
            result.stored = int(session.scalar("select count(*) from training.proposals"))
        cold, warm = result.runs[0][1], result.runs[1][1]
        if cold["proposed"] != result.pending or cold["new"] != result.pending or result.stored != result.pending:
            raise BenchmarkError(f"the cold propose run proposed {cold['proposed']:,} ({cold['new']:,} new; "
                                 f"{result.stored:,} stored) for {result.pending:,} pending segments")
        if warm["proposed"] != result.pending or warm["new"] != 0:
            raise BenchmarkError(f"the warm propose run proposed {warm['proposed']:,}, {warm['new']:,} new")
    finally:
        bench.drop_workspace(space, created)
        spaces.remove(space)
    result.foreign_cpu = bench.CpuMonitor.foreign(cpu_before, monitor.sample())
    result.wall = time.monotonic() - began
    return result


# -- the report --------------------------------------------------------------------------


def fmt_s(value: float) -> str:
    return bench.fmt_s(value)


def fmt_ratio(value: float) -> str:
    return bench.fmt_ratio(value)


def mib(kib: int) -> str:
    return f"{kib / 1024:,.0f}"


def duckdb_profile(plan: str, top: int = 6) -> list[tuple[str, float, int]]:
    """The operators of a DuckDB EXPLAIN ANALYZE tree (boxes `╭─ Name ─╮` whose last line
    reads `N rows  T`) with the most time of their own: (name, seconds, rows)."""
    units = {"µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
    found, open_boxes = [], []  # open boxes: [start column, end column, name]
    for line in plan.splitlines():
        for match in re.finditer(r"╭─ ([^─]+?) ─+[┴─]*─*╮", line):
            open_boxes.append([match.start(), match.end(), match.group(1).strip()])
        for box in list(open_boxes):
            timing = re.search(r"([\d,]+) rows\s+([0-9.]+)(µs|us|ms|s)\b", line[box[0]:box[1]])
            if timing:
                found.append((box[2], float(timing.group(2)) * units[timing.group(3)],
                              int(timing.group(1).replace(",", ""))))
                open_boxes.remove(box)
            elif line[box[0]:box[0] + 1] == "╰":
                open_boxes.remove(box)
    return sorted(found, key=lambda item: -item[1])[:top]


def postgres_profile(plan: str, top: int = 8) -> list[str]:
    """The PostgreSQL plan's nodes that ran once (not per outer row, not in parallel
    workers), heaviest first: their inclusive actual times."""
    nodes = []
    for line in plan.splitlines():
        match = re.search(r"->\s*(.+?)\s+\(cost=.*?actual time=[0-9.]+\.\.([0-9.]+) rows=(\d+) loops=(\d+)", line)
        if match and int(match.group(4)) == 1:
            nodes.append((float(match.group(2)), match.group(1), int(match.group(3))))
    nodes.sort(key=lambda node: -node[0])
    return [f"{name} {ms / 1000:.2f} s ({rows:,} rows)" for ms, name, rows in nodes[:top]]


def change_events_note(r: QueueResult) -> list[str]:
    """How often a PostgreSQL plan reads and sorts the change events (created, proposed,
    edited: each annotation's latest change), the view's against the floor's."""
    def scans(plan: str) -> int:
        return sum(1 for line in plan.splitlines() if "Filter:" in line and "{created,proposed,edited}" in line)

    view, floor = scans(r.plans["view"]), scans(r.plans["floor"])
    timed = [f"{match.group(1)} {float(match.group(2)) / 1000:.2f} s" for match in re.finditer(
        r"Subquery Scan on (latest_changes\w*)\s+\(cost=\S+ rows=\d+ width=\d+\) \(actual time=[0-9.]+\.\.([0-9.]+)",
        r.plans["view"])]
    if view <= floor:
        return []
    return [(
        f"The view reads and sorts the change events {view} times, the floor {floor}: each annotation's latest "
        "change (`int_annotation_changes`, a DISTINCT ON over the `created`/`proposed`/`edited` events, which "
        "no index serves in that order) is computed once inside `live_segments`, for review_state, and again "
        "in `review_queue`, for current_label"
        + (f" (in the plan: {', '.join(timed)}, inclusive" if timed else "")
        + (f", of {re.search(r'Execution Time: ([0-9.]+)', r.plans['view']).group(1)} ms)"
           if timed and re.search(r"Execution Time: ([0-9.]+)", r.plans["view"]) else (")" if timed else ""))
        + "."
    )]


def render(args, command: str, invoked: str, info: dict[str, str], queue: list[QueueResult],
           propose: ProposeResult | None, elapsed: float, date: str, findings: dict[str, list[str]]) -> str:
    cold = propose is not None and propose.cold
    lines = [
        START_MARKER,
        "## Review loop: `datasets.review_queue` against its floor, and `propose` at 100k pending segments",
        "",
        (
            "**The queue.** Synthetic app data (`trainer.data.synthetic.synthetic_app_data`, the dirty cases of "
            "scripts/bench.py's section) is loaded per scale and engine into a fresh database as bench.py loads it "
            "(a temporary DuckDB file, or a PostgreSQL database created for the run: COPY, the app's index of "
            "docs/DEPLOYMENT.md §2, `VACUUM ANALYZE`), the results schema is migrated, two model versions of "
            f"`{MODEL_NAME}` are registered (a succeeded training run and its version each, inserted as the store "
            "does; no artifact behind them) and training.proposals gets seeded random proposals: version 2 for "
            f"{NEWER_SHARE:.0%} of the pending live segments, version 1 for {OLDER_SHARE:.0%} (drawn independently; "
            "random labels, confidence uniform in [0.25, 1], margin uniform in [0, confidence]; PostgreSQL: "
            "COPY and `VACUUM ANALYZE training.proposals`). All of that is setup, not timed. Then `dbt build` of "
            "the project is timed (every model and data test). **Reading**, best of 3 rounds, the four cases run "
            "one after the other in each round, in an order that rotates each round, each in a fresh session, "
            "fetched into one Arrow table (`Session.fetch_arrow`): the **view** "
            f"(`select <its {len(QUEUE_COLUMNS)} columns> from datasets.review_queue order by priority`), its "
            f"**first page** (the same `limit {PAGE_ROWS}`), and the **floor**: one hand-written query over "
            "app.annotations, app.documents, app.annotation_events and training.proposals that applies CONTRACT "
            "§7.1 (document present and not deleted, text not blank, the deciding event not `deleted`; pending: "
            "no deciding event, or a latest `created`/`proposed`/`edited` event after it in (occurred_at, "
            "event_id) order), takes each segment's proposal of the greatest model_version_id and numbers the "
            "rows in the queue's order (confidence ascending with no proposal last, document_id and annotation_id "
            "bytewise, page, y0, x0); latest events and newest proposals by `DISTINCT ON` on PostgreSQL and "
            "`QUALIFY row_number()` on DuckDB; and the floor's first page (`limit "
            f"{PAGE_ROWS}`). The view and the floor are checked to give the same rows: every column of every row "
            "in the same order (annotation_id order and the proposal columns included), and the first pages equal "
            "each other and the view's first rows. view/floor is the view's best time over the floor's best; "
            f"page/floor page likewise for the first pages. The target: view/floor ≤ {TARGET_RATIO}× at 1M "
            "annotations on both engines."
        ),
        "",
        (
            "**propose.** Synthetic app data at the scale that gives about 100,000 pending live segments "
            f"({args.propose_scale:,} annotations), {NAME[propose.engine] if propose else 'DuckDB'}, `dbt run` "
            "(setup); a model version trained on it by `python -m trainer train --quiet"
            + (f" {shlex.join(args.train_args)}" if args.train_args else "")
            + "` (the default model's features: embedding and character n-gram text models, a second stage over "
            "layout and neighbour features"
            + ("; `--no-label-issues` skips the search for label issues, which the model version does not use, "
               "and `--embedding-backend onnx-int8` embeds with the int8 ONNX encoder (2.4× plain encode in "
               "bench.py's section): the ~100,000 texts training embeds would take far longer with torch on a "
               "shared machine" if args.train_args == DEFAULT_TRAIN_ARGS else "")
            + "). Then `python -m trainer propose --quiet` in a child process twice on the same blob store. "
            + (
                "The training run embedded the examples and the other segments on their pages (its page "
                "context), nearly all the pending segments among them, so that cache is emptied first (its "
                "directory `embeddings/` removed): the first run embeds every distinct text on the pages it "
                "predicts (**cold**) and writes every proposal. "
                if cold else
                "The first run finds in the embedding cache what the training run embedded: the examples and the "
                "other segments on their pages (its page context), which holds nearly all the pending segments' "
                "texts; it embeds the rest and writes every proposal (**first**: the cache is warmed beforehand "
                "by training, as in real use; a run on an empty cache, `--cold-propose`, would embed the ~100,000 "
                "texts again, minutes of encoder time that say nothing about propose itself). "
            )
            + "The second finds every vector in the cache and every proposal already written (**warm**): it "
            "reads, predicts and compares, and writes nothing. Wall time is the child's, start to exit (Python "
            "start-up and imports included); segments/s is pending segments proposed for over that wall time; "
            "peak RSS is the largest sum of VmRSS over the child's process tree (the command and, once a text is "
            "missing from the cache, its encoder process), sampled every "
            f"{SAMPLE_SECONDS * 1000:.0f} ms (scripts/process_memory.py), beside each process's own VmHWM (its "
            "exact high-water mark)."
        ),
        "",
        *run_header(date, info, LIBRARIES, command, invoked, also=f"; PostgreSQL server {info['postgres']}"),
        f"- Whole run, including generating and loading the data and training: {elapsed:.0f} s ({elapsed / 60:.1f} min)",
        (
            "- CPU time of other processes meanwhile (machine busy time from /proc/stat minus this benchmark's "
            f"and its children's and the PostgreSQL server's; includes the kernel's own): {info['foreign_cpu']}"
        ),
        "",
        "### The review queue: dbt build and reading (best of 3)",
        "",
        (
            "| annotations | engine | pending live segments (rows) | proposals v2 + v1 | `dbt build` s | view s | first "
            f"page s | floor s | floor first page s | **view/floor** | page/floor page | rows checked |"
        ),
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in queue:
        dbt = f"> {r.dbt_seconds:.0f}" if r.dbt_timed_out else fmt_s(r.dbt_seconds)
        lines.append(
            f"| {r.scale:,} | {NAME[r.engine]} | {r.rows:,} | {r.proposals_newer:,} + {r.proposals_older:,} | {dbt} "
            f"| {fmt_s(r.best('view'))} | {fmt_s(r.best('view_page'))} | {fmt_s(r.best('floor'))} "
            f"| {fmt_s(r.best('floor_page'))} | **{fmt_ratio(r.ratio)}** | {fmt_ratio(r.page_ratio)} | {r.verified} |"
        )
    lines += [
        "",
        (
            "A first page returns 50 rows, so its time is nearly all the database's own work (to number the "
            "rows by priority the whole queue is still computed and sorted); a whole fetch adds turning every "
            "row into Arrow, which on PostgreSQL goes through psycopg's Python objects: work both the view and "
            "the floor pay alike, which brings their ratio towards 1. page/floor page is therefore the closer "
            "measure of the SQL itself; view/floor is the measure the target names."
        ),
        "",
        "Every round's times (s), in the order view, first page, floor, floor first page:",
        "",
    ]
    for r in queue:
        rounds = "; ".join(
            ", ".join(fmt_s(r.times[case][i]) for case in CASES) for i in range(min(len(v) for v in r.times.values())))
        lines.append(f"- {r.scale:,} {NAME[r.engine]}: {rounds}. `dbt build`: {r.dbt_statuses}; slowest nodes "
                     f"{r.dbt_slowest or 'n/a'}. Other processes' CPU time while this engine ran: "
                     f"{r.foreign_cpu:.0f} s over {r.wall:.0f} s.")
    if any(r.dbt_timed_out for r in queue):
        lines += ["", *FINDINGS.get("dbt", [])]
    slow = [r for r in queue if r.plans]
    if slow:
        lines += ["", f"### Where the view's time goes (view/floor above {TARGET_RATIO}×)", ""]
        for r in slow:
            lines.append(f"**{r.scale:,} annotations, {NAME[r.engine]}** ({fmt_ratio(r.ratio)}: "
                         f"{fmt_s(r.best('view'))} s against {fmt_s(r.best('floor'))} s), EXPLAIN ANALYZE:")
            lines.append("")
            for name in ("view", "floor"):
                plan = r.plans[name]
                if r.engine == "duckdb":
                    total = re.search(r"Total Time: ([0-9.]+)s", plan)
                    ops = duckdb_profile(plan)
                    lines.append(f"- {name}: total {total.group(1) if total else 'n/a'} s; heaviest operators (own time) "
                                 + "; ".join(f"{op} {seconds:.3f} s ({rows:,} rows)" for op, seconds, rows in ops)
                                 + ".")
                else:
                    execution = next((line.strip() for line in plan.splitlines()
                                      if line.strip().startswith("Execution Time")), "Execution Time n/a")
                    lines.append(f"- {name}: {execution}; heaviest nodes run once (inclusive time) "
                                 + "; ".join(postgres_profile(plan)) + ".")
            if r.engine == "postgres":
                lines += ["", *change_events_note(r)]
                lines += ["", "The view's plan, top:", "", "```", bench.plan_excerpt(r.plans["view"], 24, 200), "```"]
            lines.append("")
        for engine in dict.fromkeys(r.engine for r in slow):
            lines += findings.get(engine, [])
    if propose is not None:
        p = propose
        lines += [
            "",
            f"### propose at {p.pending:,} pending live segments ({p.scale:,} annotations, {NAME[p.engine]})",
            "",
            (
                f"The data: {p.live:,} live segments, {p.pending:,} of them pending, in {p.documents:,} documents; "
                f"propose predicts every live segment of those documents ({p.page_segments:,}: the pending ones "
                f"and their decided neighbours on the page), {p.page_texts:,} distinct texts, of which "
                f"{p.uncached_texts:,} are not among the texts of the {p.examples:,} training examples. The model "
                f"version: `train --quiet{(' ' + shlex.join(p.train_args)) if p.train_args else ''}`, "
                f"{p.train.seconds:.0f} s wall, {p.train_embedded:,} distinct texts embedded (those of the "
                f"{p.examples:,} examples and of the {p.train_params.get('page_context_segments') or 0:,} other "
                f"live segments on their pages), tree peak {mib(p.train.tree_peak_kib)} MiB, fit seconds: "
                + ", ".join(f"{key} {value:.0f}" for key, value in (p.train_params.get("fit_seconds") or {}).items())
                + f" (setup, not compared). It left {p.cached_before:,} vectors in the embedding cache"
                + (", which was then emptied." if p.cold else ".")
            ),
            "",
            "| run | wall s | pending segments | segments/s | proposals new | changed | unchanged "
            "| vectors in the cache after | tree peak RSS MiB | VmHWM per process MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        labels = ("cold (first)" if p.cold else "first (cache from training)", "warm (second)")
        for (run, summary), label in zip(p.runs, labels):
            rate = summary["proposed"] / run.seconds
            hwm = " + ".join(mib(kib) for kib in run.hwm_kib)
            lines.append(
                f"| {label} | {run.seconds:.1f} | {summary['proposed']:,} | {rate:,.0f} | {summary['new']:,} "
                f"| {summary['changed']:,} | {summary['unchanged']:,} | {summary['cached_after']:,} | {mib(run.tree_peak_kib)} "
                f"| {hwm} ({'propose + encoder process' if len(run.hwm_kib) > 1 else 'propose alone'}) |"
            )
        cold, warm = p.runs[0], p.runs[1]
        lines += [
            "",
            (
                f"The command's own timer (its summary line) said {cold[1]['seconds']:.1f} s for the first run and "
                f"{warm[1]['seconds']:.1f} s warm: the rest of the wall time is Python start-up and imports. The "
                f"first run embedded {cold[1]['cached_after'] - p.cached_before:,} text(s) (the vectors the "
                "cache gained): "
                + ("every text of its pages." if p.cold else
                   "the training run had embedded all the others; still, its first miss started the encoder "
                   "process, whose memory is the second figure of its VmHWM column.")
                + f" Checked: the first run wrote one proposal per pending segment ({p.stored:,} rows in "
                f"training.proposals), the warm one {warm[1]['new']:,} new and {warm[1]['changed']:,} changed. Other "
                f"processes' CPU time during this part: {p.foreign_cpu:.0f} s over {p.wall:.0f} s."
            ),
        ]
    lines += ["", "### Targets", ""]
    by = {(r.scale, r.engine): r for r in queue}
    for engine in ("duckdb", "postgres"):
        r = by.get((1_000_000, engine))
        if r is None:
            lines.append(f"- review_queue ≤ {TARGET_RATIO}× its floor at 1M on {NAME[engine]}: **not measured**.")
        else:
            verdict = "met" if r.ratio <= TARGET_RATIO else "NOT met"
            lines.append(f"- review_queue ≤ {TARGET_RATIO}× its floor at 1M on {NAME[engine]}: **{verdict}** "
                         f"({fmt_ratio(r.ratio)}: {fmt_s(r.best('view'))} s against {fmt_s(r.best('floor'))} s).")
    at_big = [r for r in queue if r.scale == 1_000_000]
    if at_big:
        lines.append("- The same SQL without the fetch (first pages, 50 rows) at 1M: "
                     + "; ".join(f"{NAME[r.engine]} {fmt_ratio(r.page_ratio)} ({fmt_s(r.best('view_page'))} s against "
                                 f"{fmt_s(r.best('floor_page'))} s)" for r in at_big)
                     + " (not the target's measure; see above).")
    for r in queue:
        if r.dbt_timed_out:
            lines.append(f"- Not a target, but to fix: `dbt build` at {r.scale:,} annotations on {NAME[r.engine]} did "
                         f"not finish within {r.dbt_seconds:.0f} s (see \"Why `dbt build` was stopped\").")
    if propose is not None:
        run, summary = propose.runs[1]
        lines.append(f"- propose at about 100k pending segments, warm cache (no target was set; the figure to "
                     f"watch): {run.seconds:.1f} s for {summary['proposed']:,} segments, "
                     f"{summary['proposed'] / run.seconds:,.0f} segments/s, peak {mib(run.tree_peak_kib)} MiB.")
    lines += ["", "s = seconds, best of the rounds unless said otherwise; MiB = 2^20 bytes.", END_MARKER]
    return "\n".join(lines) + "\n"


# -- results as JSON (to write the section again without running) ----------------------------


def save_results(path: Path, run: dict) -> None:
    from dataclasses import asdict

    payload = dict(run)
    payload["queue"] = [asdict(r) for r in run["queue"]]
    payload["propose"] = asdict(run["propose"]) if run["propose"] is not None else None
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")


def load_results(path: Path) -> dict:
    run = json.loads(path.read_text(encoding="utf-8"))
    run["queue"] = [QueueResult(**r) for r in run["queue"]]
    if run["propose"] is not None:
        p = dict(run["propose"])
        p["train"] = ChildRun(**p["train"]) if p["train"] else None
        p["runs"] = [(ChildRun(**child), summary) for child, summary in p["runs"]]
        run["propose"] = ProposeResult(**p)
    return run


def write_report(run: dict, output: Path) -> str:
    args = argparse.Namespace(**run["args"])
    section = render(args, run["command"], run["invoked"], run["info"], run["queue"], run["propose"],
                     run["elapsed"], run["date"], FINDINGS)
    write_section(output, section, START_MARKER, END_MARKER)
    return section


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=bench.parse_scales, default="100000,1000000",
                        help="annotations in the app for the review queue, comma-separated (default: 100000,1000000)")
    parser.add_argument("--engines", type=bench.parse_engines, default="duckdb,postgres",
                        help="comma-separated; propose runs on the first (default: duckdb,postgres)")
    parser.add_argument("--propose-scale", type=int, default=DEFAULT_PROPOSE_SCALE,
                        help=f"annotations for the propose part, 0 to skip it (default: {DEFAULT_PROPOSE_SCALE}, "
                             "about 100,000 pending live segments)")
    parser.add_argument("--train-args", type=shlex.split, default=shlex.join(DEFAULT_TRAIN_ARGS),
                        help="extra arguments of `trainer train` for the propose part, as one string "
                             f"(default: {shlex.join(DEFAULT_TRAIN_ARGS)!r}: the default model's features, no label-issue "
                             "search, the int8 ONNX encoder; pass it as --train-args='…')")
    parser.add_argument("--cold-propose", action="store_true",
                        help="empty the embedding cache after training, so that the first propose embeds every text "
                             "on its pages (default: keep what training embedded, the pages of the examples)")
    parser.add_argument("--results-json", type=Path, default=None,
                        help="also write the run's figures to this JSON file (for --render-from)")
    parser.add_argument("--render-from", type=Path, default=None,
                        help="write the section from a --results-json file of an earlier run, running nothing")
    parser.add_argument("--read-timeout", type=float, default=600.0,
                        help="seconds after which a read is cancelled and the benchmark stops (default: 600)")
    parser.add_argument("--dbt-timeout", type=float, default=1200.0,
                        help="seconds after which `dbt build` is stopped (then `dbt run` makes the views; "
                             "default: 1200)")
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"),
                        help="Markdown file whose bench_review_loop section is replaced (default: docs/BENCHMARKS.md)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the temporary workspaces are made, and removed (default: a temp dir)")
    args = parser.parse_args(argv)
    output = args.output if args.output.is_absolute() else Path.cwd() / args.output
    if args.render_from is not None:
        section = write_report(load_results(args.render_from), output)
        log(f"wrote {output} from {args.render_from}")
        print(section)
        return 0
    if not args.scales and not args.propose_scale:
        parser.error("nothing to do: --scales is empty and --propose-scale is 0")
    command = shlex.join([
        ".venv/bin/python", "scripts/bench_review_loop.py", "--scales", ",".join(map(str, args.scales)),
        "--engines", ",".join(args.engines), "--propose-scale", str(args.propose_scale),
        f"--train-args={shlex.join(args.train_args)}", *(["--cold-propose"] if args.cold_propose else []),
        "--read-timeout", f"{args.read_timeout:g}", "--dbt-timeout", f"{args.dbt_timeout:g}",
        "--output", str(args.output),
    ] + (["--workdir", str(args.workdir)] if args.workdir else []))
    invoked = shlex.join([".venv/bin/python", "scripts/bench_review_loop.py",
                          *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, bench._terminate)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, bench._terminate)

    began = time.monotonic()
    monitor = bench.CpuMonitor()
    cpu_start = monitor.sample()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    parent = Path(tempfile.mkdtemp(prefix="bench-review-", dir=args.workdir))
    created: list[str] = []
    spaces: list[bench.Workspace] = []
    queue: list[QueueResult] = []
    propose = None
    try:
        log(f"workspaces under {parent}; queue at {args.scales} on {args.engines}; propose at "
            f"{args.propose_scale:,} annotations")
        postgres_version = None
        if "postgres" in args.engines:
            try:
                postgres_version = bench.postgres_server_version()
            except Exception as exc:
                raise BenchmarkError(f"PostgreSQL unreachable at {bench.PG_HOST}:{bench.PG_PORT}: {exc}") from exc
            bench.drop_stale_pg_databases()
        log_dir = parent / "logs"
        log_dir.mkdir()
        for scale in args.scales:
            log(f"== review queue at {scale:,} annotations ==")
            queue += run_queue_scale(scale, args.engines, parent, created, spaces, monitor, args)
        if args.propose_scale:
            log(f"== propose at {args.propose_scale:,} annotations ==")
            propose = run_propose(args.propose_scale, args.engines[0], parent, created, spaces, log_dir, monitor,
                                  args.train_args, args.cold_propose)
        elapsed = time.monotonic() - began
        info = {**describe_machine(LIBRARIES), "postgres": postgres_version or "not used"}
        foreign = bench.CpuMonitor.foreign(cpu_start, monitor.sample())
        cpus = int(info["nproc"]) if info["nproc"].isdigit() else os.cpu_count() or 1
        parts = [f"queue {r.scale:,} {NAME[r.engine]}: {r.foreign_cpu:.0f} s over {r.wall:.0f} s" for r in queue]
        if propose is not None:
            parts.append(f"propose: {propose.foreign_cpu:.0f} s over {propose.wall:.0f} s")
        info["foreign_cpu"] = (f"{foreign:.0f} CPU-seconds, {100 * foreign / (elapsed * cpus):.1f}% of the {cpus} "
                               f"CPUs' time (per part: {'; '.join(parts)})")
        log(f"CPU time of other processes during the run: {info['foreign_cpu']}")
        run = {
            "args": {"propose_scale": args.propose_scale, "train_args": args.train_args},
            "command": command, "invoked": invoked, "info": info, "queue": queue, "propose": propose,
            "elapsed": elapsed, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        }
        if args.results_json is not None:
            save_results(args.results_json, run)
            log(f"figures saved to {args.results_json}")
        section = write_report(run, output)
        log(f"wrote {output} in {elapsed:.0f} s")
        print(section)
        return 0
    except BenchmarkError as exc:
        log(f"BENCHMARK ABORTED: {exc}")
        return 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for space in list(spaces):
            bench.drop_workspace(space, created)
        if created:
            try:
                with bench.pg_connect() as connection:
                    for name in created:
                        connection.execute(f'drop database if exists "{name}" with (force)')
            except Exception as exc:  # noqa: BLE001 -- say what is left
                log(f"could not drop {created}: {exc}")
        shutil.rmtree(parent, ignore_errors=True)


# What the plans of a run showed, per engine: shown under that engine's plans (only when
# its view/floor ratio exceeded the target at some scale); "dbt" under the dbt rounds
# when a `dbt build` was stopped.
FINDINGS: dict[str, list[str]] = {
    "postgres": [
        (
            "**Proposed change** (models/marts/live_segments.sql and review_queue.sql), so that the latest "
            "change is computed once: `live_segments` already joins `int_annotation_changes`; let it carry "
            "`changes.changed_label as current_label` in its `live` CTE (and declare the column in "
            "_marts__models.yml, whose contract is enforced; CONTRACT §7.3 lists columns \"at least\"), then "
            "in `review_queue` drop the `changes` CTE and its `left join` and select "
            "`pending_segments.current_label`. If live_segments' columns must stay as they are, move its body "
            "into an intermediate model (`int_live_segments`, with current_label) that `live_segments` selects "
            "its columns from and `review_queue` reads. Either way PostgreSQL has one sort of the change events "
            "to do, as the floor has; DuckDB runs the same SQL, so it would skip its second computation too."
        ),
        "",
    ],
    "dbt": [
        (
            "**Why `dbt build` was stopped at 1,000,000 annotations on PostgreSQL.** Looked at in `pg_stat_activity` "
            "about 11 minutes into the build, the server was running one query of it, and had been for 11 "
            "minutes: the data test `not_null_int_proposal_answers_annotation_id` (`select … from "
            "datasets.int_proposal_answers where annotation_id is null`). The build was stopped at 1,200 s. At 100,000 "
            "annotations the same test took about 3 s (the build's slowest node, above). EXPLAIN of that query on this run's database: `int_proposal_answers` reads its CTE "
            "`placed` (every event with its `dense_rank()` place, 4.9M rows) three times, so PostgreSQL "
            "materialises it, and a materialised CTE has no statistics: `places` (the `group by annotation_id, "
            "place` over it) is estimated at 40,000 rows, and `model_proposals` with the test's `annotation_id "
            "is null` pushed into it at 1 row. The join `model_proposals ⋈ following on (annotation_id, place)` "
            "becomes a Nested Loop whose inner side is `CTE Scan on placed` (4.9M rows, filter applied on every "
            "rescan), run once per row of `following` (millions): quadratic. The views themselves are not "
            "affected by this plan (the queue reads neither `int_proposal_answers` nor `proposal_outcomes`); "
            "`dbt run` built every view in 5 s and the reads below ran on them."
        ),
        "",
        (
            "Proposed change (models/intermediate/int_proposal_answers.sql): stop joining back on (annotation_id, "
            "place). Compute the two look-aheads on the event rows themselves, `min(case when event_type in "
            "('accepted', 'rejected', 'deleted') then place end) over (partition by annotation_id order by place "
            "range between 1 following and unbounded following) as answer_place` and the same for `proposed` as "
            "`next_proposal_place` (a RANGE frame skips the other events of the same place, which is what the "
            "`places` aggregate is there for; PostgreSQL ≥ 11 and DuckDB both take an integer RANGE offset), in "
            "the CTE that numbers the places. Then `model_proposals` is a filter of that CTE, `places` and "
            "`following` go, and the only join left is the answer lookup (`left join decision_at_place on "
            "annotation_id and place = answer_place`), which the planner can hash. If the CTE is still read "
            "twice, write it `as not materialized` on PostgreSQL or make `placed` an ephemeral model, so that "
            "the planner estimates from the table's statistics instead of guessing. At the least, the "
            "`not_null` tests on `int_proposal_answers.event_id` and `.annotation_id` check what its `events` CTE "
            "already filters (`annotation_id is not null and event_id is not null`): dropping them removes the "
            "query that hit this plan, though not the plan's fragility."
        ),
    ],
}


if __name__ == "__main__":
    sys.exit(main())
