"""docs/DEPLOYMENT.md, executed: the pipeline's least-privilege role and the
app's index, on the local PostgreSQL server."""

from __future__ import annotations

import re
import secrets
import subprocess

import psycopg
import pytest
from conftest import PG_HOST, PG_PORT, PG_USER, ROOT, Workspace, demo_subset, load_app_data

from trainer.data.demo import build_demo_data, read_segments

pytestmark = pytest.mark.slow


def deployment_sql(marker: str) -> str:
    """The ```sql block of docs/DEPLOYMENT.md that carries `-- deployment: <marker>`."""
    text = (ROOT / "docs" / "DEPLOYMENT.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    matching = [block for block in blocks if f"-- deployment: {marker}" in block]
    assert len(matching) == 1, f"docs/DEPLOYMENT.md must have one sql block marked {marker!r}"
    return matching[0]


@pytest.fixture
def deployment(tmp_path, postgres_server):
    """A database whose app tables belong to an app role, and names for the roles."""
    token = secrets.token_hex(3)
    roles = {"app_owner": f"tdp_app_{token}", "pipeline": f"tdp_pipeline_{token}"}
    database = postgres_server.create_database()
    with postgres_server.connect(database) as connection:
        connection.execute(f'create role "{roles["app_owner"]}" login')
        connection.execute(f'create schema app authorization "{roles["app_owner"]}"')
    space = Workspace(tmp_path, "postgres", database, postgres_server)
    yield space, roles
    with postgres_server.connect() as connection:
        connection.execute(f'drop database if exists "{database}" with (force)')
        for role in roles.values():
            connection.execute(f'drop role if exists "{role}"')


def test_the_pipeline_role_reads_the_app_and_writes_only_its_own_schemas(deployment, tmp_path):
    space, roles = deployment
    pipeline = roles["pipeline"]
    # The app creates and fills its tables as its own role.
    load_app_data(_database(space, roles["app_owner"]), demo_subset(12))

    script = tmp_path / "pipeline_role.sql"
    script.write_text(deployment_sql("pipeline role"), encoding="utf-8")
    created = subprocess.run(
        ["psql", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, "-d", space.pg_database, "-v", "ON_ERROR_STOP=1",
         "-v", f"role={pipeline}", "-v", f"password={secrets.token_urlsafe(16)}", "-v", "app_schema=app",
         "-v", f"app_owner={roles['app_owner']}", "-f", str(script)],
        capture_output=True, text=True,
    )
    assert created.returncode == 0, created.stderr

    as_pipeline = {"PGUSER": pipeline}
    init = space.trainer("init-db", **as_pipeline)
    assert init.returncode == 0, init.stderr
    space.dbt("build", **as_pipeline)
    trained = space.trainer("train", "--quiet", **as_pipeline)
    assert trained.returncode == 0, trained.stderr
    assert "Run 1 succeeded" in trained.stdout

    owners = dict(space.query(
        "select c.relname, pg_get_userbyid(c.relowner) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname in ('datasets', 'training') and c.relname in ('training_examples', 'training_runs')"))
    assert owners == {"training_examples": pipeline, "training_runs": pipeline}

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=pipeline, dbname=space.pg_database, autocommit=True) as connection:
        assert connection.execute("select count(*) from app.annotations").fetchone()[0] > 0
        for statement in (
            "insert into app.annotations (annotation_id, document_id, page, text, status, created_at, updated_at) "
            "values ('x', 'y', 1, 't', 'pending', now(), now())",
            "update app.annotation_events set label = 'hacked'",
            "delete from app.documents",
            "truncate app.annotation_events",
            "create table app.intruder (id int)",
            "alter table app.annotations add column intruder int",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                connection.execute(statement)


def _database(space: Workspace, user: str):
    from trainer.core.db import Database

    return Database(space.settings(PGUSER=user))


def plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def test_the_deciding_event_query_uses_the_apps_index(postgres_workspace):
    space = postgres_workspace
    data = build_demo_data(read_segments())
    load_app_data(space.database(), data)
    # 31 copies of the demo's annotations and events: ~505,000 events, a realistic log.
    space.execute_script(
        "insert into app.annotations select annotation_id || '#' || k, document_id, page, x0, y0, x1, y1, text, "
        "label, status, created_at, updated_at from app.annotations, generate_series(1, 30) as k;"
        "insert into app.annotation_events select event_id + k * 100000, annotation_id || '#' || k, event_type, "
        "label, actor, occurred_at, note from app.annotation_events, generate_series(1, 30) as k;"
    )
    space.dbt("run")
    query = "select count(*) from datasets.training_examples"

    def plan():
        space.execute_script("vacuum analyze app.annotation_events")
        rows = space.query(f"explain (format json) {query}")
        return list(plan_nodes(rows[0][0][0]["Plan"]))

    before = plan()
    assert not any(node.get("Index Name") == "annotation_events_deciding_idx" for node in before)
    expected = space.query(query)

    space.execute_script(deployment_sql("index"))
    after = plan()
    scans = [node for node in after if node.get("Index Name") == "annotation_events_deciding_idx"]
    assert [node["Node Type"] for node in scans] == ["Index Only Scan"]
    event_sorts = [node for node in after if node["Node Type"] == "Sort" and "occurred_at" in " ".join(node["Sort Key"])]
    assert event_sorts == []  # the events arrive in the index's order: nothing sorts them whole
    # Only the tie-breaking keys are sorted, within runs of equal index keys.
    for node in after:
        if node["Node Type"] == "Incremental Sort" and "occurred_at" in " ".join(node["Sort Key"]):
            assert len(node["Presorted Key"]) == 3, node
    assert space.query(query) == expected
