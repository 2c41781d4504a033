"""Shared fixtures: every test gets its own DuckDB file and artifact store, and
dbt runs for real against them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class Workspace:
    """An isolated set of CONTRACT §6 settings under a temporary directory."""

    root: Path

    @property
    def duckdb_path(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TRAINER_TARGET="duckdb",
            TRAINER_DUCKDB_PATH=str(self.duckdb_path),
            TRAINER_ARTIFACTS_URL=str(self.artifacts),
            DBT_SEND_ANONYMOUS_USAGE_STATS="false",
        )
        env.update(extra)
        return env

    def settings(self):
        from trainer.settings import Settings

        return Settings.from_env(environ=self.env())

    def database(self):
        from trainer.db import Database

        return Database(self.settings())

    def dbt(self, *args: str, dbt_vars: dict | None = None, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        """Run dbt from the repository on this workspace's DuckDB file."""
        command = [
            str(BIN / "dbt"),
            *args,
            "--project-dir",
            str(ROOT),
            "--profiles-dir",
            str(ROOT / "profiles"),
            "--target",
            "duckdb",
            "--target-path",
            str(self.root / "dbt-target"),
            "--log-path",
            str(self.root / "dbt-logs"),
        ]
        if dbt_vars:
            command += ["--vars", json.dumps(dbt_vars)]
        result = subprocess.run(command, cwd=ROOT, env=self.env(**env), capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"dbt {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
        return result

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

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        import duckdb

        with duckdb.connect(str(self.duckdb_path), read_only=True) as connection:
            return connection.execute(sql, params or []).fetchall()


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Workspace:
    space = Workspace(tmp_path)
    for key, value in space.env().items():
        if key.startswith(("TRAINER_", "DBT_")):
            monkeypatch.setenv(key, value)
    return space


def demo_subset(document_count: int):
    """The first `document_count` demo documents (by id) with their annotations and events."""
    from trainer.demo import DemoData, build_demo_data, read_segments

    data = build_demo_data(read_segments())
    keep = sorted(data.documents.column("document_id").to_pylist())[:document_count]
    documents = pa.Table.from_pylist(
        [row for row in data.documents.to_pylist() if row["document_id"] in keep], schema=data.documents.schema
    )
    annotations = pa.Table.from_pylist(
        [row for row in data.annotations.to_pylist() if row["document_id"] in keep], schema=data.annotations.schema
    )
    kept_ids = {f"{row['annotation_id']}" for row in annotations.to_pylist()}
    prefixes = tuple(f"{doc}-" for doc in keep)
    events = pa.Table.from_pylist(
        [
            row
            for row in data.annotation_events.to_pylist()
            if row["annotation_id"] in kept_ids or row["annotation_id"].startswith(prefixes)
        ],
        schema=data.annotation_events.schema,
    )
    return DemoData(documents, annotations, events)


def load_app_data(database, data, schema: str = "app") -> None:
    from trainer.app_tables import create_app_tables

    with database.session(create=True) as session:
        create_app_tables(session, schema)
        session.insert_missing(f"{schema}.documents", "document_id", data.documents)
        session.insert_missing(f"{schema}.annotations", "annotation_id", data.annotations)
        session.insert_missing(f"{schema}.annotation_events", "event_id", data.annotation_events)


TRAINED_DOCUMENTS = 30  # about 1,400 segments: seconds to embed, enough for every label


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A workspace with two succeeded runs of model `funsd` on the first 30 demo forms."""
    from trainer.arguments import TrainingArguments
    from trainer.results_store import ResultsStore
    from trainer.training import train

    space = Workspace(tmp_path_factory.mktemp("trained"))
    settings = space.settings()
    database = space.database()
    with database.session(create=True) as session:
        ResultsStore(database).migrate(session)
    load_app_data(database, demo_subset(TRAINED_DOCUMENTS))
    space.dbt("build")
    first = train(TrainingArguments(model_name="funsd", seed=7), settings, progress=False)
    second = train(TrainingArguments(model_name="funsd", seed=7), settings, progress=False)
    return space, first, second
