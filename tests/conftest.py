"""Shared fixtures. Every test gets its own database, on DuckDB (a file) or on
PostgreSQL (a database this test session creates on the local server and drops
at the end), its own artifact store, and dbt runs for real against them.

One parametrized fixture, ``engine``, runs a test on both engines. PostgreSQL is
found through PGHOST/PGPORT/PGUSER (default 127.0.0.1:5432, user postgres);
when it cannot be reached its tests are skipped, or fail when CI=true.

What takes seconds to build (dbt-built databases, trained models) is built once
per test run, by whichever pytest-xdist worker needs it first, under a file
lock, and copied into each test's workspace: a DuckDB file is copied, a
PostgreSQL database is created with the built one as its template.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Hypothesis profiles: "ci" (CI set) replays fixed examples, "fuzz" (scripts/fuzz.sh)
# explores; the hook scales max_examples for fuzz. See hypothesis_profiles.py.
from hypothesis_profiles import pytest_collection_modifyitems  # noqa: E402,F401

ENGINES = ("duckdb", "postgres")
PARTIAL_PARSE_FILE = "partial_parse.msgpack"  # dbt's own name for it, in the target path
PG_HOST = os.environ.get("PGHOST") or "127.0.0.1"
PG_PORT = os.environ.get("PGPORT") or "5432"
PG_USER = os.environ.get("PGUSER") or "postgres"


# One test run (the xdist controller and its workers) shares a name and a folder:
# the controller sets them before the workers start, and removes both at the end.
_RUN_VARIABLE = "TDP_TEST_RUN"
_SHARED_VARIABLE = "TDP_TEST_SHARED"


def _is_xdist_worker(config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config):
    if not _is_xdist_worker(config):
        os.environ[_RUN_VARIABLE] = secrets.token_hex(4)
        os.environ[_SHARED_VARIABLE] = tempfile.mkdtemp(prefix="tdp-test-shared-")


def pytest_unconfigure(config):
    if _is_xdist_worker(config) or _RUN_VARIABLE not in os.environ:
        return
    shutil.rmtree(os.environ.pop(_SHARED_VARIABLE), ignore_errors=True)
    run = os.environ.pop(_RUN_VARIABLE)
    # Templates are shared by the workers, so none of them can drop them: the controller does, last.
    with contextlib.suppress(Exception):
        PostgresServer.drop_run(run)


def shared_folder() -> Path:
    return Path(os.environ[_SHARED_VARIABLE])


@contextlib.contextmanager
def run_wide_lock(name: str):
    """Held by one process of the test run at a time (all xdist workers)."""
    with open(shared_folder() / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class PostgresServer:
    """Creates throwaway databases for this test session and drops them all at the end."""

    def __init__(self):
        self.run_prefix = f"tdp_test_{os.environ[_RUN_VARIABLE]}"
        self.prefix = f"{self.run_prefix}_{os.getpid()}"
        self.created: list[str] = []

    @staticmethod
    def drop_run(run: str) -> None:
        """Drop every database of test run ``run`` (shared templates included)."""
        import psycopg

        with psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True, connect_timeout=5
        ) as connection:
            names = connection.execute(
                "select datname from pg_database where datname like %s", (f"tdp_test_{run}_%",)
            ).fetchall()
            for (name,) in names:
                connection.execute(f'drop database if exists "{name}" with (force)')

    def connect(self, dbname: str = "postgres", user: str | None = None):
        import psycopg

        return psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=user or PG_USER, dbname=dbname, autocommit=True, connect_timeout=5
        )

    def create_database(self) -> str:
        name = f"{self.prefix}_{len(self.created)}"
        with self.connect() as connection:
            connection.execute(f'create database "{name}" template template0 encoding \'UTF8\'')
        self.created.append(name)
        return name

    def shared_database(self, key: str) -> str:
        """The name of a database all workers of this test run share (a template)."""
        return f"{self.run_prefix}_shared_{key}"

    def recreate(self, name: str, template: str = "template0") -> None:
        with self.connect() as connection:
            connection.execute(f'drop database if exists "{name}" with (force)')
            connection.execute(f'create database "{name}" template "{template}" encoding \'UTF8\'')

    def drop_all(self) -> None:
        with self.connect() as connection:
            for name in self.created:
                connection.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer()
    try:
        with server.connect() as connection:
            connection.execute("select 1")
    except Exception as exc:  # any failure to reach the server
        message = f"PostgreSQL unreachable at {PG_HOST}:{PG_PORT} as {PG_USER}: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    yield server
    server.drop_all()


@dataclass
class Workspace:
    """An isolated set of CONTRACT §6 settings: one database, one artifact store."""

    root: Path
    target: str = "duckdb"
    pg_database: str | None = None
    server: PostgresServer | None = field(default=None, repr=False)
    duckdb_name: str = "warehouse.duckdb"

    @property
    def duckdb_path(self) -> Path:
        return self.root / self.duckdb_name

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def copy_database(self, root: Path) -> Workspace:
        """A workspace at ``root`` whose database is a copy of this one's (its blob store is empty)."""
        copy = Workspace(root, self.target, self.server and self.server.create_database(), self.server)
        copy.copy_from(self)
        return copy

    def copy_from(self, other: Workspace, with_artifacts: bool = False) -> None:
        """Make this workspace's database (and with ``with_artifacts`` its blob store) a copy of ``other``'s.

        The blob store's URIs in the copied results tables are moved to this
        workspace's store, so that every stored URI names a file of this copy.
        """
        if self.target == "duckdb":
            shutil.copyfile(other.duckdb_path, self.duckdb_path)
        else:
            self.server.recreate(self.pg_database, template=other.pg_database)
        if with_artifacts:
            shutil.copytree(other.artifacts, self.artifacts, dirs_exist_ok=True)
            self._move_uris(str(other.artifacts), str(self.artifacts))

    def _move_uris(self, old_root: str, new_root: str) -> None:
        with self.database().session() as session:
            columns = session.fetchall(
                "select table_name, column_name from information_schema.columns where table_schema = 'training' "
                "and data_type in ('VARCHAR', 'text', 'character varying')"
            )
            for table, column in columns:
                session.execute(
                    f"update training.{table} set {column} = replace({column}, ?, ?) where strpos({column}, ?) > 0",
                    (old_root, new_root, old_root),
                )

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TRAINER_TARGET=self.target,
            TRAINER_DUCKDB_PATH=str(self.duckdb_path),
            TRAINER_ARTIFACTS_URL=str(self.artifacts),
            DBT_SEND_ANONYMOUS_USAGE_STATS="false",
        )
        if self.target == "postgres":
            env.update(PGHOST=PG_HOST, PGPORT=PG_PORT, PGUSER=PG_USER, PGDATABASE=self.pg_database)
        env.update(extra)
        return env

    def settings(self, **extra: str):
        from trainer.core.settings import Settings

        return Settings.from_env(environ=self.env(**extra))

    def database(self):
        from trainer.core.db import Database

        return Database(self.settings())

    def dbt(self, *args: str, dbt_vars: dict | None = None, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        """Run dbt from the repository against this workspace's database."""
        command = [
            str(BIN / "dbt"),
            *args,
            "--project-dir",
            str(ROOT),
            "--profiles-dir",
            str(ROOT / "profiles"),
            "--target",
            self.target,
            "--target-path",
            str(self.root / "dbt-target"),
            "--log-path",
            str(self.root / "dbt-logs"),
        ]
        if dbt_vars:
            command += ["--vars", json.dumps(dbt_vars)]
        parsed = self._shared_parse(dbt_vars, env)
        written = self.root / "dbt-target" / PARTIAL_PARSE_FILE
        if parsed and parsed.exists() and not written.exists():
            written.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(parsed, written)
        result = subprocess.run(command, cwd=ROOT, env=self.env(**env), capture_output=True, text=True)
        if parsed and result.returncode == 0 and written.exists() and not parsed.exists():
            partial = parsed.with_name(f"{parsed.name}.{os.getpid()}.partial")
            shutil.copyfile(written, partial)
            os.replace(partial, parsed)
        if check and result.returncode != 0:
            raise AssertionError(f"dbt {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
        return result

    def _shared_parse(self, dbt_vars: dict | None, env: dict) -> Path | None:
        """Where this test run keeps dbt's parsed project for these vars, on DuckDB.

        Parsing the project is 2 of a dbt call's 4 seconds, and dbt reuses an
        earlier parse (partial parsing) when the project's files, its vars and the
        profile's keys are unchanged. Only on DuckDB: there the parsed nodes name the
        catalog `warehouse`, whatever the file, while on PostgreSQL they would carry
        another test's database name, which dbt's check does not compare.
        """
        if self.target != "duckdb" or env:
            return None
        digest = hashlib.sha256(json.dumps(dbt_vars or {}, sort_keys=True).encode()).hexdigest()[:16]
        return shared_folder() / f"dbt-parse-{digest}.msgpack"

    def run_results(self) -> list[dict]:
        return json.loads((self.root / "dbt-target" / "run_results.json").read_text())["results"]

    def trainer(self, *args: str, check: bool = False, **env: str) -> subprocess.CompletedProcess:
        """Run `python -m trainer` as a user would."""
        return subprocess.run(
            [sys.executable, "-m", "trainer", *args],
            cwd=self.root,
            env=self.env(**env),
            capture_output=True,
            text=True,
            check=check,
        )

    def spawn_trainer(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "trainer", *args],
            cwd=self.root,
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def query(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        """Rows of a query, `?` placeholders on both engines."""
        with self.database().session(create=True) as session:
            return session.fetchall(sql, params)

    def execute_script(self, sql: str) -> None:
        """Run several `;`-separated statements (no parameters)."""
        if self.target == "duckdb":
            import duckdb

            with duckdb.connect(str(self.duckdb_path)) as connection:
                connection.execute(sql)
        else:
            with self.server.connect(self.pg_database) as connection:
                connection.execute(sql)

    def replace_rows(self, table: str, columns: list[str], rows: list[tuple]) -> None:
        """Delete every row of `table` and insert `rows` as they are (no key checks)."""
        if self.target == "duckdb":
            import duckdb

            with duckdb.connect(str(self.duckdb_path)) as connection:
                connection.execute(f"delete from {table}")
                if rows:
                    staged = pa.Table.from_pylist([dict(zip(columns, row)) for row in rows])  # noqa: F841
                    connection.execute(f"insert into {table} ({', '.join(columns)}) select {', '.join(columns)} from staged")
        else:
            with self.server.connect(self.pg_database) as connection:
                with connection.transaction():
                    connection.execute(f"delete from {table}")
                    with connection.cursor().copy(f"copy {table} ({', '.join(columns)}) from stdin") as copy:
                        for row in rows:
                            copy.write_row(row)


def new_workspace(root: Path, engine: str, request) -> Workspace:
    if engine == "postgres":
        server = request.getfixturevalue("postgres_server")
        return Workspace(root, "postgres", server.create_database(), server)
    return Workspace(root, "duckdb")


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


def _isolate(space: Workspace, monkeypatch) -> Workspace:
    for key, value in space.env().items():
        if key.startswith(("TRAINER_", "DBT_", "PG")):
            monkeypatch.setenv(key, value)
    return space


@pytest.fixture
def workspace(tmp_path, engine, request, monkeypatch) -> Workspace:
    """A fresh workspace on each engine in turn."""
    return _isolate(new_workspace(tmp_path, engine, request), monkeypatch)


@pytest.fixture
def duckdb_workspace(tmp_path, monkeypatch) -> Workspace:
    """A fresh workspace on the embedded default only (for DuckDB-specific behaviour)."""
    return _isolate(Workspace(tmp_path), monkeypatch)


@pytest.fixture
def postgres_workspace(tmp_path, request, monkeypatch) -> Workspace:
    """A fresh workspace on PostgreSQL only (for PostgreSQL-specific behaviour)."""
    return _isolate(new_workspace(tmp_path, "postgres", request), monkeypatch)


def demo_subset(document_count: int):
    """The first `document_count` demo documents (by id) with their annotations and events."""
    from trainer.data.demo import DemoData, build_demo_data, read_segments

    data = build_demo_data(read_segments())
    keep = sorted(data.documents.column("document_id").to_pylist())[:document_count]
    documents = pa.Table.from_pylist(
        [row for row in data.documents.to_pylist() if row["document_id"] in keep], schema=data.documents.schema
    )
    annotations = pa.Table.from_pylist(
        [row for row in data.annotations.to_pylist() if row["document_id"] in keep], schema=data.annotations.schema
    )
    prefixes = tuple(f"{doc}-" for doc in keep)
    events = pa.Table.from_pylist(
        [row for row in data.annotation_events.to_pylist() if row["annotation_id"].startswith(prefixes)],
        schema=data.annotation_events.schema,
    )
    return DemoData(documents, annotations, events)


def load_app_data(database, data, schema: str = "app") -> None:
    from trainer.data.app_tables import create_app_tables

    with database.session(create=True) as session:
        create_app_tables(session, schema)
        session.insert_missing(f"{schema}.documents", "document_id", data.documents)
        session.insert_missing(f"{schema}.annotations", "annotation_id", data.annotations)
        session.insert_missing(f"{schema}.annotation_events", "event_id", data.annotation_events)


def built_once(space: Workspace, key: tuple, build: Callable[[Workspace], None]) -> Workspace:
    """The workspace ``build`` makes on ``space``'s engine, built once per test run
    (by whichever worker asks first, while the others wait) and then only read:
    copy it with :meth:`Workspace.copy_from`. ``key`` names what ``build`` makes."""
    digest = hashlib.sha256(json.dumps([space.target, *key], sort_keys=True).encode()).hexdigest()[:16]
    root = shared_folder() / f"built-{space.target}-{digest}"
    database = space.server.shared_database(digest) if space.target == "postgres" else None
    template = Workspace(root, space.target, database, space.server)
    with run_wide_lock(root.name):
        if not (root / ".built").exists():
            shutil.rmtree(root, ignore_errors=True)  # what a failed build left
            root.mkdir()
            if database:
                space.server.recreate(database)
            build(template)
            (root / ".built").touch()
    return template


def prepared_workspace(space: Workspace, documents: int | None = 10, dbt_vars=None, build: bool = True) -> Workspace:
    """Results tables, the first `documents` demo forms (None: empty app tables), and the views.

    Each combination is built once per test run (dbt takes seconds) and copied into
    the workspace: the DuckDB file is copied, the PostgreSQL database is created
    from the built one as its template.
    """
    template = built_once(
        space, ("prepared", documents, dbt_vars, build), lambda template: _build(template, documents, dbt_vars, build)
    )
    space.copy_from(template)
    return space


def _build(space: Workspace, documents: int | None, dbt_vars, build: bool) -> None:
    from trainer.data.app_tables import create_app_tables
    from trainer.results.store import ResultsStore

    database = space.database()
    with database.session(create=True) as session:
        ResultsStore(database).migrate(session)
        create_app_tables(session, "app")
    if documents is not None:
        load_app_data(database, demo_subset(documents))
    if build:
        space.dbt("run", dbt_vars=dbt_vars)


TRAINED_DOCUMENTS = 30  # about 1,400 segments: seconds to embed, enough for every label


@pytest.fixture(scope="session", params=ENGINES)
def trained(request, tmp_path_factory):
    """A workspace with two succeeded runs of model `funsd` on the first 30 demo forms."""
    space = new_workspace(tmp_path_factory.mktemp(f"trained-{request.param}"), request.param, request)
    template = built_once(space, ("trained", TRAINED_DOCUMENTS), _train_twice)
    space.copy_from(template, with_artifacts=True)
    from trainer.results.store import ResultsStore
    from trainer.runs.training import TrainingResult

    store = ResultsStore(space.database())
    results = []
    for run in sorted(store.list_runs(), key=lambda run: run.run_id):
        results.append(
            TrainingResult(
                run.run_id, store.get_model_version_by_run(run.run_id), run.dataset_fingerprint, run.snapshot_uri,
                run.train_examples, run.eval_examples, store.run_metrics(run.run_id),
            )
        )  # fmt: skip
    first, second = results
    return space, first, second


def _train_twice(space: Workspace) -> None:
    from trainer.model.arguments import TrainingArguments
    from trainer.runs.training import train

    _build(space, TRAINED_DOCUMENTS, None, build=False)
    space.dbt("build")
    settings = space.settings()
    for _ in range(2):
        train(TrainingArguments(model_name="funsd", seed=7), settings, progress=False)


@dataclass
class EmbeddingOnlyModel:
    """A logistic regression on the frozen embedding of six form texts, saved as a
    SegmentClassifier: what every model was before backends and feature families."""

    store: object
    uri: str
    texts: list[str]
    head: object
    vectors: object


def save_embedding_only_model(root: Path) -> EmbeddingOnlyModel:
    from sklearn.linear_model import LogisticRegression

    from trainer.core.blob_store import ArtifactStore
    from trainer.model.classifier import SegmentClassifier
    from trainer.model.encoder.embeddings import embed_texts, embedding_model_id

    texts = ["Date:", "Total amount", "TO: R. J. Reynolds", "Signature", "FROM:", "Yes"]
    labels = ["question", "answer", "answer", "question", "question", "answer"]
    vectors = embed_texts(texts, progress=False)
    head = LogisticRegression(max_iter=1000).fit(vectors, labels)
    store = ArtifactStore(str(root))
    uri, _ = SegmentClassifier(head, embedding_model_id(), 0.5, {"model_name": "old"}).save(store, "models/old")
    return EmbeddingOnlyModel(store, uri, texts, head, vectors)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto, tests/s3_server.py) on 127.0.0.1, stopped at session end.

    It has `.endpoint`, `.env()` (the AWS_* variables that reach it, with dummy
    credentials) and `.new_bucket()`.
    """
    from s3_server import running_s3_server

    with running_s3_server() as server:
        yield server


@dataclass
class EvalPages:
    """A run's eval examples where its model saw them: the examples (annotation_id
    order) first, then the page context the run stored on their documents, as one
    set of rows to predict (trainer.model.fit_inputs.PageContext)."""

    examples: list[tuple]  # annotation_id, document_id, page, x0, y0, x1, y1, text, label
    texts: list[str]
    rows: object  # SegmentRows of every row, examples first

    def predict_examples(self, model):
        """The model's probabilities of the eval examples, predicted on their pages."""
        return model.predict_segments(self.texts, self.rows)[: len(self.examples)]


def eval_pages(space: Workspace, run_id: int) -> EvalPages:
    import numpy as np

    from trainer.core.blob_store import ArtifactStore
    from trainer.model.classifier import SegmentRows
    from trainer.results.run_outputs import read_page_context
    from trainer.results.store import ResultsStore

    examples = space.query(
        "select annotation_id, document_id, page, x0, y0, x1, y1, text, label from datasets.training_examples "
        "where split = 'eval' order by annotation_id"
    )
    run = ResultsStore(space.database()).get_run(run_id)
    context = read_page_context(ArtifactStore(str(space.artifacts)), run)
    around: list[tuple] = []
    if context is not None:
        documents = {row[1] for row in examples}
        around = [
            (row["document_id"], row["page"], row["x0"], row["y0"], row["x1"], row["y1"], row["text"])
            for row in context.to_pylist()
            if row["document_id"] in documents
        ]
    every = [row[1:8] for row in examples] + around
    rows = SegmentRows(
        [row[0] for row in every], [row[1] for row in every],
        np.array([[np.nan if v is None else v for v in row[2:6]] for row in every], dtype=float).reshape(len(every), 4),
    )  # fmt: skip
    return EvalPages(examples, [row[6] for row in every], rows)
