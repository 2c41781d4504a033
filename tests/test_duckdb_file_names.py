"""Any DuckDB file name works: DuckDB names a file's catalog after the file, so a
file named like one of the schemas (app, training, datasets) used to make every
`app.documents` ambiguous. The trainer and dbt attach the file under one fixed
name instead (trainer.core.db, profiles/profiles.yml); these run the commands on such
files as a user would. Models are cheap (no embedding): the file name is under test.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from api_server import running_api
from conftest import Workspace, _isolate, demo_subset, load_app_data
from test_cli import unseen_segments, write_input

pytestmark = pytest.mark.slow

# The cheapest model there is: the file name is under test, not the model.
QUICK_TRAIN = ("--no-embedding", "--no-layout", "--no-neighbours", "--no-label-issues", "--stacking-folds", "2", "--quiet")
KEPT_DOCUMENTS = 10  # the first 10 by id: one of them falls in the eval split


def file_workspace(root, monkeypatch, name: str) -> Workspace:
    root.mkdir(exist_ok=True)
    return _isolate(Workspace(root, duckdb_name=name), monkeypatch)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def loaded(space: Workspace, by_load_demo: bool) -> Workspace:
    """init-db by the CLI, the first forms of the demo (by `load-demo`, the app's
    tables then cut to them, or loaded directly: training on all 149 would take the
    time of the model, not of the file name), and the views by `dbt build`."""
    assert "App tables created" in ok(space.trainer("init-db"))
    if by_load_demo:
        assert "149 inserted" in ok(space.trainer("load-demo"))
        keep = "(select document_id from app.documents order by document_id limit ?)"
        space.query(
            "delete from app.annotation_events where annotation_id in "
            f"(select annotation_id from app.annotations where document_id not in {keep})",
            [KEPT_DOCUMENTS],
        )
        space.query(f"delete from app.annotations where document_id not in {keep}", [KEPT_DOCUMENTS])
        space.query(f"delete from app.documents where document_id not in {keep}", [KEPT_DOCUMENTS])
    else:
        load_app_data(space.database(), demo_subset(KEPT_DOCUMENTS))
    space.dbt("build")
    return space


@pytest.mark.parametrize("name", ["app.duckdb", "training.duckdb", "datasets.duckdb"])
def test_a_file_named_like_a_schema_runs_init_load_dbt_train_and_reads(tmp_path, monkeypatch, name):
    space = loaded(file_workspace(tmp_path / "space", monkeypatch, name), by_load_demo=name == "app.duckdb")
    assert space.duckdb_path.name == name and not (space.root / "warehouse.duckdb").exists()
    assert "Run 1 succeeded" in ok(space.trainer("train", *QUICK_TRAIN))
    assert "succeeded" in ok(space.trainer("runs"))
    assert "Run 1 (segment-labeler): succeeded" in ok(space.trainer("metrics", "--run", "1"))
    assert "Run              1 succeeded" in ok(space.trainer("show", "run", "1"))
    assert space.query("select count(distinct document_id) from datasets.training_examples") == [(KEPT_DOCUMENTS,)]
    if name != "app.duckdb":
        return

    # Every other command, on the file name of the report. A queued --as-of run
    # covers request, worker and dbt compiling in the trainer's own process.
    assert ok(space.trainer("request", "--as-of", "2030-01-01", *QUICK_TRAIN[:-1])).strip() == "2"
    assert "1 succeeded, 0 failed" in ok(space.trainer("worker", "--until-empty", "--quiet"))
    assert "Reaped 0 run(s)" in ok(space.trainer("reap"))
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(source, unseen_segments(5))
    predicted = space.trainer("predict", "--model-version", "latest", "--input", str(source), "--output", str(output))
    assert "Labelled 5 segment(s)" in ok(predicted)
    assert '"version": 2' in ok(space.trainer("show", "model", "segment-labeler", "2", "--json"))
    assert "Exported" in ok(space.trainer("export", "--run", "2", "--format", "csv", "--output", str(tmp_path / "run.csv")))
    assert "unreferenced" in ok(space.trainer("gc"))
    assert "Report of run 2" in ok(space.trainer("report", "latest", "--output", str(tmp_path / "report.html")))
    with running_api(space.env(), {"auditor": ("reader", "r" * 32)}) as server, server.client() as client:
        listed = client.get("/training-runs")
        assert listed.status_code == 200 and [item["run_id"] for item in listed.json()["items"]] == [2, 1]


ANALYST = """
import sys, time, duckdb
connection = duckdb.connect()
connection.execute(f"attach '{sys.argv[1]}' as warehouse (read_only)")
print(connection.execute("select count(*) from warehouse.datasets.training_examples").fetchall()[0][0], flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_an_analysts_read_only_attach_makes_the_trainer_wait_up_to_the_lock_timeout(tmp_path, monkeypatch):
    space = file_workspace(tmp_path, monkeypatch, "app.duckdb")
    ok(space.trainer("init-db"))
    space.dbt("run")

    def analyst(seconds: float) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", ANALYST, str(space.duckdb_path), str(seconds)], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout.readline() == "0\n"  # the documented read-only query works on app.duckdb
        return process

    holder = analyst(30)
    try:
        started = time.monotonic()
        refused = space.trainer("runs", TRAINER_DUCKDB_LOCK_TIMEOUT="2")
        # It retries while its next sleep (0.5 s at most) still ends before the timeout:
        # it waited at least 1.5 of the 2 seconds, and gave up well before the holder let go.
        assert refused.returncode == 1 and 1.5 <= time.monotonic() - started < 25
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: cannot open DuckDB file {space.duckdb_path}: IO Error")
        assert "lock" in lines[0]
    finally:
        holder.kill()
        holder.wait()

    brief = analyst(2)
    try:
        assert "No training runs yet." in ok(space.trainer("runs", TRAINER_DUCKDB_LOCK_TIMEOUT="60"))
    finally:
        brief.wait()


def test_an_app_schema_named_like_a_catalog_is_refused_on_duckdb_only():
    from trainer.core.errors import ConfigurationError
    from trainer.core.settings import Settings

    for schema in ("warehouse", "memory", "Temp"):
        with pytest.raises(ConfigurationError, match=f"app schema '{schema}' cannot be used on DuckDB"):
            Settings.from_env(environ={"TRAINER_APP_SCHEMA": schema})
        assert Settings.from_env(target="postgres", environ={"TRAINER_APP_SCHEMA": schema}).app_schema == schema
