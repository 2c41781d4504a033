"""The audit API against a live server (`python -m trainer serve` on 127.0.0.1),
on DuckDB and on PostgreSQL: auth, every endpoint, downloads checked byte for
byte against the results tables, the audit log, and hostile input."""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from api_server import ApiServer, read_then_hang_up, running_api, wait_for
from conftest import ENGINES, Workspace, new_workspace, prepared_workspace

TOKENS = {
    "auditor": ("reader", secrets.token_urlsafe(32)),
    "spa": ("trainer", secrets.token_urlsafe(32)),
}
PASSWD_MARKERS = ("root:x:", "root:*:", "/bin/bash", "/usr/sbin/nologin")


@dataclass
class ApiCase:
    space: Workspace
    server: ApiServer
    run_id: int
    model_version_id: int

    def store(self):
        from trainer.results.store import ResultsStore

        return ResultsStore(self.space.database())


@pytest.fixture(scope="module", params=ENGINES)
def api(request, tmp_path_factory):
    """A live API server over 10 demo forms, with one run queued over HTTP and
    trained by `python -m trainer worker --until-empty`."""
    space = new_workspace(tmp_path_factory.mktemp(f"api-{request.param}"), request.param, request)
    prepared_workspace(space, 10)
    with running_api(space.env(), TOKENS) as server:
        with server.client("spa") as client:
            # The API is under test, not the model: the char n-gram text model alone is quick.
            quick = {"embedding_features": False, "layout_features": False, "neighbour_features": False,
                     "label_issues": False}  # fmt: skip
            queued = client.post("/training-runs", json={"model_name": "api-model", "seed": 3, **quick})
        assert queued.status_code == 202, queued.text
        run_id = queued.json()["run_id"]
        worker = space.trainer("worker", "--until-empty", "--quiet")
        assert worker.returncode == 0, worker.stdout + worker.stderr
        version = space.query("select model_version_id from training.model_versions where run_id = ?", (run_id,))
        yield ApiCase(space, server, run_id, version[0][0])


def local_path(case: ApiCase, uri: str) -> Path:
    from trainer.core.blob_store import ArtifactStore

    return Path(ArtifactStore(case.space.settings().artifacts_url).path_of(uri))


def audit_rows(case: ApiCase, route: str) -> list[dict]:
    return [
        entry.__dict__
        for entry in case.store().page_audit_log(500).items
        if entry.route == route
    ]


# -- auth --------------------------------------------------------------------


def test_every_route_but_health_needs_a_token(api):
    from trainer.api import create_app
    from trainer.api.tokens import TokenRegistry

    app = create_app(api.space.settings(), TokenRegistry.from_env({"TRAINER_API_TOKENS": "x:reader:" + "a" * 32}))
    walked = 0
    with api.server.client(None) as anonymous:
        for route in _walk(app.routes):
            path = route.path.replace("{run_id}", "1").replace("{model_version_id}", "1").replace("{job_id}", "1")
            for method in sorted(route.methods - {"HEAD"}):
                walked += 1
                for headers in ({}, {"Authorization": "Bearer " + "b" * 43}, {"Authorization": "Basic YTpi"}):
                    response = anonymous.request(method, path, headers=headers, json={} if method == "POST" else None)
                    if path == "/health":
                        assert response.status_code == 200, (method, path)
                    else:
                        assert response.status_code == 401, (method, path, headers, response.text)
                        assert response.headers["www-authenticate"].startswith("Bearer")
    # /health, /openapi.json, /docs and the sixteen API routes (POST and GET on /training-runs;
    # the review loop's six: trainer.api.review_loop)
    assert walked == 19


def _walk(routes):
    """Every route, also those of included routers (FastAPI includes them lazily;
    this app includes them without prefixes)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _walk(included.routes)
        else:
            yield route


def test_a_reader_may_not_queue_runs_and_a_trainer_may(api):
    with api.server.client("auditor") as reader:
        refused = reader.post("/training-runs", json={})
    assert refused.status_code == 403 and "role reader" in refused.json()["detail"]
    with api.server.client("spa") as client:
        assert client.get("/openapi.json").status_code == 200
        assert "swagger" in client.get("/docs").text.lower()


def test_the_server_refuses_to_start_without_a_valid_token(duckdb_workspace):
    secret = secrets.token_urlsafe(32)
    cases = {
        "": "no API token configured",
        f"ci:admin:{secret}": "role 'admin' is not one of reader, trainer",
        "ci:reader:short": "shorter than 24 characters",
        f"ci:reader:{secret},ci:trainer:{secret[::-1]}": "token name 'ci' is used twice",
        f"ci:reader:{secret},cd:trainer:{secret}": "the same secret is configured twice",
    }
    for entries, message in cases.items():
        result = duckdb_workspace.trainer("serve", "--port", "0", TRAINER_API_TOKENS=entries)
        assert result.returncode == 1, entries
        assert message in result.stderr and "Traceback" not in result.stderr
        assert secret not in result.stderr and secret[::-1] not in result.stderr


def test_tokens_can_come_from_a_file(duckdb_workspace, tmp_path):
    from trainer.api.tokens import TokenRegistry
    from trainer.core.errors import ConfigurationError

    secret = secrets.token_urlsafe(32)
    path = tmp_path / "tokens"
    path.write_text(f"# API tokens\nauditor:reader:{secret}  # the auditors\n\n")
    registry = TokenRegistry.from_env({"TRAINER_API_TOKENS_FILE": str(path)})
    assert registry.authenticate(secret).name == "auditor"
    assert registry.authenticate(secret[:-1]) is None and registry.authenticate("") is None
    path.write_text("auditor:reader\n")
    with pytest.raises(ConfigurationError, match=rf"{path}, line 1: expected name:role:secret"):
        TokenRegistry.from_env({"TRAINER_API_TOKENS_FILE": str(path)})


# -- runs, metrics, model versions ------------------------------------------------


def test_runs_are_listed_newest_first_filtered_and_paged(api):
    store = api.store()
    with api.server.client() as client:
        first = client.get("/training-runs", params={"limit": 1}).json()
        assert first["total"] >= 1 and len(first["items"]) == 1
        assert first["items"][0]["run_id"] == max(run.run_id for run in store.list_runs(1000))
        ours = client.get("/training-runs", params={"model": "api-model", "status": "succeeded"}).json()
        assert [item["run_id"] for item in ours["items"]] == [api.run_id]
        assert ours["items"][0]["model_version_id"] == api.model_version_id
        assert ours["next_offset"] is None
        everything = client.get("/training-runs", params={"limit": 500}).json()
        ids = [item["run_id"] for item in everything["items"]]
        assert ids == sorted(ids, reverse=True) and everything["total"] == len(ids)


def test_runs_page_through_several_runs(engine, tmp_path, request):
    """Paging needs more runs than the module's one: a database of its own with seven
    runs recorded by the results store (none trained), behind a server of its own."""
    from trainer.results.store import ResultsStore

    space = prepared_workspace(new_workspace(tmp_path, engine, request), documents=None, build=False)
    store = ResultsStore(space.database())
    queued = [store.queue_run("paged", {"model_name": "paged"}) for _ in range(5)]
    running = [store.start_run("other", {"model_name": "other"}, worker="w:1:a") for _ in range(2)]
    newest_first = sorted(queued + running, reverse=True)

    def walk(client, limit: int, **filters) -> list[int]:
        seen, offset = [], 0
        while offset is not None:
            page = client.get("/training-runs", params={"limit": limit, "offset": offset, **filters}).json()
            assert page["limit"] == limit and page["offset"] == offset
            assert len(page["items"]) == min(limit, page["total"] - offset)
            seen += [item["run_id"] for item in page["items"]]
            offset = page["next_offset"]
        return seen

    with running_api(space.env(), TOKENS) as server, server.client() as client:
        for limit in (1, 2, 3, 7, 500):
            assert walk(client, limit) == newest_first, limit
        assert walk(client, 2, model="paged") == sorted(queued, reverse=True)
        assert walk(client, 1, status="running") == sorted(running, reverse=True)
        assert walk(client, 2, model="paged", status="running") == []
        second = client.get("/training-runs", params={"limit": 3, "offset": 3}).json()
        assert [item["run_id"] for item in second["items"]] == newest_first[3:6]
        assert second["total"] == 7 and second["next_offset"] == 6
        beyond = client.get("/training-runs", params={"limit": 3, "offset": 7}).json()
        assert beyond["items"] == [] and beyond["total"] == 7 and beyond["next_offset"] is None


def test_a_run_shows_its_lineage_and_metrics_as_the_tables_hold_them(api):
    store = api.store()
    run = store.get_run(api.run_id)
    version = store.get_model_version_by_run(api.run_id)
    with api.server.client() as client:
        detail = client.get(f"/training-runs/{api.run_id}").json()
        metrics = client.get(f"/training-runs/{api.run_id}/metrics").json()
        by_version = client.get(f"/model-versions/{version.model_version_id}").json()
        versions = client.get("/model-versions", params={"model": "api-model"}).json()
    assert detail["run"]["status"] == "succeeded" and detail["run"]["error"] is None
    assert detail["dataset"]["fingerprint"] == run.dataset_fingerprint
    assert detail["dataset"]["snapshot"] == {"uri": run.snapshot_uri, "sha256": run.snapshot_sha256}
    assert detail["dataset"]["summary"] == run.dataset_summary
    assert detail["run"]["artifact_uri"] == run.artifact_uri == version.artifact_uri
    assert detail["params"]["requested_by"] == "spa" and detail["params"]["seed"] == 3
    assert detail["library_versions"]["scikit_learn"] == run.params["library_versions"]["scikit_learn"]
    assert detail["model_version"]["model_version_id"] == version.model_version_id
    assert detail["links"]["download"] == f"/model-versions/{version.model_version_id}/download"
    assert detail["run"]["created_at"].endswith("Z")
    assert by_version == detail
    assert [item["model_version_id"] for item in versions["items"]] == [version.model_version_id]
    stored = store.run_metrics(api.run_id)
    assert [(m["split"], m["name"], m["label"]) for m in metrics["items"]] == [(m.split, m.name, m.label) for m in stored]
    for served, row in zip(metrics["items"], stored):
        assert served["value"] == pytest.approx(row.value) if row.value is not None else served["value"] is None
    accuracy = next(m for m in stored if m.split == "eval" and m.name == "accuracy" and m.label is None)
    assert detail["metrics"]["eval.accuracy"] == pytest.approx(accuracy.value)


def test_unknown_ids_answer_404_and_bad_params_422_naming_the_field(api):
    with api.server.client() as client:
        for path in ("/training-runs/999999", "/training-runs/999999/metrics", "/training-runs/999999/dataset",
                     "/model-versions/999999", "/model-versions/999999/download"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert "999999" in response.json()["detail"]
        for path, params, field in (
            ("/training-runs", {"limit": 0}, "limit"),
            ("/training-runs", {"status": "exploded"}, "status"),
            ("/training-runs", {"model": "a b"}, "model"),
            ("/training-runs/abc", {}, "run_id"),
            ("/training-runs/0", {}, "run_id"),
            (f"/training-runs/{2**63}", {}, "run_id"),
            (f"/training-runs/{api.run_id}/dataset", {"format": "xlsx"}, "format"),
            (f"/training-runs/{api.run_id}/dataset", {"split": "test"}, "split"),
            ("/audit-log", {"offset": -1}, "offset"),
        ):
            response = client.get(path, params=params)
            assert response.status_code == 422, (path, params)
            assert field in {str(part) for error in response.json()["detail"] for part in error["loc"]}
    with api.server.client("spa") as client:
        for body, field in (
            ({"confidence_threshold": 2}, "confidence_threshold"),
            ({"model_name": "../etc"}, "model_name"),
            ({"seed": -1}, "seed"),
            ({"source": {"kind": "database", "as_of": "yesterday"}}, "as_of"),
            ({"source": {"kind": "snapshot", "reference": "xyz"}}, "reference"),
            ({"source": {"kind": "csv", "path": "/etc/passwd"}}, "source"),
            ({"unknown": 1}, "unknown"),
        ):
            response = client.post("/training-runs", json=body)
            assert response.status_code == 422, body
            assert field in {str(part) for error in response.json()["detail"] for part in error["loc"]}
        for reference in ("deadbeefdeadbeef", "999999"):
            response = client.post("/training-runs", json={"source": {"kind": "snapshot", "reference": reference}})
            assert response.status_code == 404 and reference in response.json()["detail"], response.text


# -- downloads and the audit log -------------------------------------------------------


def test_a_runs_dataset_downloads_exactly_as_snapshotted_and_is_audited(api):
    from trainer.data.snapshots import read_snapshot
    from trainer.results.export import encode_examples

    run = api.store().get_run(api.run_id)
    with api.server.client() as client:
        parquet = client.get(f"/training-runs/{api.run_id}/dataset", params={"format": "parquet"})
        jsonl = client.get(f"/training-runs/{api.run_id}/dataset", params={"format": "jsonl", "split": "eval"})
        table = client.get(f"/training-runs/{api.run_id}/dataset", params={"format": "csv", "split": "train"})
    assert parquet.status_code == jsonl.status_code == table.status_code == 200
    body_sha = hashlib.sha256(parquet.content).hexdigest()
    assert body_sha == run.snapshot_sha256 == parquet.headers["x-content-sha256"] == parquet.headers["x-snapshot-sha256"]
    assert parquet.headers["x-dataset-fingerprint"] == run.dataset_fingerprint
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    for response, name in ((parquet, "parquet"), (jsonl, "eval.jsonl"), (table, "train.csv")):
        assert response.headers["content-disposition"].startswith("attachment; filename=")
        assert f'{name}"; filename*=UTF-8' in response.headers["content-disposition"]
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "x-content-sha256" not in jsonl.headers
    rows = [json.loads(line) for line in jsonl.text.splitlines()]
    assert len(rows) == run.eval_examples == int(jsonl.headers["x-example-count"])
    assert {row["split"] for row in rows} == {"eval"}
    assert len(list(csv.DictReader(io.StringIO(table.text, newline="")))) == run.train_examples
    from trainer.core.blob_store import ArtifactStore

    snapshot = read_snapshot(ArtifactStore(api.space.settings().artifacts_url), run.snapshot_uri, run.snapshot_sha256)
    assert pq.read_table(io.BytesIO(parquet.content)).equals(snapshot)
    eval_only = snapshot.filter(snapshot.column("split").to_pylist() and [s == "eval" for s in snapshot.column("split").to_pylist()])
    assert jsonl.content == b"".join(encode_examples(eval_only, "jsonl"))

    def three_complete():
        rows = [row for row in audit_rows(api, "/training-runs/{run_id}/dataset")
                if row["object_id"] == str(api.run_id) and row["outcome"] == "complete"]
        return rows if len(rows) >= 3 else None

    audited = wait_for(three_complete)
    by_sha = {row["sha256"]: row for row in audited}
    for response in (parquet, jsonl, table):
        row = by_sha[hashlib.sha256(response.content).hexdigest()]
        assert row["token_name"] == "auditor" and row["bytes_sent"] == len(response.content)
        assert row["status_code"] == 200 and row["details"]["fingerprint"] == run.dataset_fingerprint


def test_the_live_dataset_is_what_a_run_now_would_snapshot(api):
    run = api.store().get_run(api.run_id)
    with api.server.client() as client:
        live = client.get("/datasets/current", params={"format": "parquet"})
        eval_csv = client.get("/datasets/current", params={"format": "csv", "split": "eval"})
    assert live.status_code == 200 and eval_csv.status_code == 200
    # The data did not change since the run: same fingerprint, and the very same bytes.
    assert live.headers["x-dataset-fingerprint"] == run.dataset_fingerprint
    assert hashlib.sha256(live.content).hexdigest() == run.snapshot_sha256 == live.headers["x-content-sha256"]
    assert int(eval_csv.headers["x-example-count"]) == run.eval_examples
    assert len(list(csv.DictReader(io.StringIO(eval_csv.text, newline="")))) == run.eval_examples
    # Refused attempts (e.g. without a token) are audited too: only the downloads here.
    complete = lambda: [row for row in audit_rows(api, "/datasets/current") if row["outcome"] == "complete"]  # noqa: E731
    rows = wait_for(lambda: (lambda rows: rows if len(rows) >= 2 else None)(complete()))
    assert {row["details"]["format"] for row in rows} >= {"parquet", "csv"}


def test_a_model_version_downloads_as_a_checked_archive_and_is_audited(api, tmp_path):
    from trainer.core.blob_store import ArtifactStore
    from trainer.model.classifier import SegmentClassifier

    store = api.store()
    version = store.get_model_version_by_id(api.model_version_id)
    run = store.get_run(version.run_id)
    with api.server.client() as client:
        response = client.get(f"/model-versions/{api.model_version_id}/download")
        again = client.get(f"/model-versions/{api.model_version_id}/download")
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
    digest = hashlib.sha256(response.content).hexdigest()
    assert digest == response.headers["x-content-sha256"] == hashlib.sha256(again.content).hexdigest()
    assert int(response.headers["content-length"]) == len(response.content)
    name = f"api-model-v{version.version}.tar"
    assert response.headers["content-disposition"] == f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"

    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        # Checked by hand rather than extractall(filter="data"), which Python 3.11.2
        # (Debian 12's) lacks: only plain files and directories, under clean relative paths.
        for member in archive.getmembers():
            parts = Path(member.name).parts
            assert (member.isfile() or member.isdir()) and parts and parts[0] != "/" and ".." not in parts, member.name
            if member.isfile():
                (tmp_path / member.name).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / member.name).write_bytes(archive.extractfile(member).read())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["run_id"] == run.run_id and manifest["dataset_fingerprint"] == run.dataset_fingerprint
    assert manifest["snapshot_sha256"] == run.snapshot_sha256
    assert manifest["library_versions"] == run.params["library_versions"]
    model_files = json.loads((tmp_path / "model" / "model.json").read_text())["files"]
    assert set(manifest["files"]) == {"model/model.json"} | {f"model/{name}" for name in model_files}
    assert "model/head.skops" in manifest["files"] and "model/predictions.parquet" not in manifest["files"]
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == entry["sha256"]
    assert manifest["files"]["model/model.json"]["sha256"] == version.artifact_sha256
    # What was downloaded is a model that loads and predicts.
    model = SegmentClassifier.load(ArtifactStore(str(tmp_path)), str(tmp_path / "model"), version.artifact_sha256)
    labels, _ = model.predict(["Date:", "TO: R. J. Reynolds"])
    assert set(labels) <= set(model.labels)

    def two_complete():
        rows = [row for row in audit_rows(api, "/model-versions/{model_version_id}/download")
                if row["outcome"] == "complete" and row["object_id"] == str(api.model_version_id)]
        return rows if len(rows) >= 2 else None

    rows = wait_for(two_complete)
    assert all(row["sha256"] == digest and row["bytes_sent"] == len(response.content) for row in rows)


def test_a_run_queued_over_http_is_trained_by_a_worker_and_audited(api):
    run = api.store().get_run(api.run_id)
    assert run.status == "succeeded" and run.params["requested_by"] == "spa"
    with api.server.client() as client:
        log = client.get("/audit-log", params={"limit": 500}).json()
    posts = [row for row in log["items"]
             if row["method"] == "POST" and row["route"] == "/training-runs" and row["object_id"] == str(api.run_id)]
    assert len(posts) == 1 and posts[0]["token_name"] == "spa" and posts[0]["status_code"] == 202
    assert posts[0]["occurred_at"].endswith("Z")


def _big_run(case: ApiCase, rows: int) -> int:
    """A run whose snapshot holds ``rows`` synthetic examples (it failed after the
    snapshot, as a run can), to stream something that does not fit a socket buffer."""
    from trainer.core.blob_store import ArtifactStore
    from trainer.data.dataset import dataset_fingerprint, summarize
    from trainer.data.snapshots import write_snapshot
    from trainer.data.synthetic import synthetic_examples

    examples = synthetic_examples(rows, seed=11)
    fingerprint = dataset_fingerprint(examples)
    snapshot = write_snapshot(ArtifactStore(case.space.settings().artifacts_url), examples, fingerprint)
    store = case.store()
    run_id = store.start_run("big", {"source": "database"}, "test")
    summary = summarize(examples)
    store.record_dataset(run_id, fingerprint, summary.split_size("train"), summary.split_size("eval"),
                         snapshot.uri, snapshot.sha256, summary.to_rows())
    store.fail_run(run_id, "stopped after the snapshot")
    return run_id


def test_a_client_that_disconnects_early_is_audited_with_what_it_got(api):
    run_id = _big_run(api, 100_000)
    received = read_then_hang_up(api.server, f"/training-runs/{run_id}/dataset?format=jsonl", "auditor", 300_000)
    assert received.startswith(b"HTTP/1.1 200")
    row = wait_for(lambda: [r for r in audit_rows(api, "/training-runs/{run_id}/dataset") if r["object_id"] == str(run_id)])[0]
    assert row["outcome"] == "disconnected" and row["token_name"] == "auditor"
    assert 0 < row["bytes_sent"] < 20_000_000

    # The whole of it streams, and holds every row.
    with api.server.client() as client, client.stream("GET", f"/training-runs/{run_id}/dataset", params={"format": "jsonl"}) as response:
        lines = sum(chunk.count(b"\n") for chunk in response.iter_bytes())
    assert lines == 100_000


# -- hostile input -------------------------------------------------------------------


TRAVERSALS = (
    "../../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd",
    "..%5c..%5cetc%5cpasswd",
    "..\\..\\etc\\passwd",
    "1%23/../../etc/passwd",
    "1#/../etc/passwd",
    "%2fetc%2fpasswd",
    "/etc/passwd",
    "....//....//etc/passwd",
    "1%00",
    "1/../../../etc/passwd",
)


def test_traversal_forms_never_reach_a_file(api):
    url = urlsplit(api.server.url)
    auth = {"Authorization": f"Bearer {api.server.tokens['auditor']}"}
    templates = (
        "/training-runs/{}", "/training-runs/{}/metrics", "/training-runs/{}/dataset?format=csv",
        "/model-versions/{}", "/model-versions/{}/download", "/training-runs?model={}", "/model-versions?model={}",
        f"/training-runs/{api.run_id}/dataset?format={{}}", f"/training-runs/{api.run_id}/dataset?split={{}}",
        "/datasets/current?format={}", "/datasets/current/{}",
    )
    checked = 0
    for template in templates:
        for attack in TRAVERSALS:
            connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            try:
                connection.request("GET", template.format(attack), headers=auth)
                response = connection.getresponse()
                body = response.read().decode("utf-8", "replace")
            finally:
                connection.close()
            assert response.status in (400, 404, 422), (template, attack, response.status, body[:200])
            assert not any(marker in body for marker in PASSWD_MARKERS)
            checked += 1
    assert checked == len(templates) * len(TRAVERSALS)


def _hostile_uris(root: Path, outside: Path) -> list[str]:
    (root / "models").mkdir(parents=True, exist_ok=True)
    link_dir = root / "models" / "link-out"
    if not link_dir.is_symlink():
        link_dir.symlink_to(outside, target_is_directory=True)
    link_file = root / "snapshots" / "link.parquet"
    link_file.parent.mkdir(parents=True, exist_ok=True)
    if not link_file.is_symlink():
        link_file.symlink_to(outside / "secret.parquet")
    return [
        str(outside),
        str(outside / "secret.parquet"),
        f"file://{outside / 'secret.parquet'}",
        f"{root}/../{outside.name}/secret.parquet",
        f"{root}/snapshots/../../{outside.name}",
        f"{root}/%2e%2e/{outside.name}",
        str(link_dir),
        str(link_file),
        "/etc",
        "/etc/passwd",
        "file:///etc/passwd",
        "s3://another-bucket/snapshots/x.parquet",
        "memory://snapshots/x.parquet",
        "../../../../etc/passwd",
    ]


def test_hostile_uris_written_into_the_tables_are_refused(api, tmp_path):
    from trainer.core.blob_store import sha256_hex

    settings = api.space.settings()
    root = Path(settings.artifacts_url)
    outside = root.parent / f"outside-{secrets.token_hex(3)}"
    outside.mkdir()
    # Files outside the root that would pass every hash check if they were read.
    run = api.store().get_run(api.run_id)
    snapshot_bytes = local_path(api, run.snapshot_uri).read_bytes()
    (outside / "secret.parquet").write_bytes(snapshot_bytes)
    shutil.copytree(local_path(api, run.artifact_uri), outside, dirs_exist_ok=True)
    assert sha256_hex(snapshot_bytes) == run.snapshot_sha256

    hostile = _hostile_uris(root, outside)
    try:
        with api.server.client() as client:
            for uri in hostile:
                api.space.query("update training.training_runs set snapshot_uri = ? where run_id = ?", (uri, api.run_id))
                api.space.query(
                    "update training.model_versions set artifact_uri = ? where model_version_id = ?",
                    (uri, api.model_version_id),
                )
                for path in (f"/training-runs/{api.run_id}/dataset?format=parquet",
                             f"/training-runs/{api.run_id}/dataset?format=jsonl",
                             f"/model-versions/{api.model_version_id}/download"):
                    response = client.get(path)
                    assert response.status_code == 409, (uri, path, response.status_code, response.text[:200])
                    # A percent-encoded `..` is a literal (missing) name inside the store.
                    reasons = ("outside", "not in the artifact store", "missing from the store")
                    assert any(reason in response.json()["detail"] for reason in reasons), response.text
                    assert not response.content.startswith(b"PAR1")
    finally:
        api.space.query("update training.training_runs set snapshot_uri = ? where run_id = ?", (run.snapshot_uri, api.run_id))
        api.space.query("update training.model_versions set artifact_uri = ? where model_version_id = ?",
                        (run.artifact_uri, api.model_version_id))
    refused = [row for row in audit_rows(api, "/model-versions/{model_version_id}/download")
               if row["outcome"] == "refused" and row["object_id"] == str(api.model_version_id)
               and row["token_state"] == "valid"]  # not the attempts without a token (401) of other tests
    assert len(refused) >= len(hostile) and all(row["status_code"] == 409 and row["bytes_sent"] == 0 for row in refused)


def test_a_model_file_listed_with_an_unsafe_name_is_refused(api, tmp_path):
    """The artifact's own manifest is data: a name in it that climbs out is refused."""
    from trainer.core.blob_store import ArtifactStore

    version = api.store().get_model_version_by_id(api.model_version_id)
    artifacts = ArtifactStore(api.space.settings().artifacts_url)
    manifest = json.loads(artifacts.read_bytes(artifacts.join(version.artifact_uri, "model.json")))
    manifest["files"]["../../../../etc/passwd"] = "0" * 64
    directory = f"models/hostile/run-0-{secrets.token_hex(4)}"
    uri, sha = artifacts.write_bytes(f"{directory}/model.json", json.dumps(manifest).encode())
    try:
        api.space.query("update training.model_versions set artifact_uri = ?, artifact_sha256 = ? where model_version_id = ?",
                        (artifacts.uri(directory), sha, api.model_version_id))
        with api.server.client() as client:
            response = client.get(f"/model-versions/{api.model_version_id}/download")
        assert response.status_code == 409 and "unsafe file name" in response.json()["detail"]
    finally:
        api.space.query("update training.model_versions set artifact_uri = ?, artifact_sha256 = ? where model_version_id = ?",
                        (version.artifact_uri, version.artifact_sha256, api.model_version_id))


def test_an_altered_snapshot_is_refused(api):
    run_id = _big_run(api, 2_000)
    run = api.store().get_run(run_id)
    path = local_path(api, run.snapshot_uri)
    original = path.read_bytes()
    path.write_bytes(original[:-10] + b"0123456789")
    try:
        with api.server.client() as client:
            response = client.get(f"/training-runs/{run_id}/dataset", params={"format": "csv"})
        assert response.status_code == 409 and "altered" in response.json()["detail"]
    finally:
        path.write_bytes(original)


# -- the database goes away; schemathesis; logs ---------------------------------------


def test_a_database_that_went_away_answers_503(api, tmp_path):
    """A second server on a copy of the database, which is then taken away."""
    space = api.space
    copy = space.copy_database(tmp_path)
    with running_api(copy.env(TRAINER_ARTIFACTS_URL=space.settings().artifacts_url), TOKENS) as server:
        with server.client() as client:
            assert client.get("/training-runs").status_code == 200
            if copy.target == "duckdb":
                copy.duckdb_path.rename(tmp_path / "away.duckdb")
            else:
                with space.server.connect() as connection:
                    connection.execute(f'drop database "{copy.pg_database}" with (force)')
            for path in ("/training-runs", f"/training-runs/{api.run_id}", f"/training-runs/{api.run_id}/dataset",
                         "/datasets/current", "/audit-log", f"/model-versions/{api.model_version_id}/download"):
                response = client.get(path)
                assert response.status_code == 503, (path, response.status_code, response.text)
                assert "Traceback" not in response.text
            assert client.get("/health").json() == {"status": "unavailable", "database": "unavailable",
                                                     "version": client.get("/health").json()["version"]}
        assert "Traceback" not in server.log()


def test_schemathesis_finds_no_server_error(api, tmp_path):
    with api.server.client("spa") as client:
        spec = client.get("/openapi.json")
    assert spec.status_code == 200
    (tmp_path / "openapi.json").write_bytes(spec.content)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "st"), "run", str(tmp_path / "openapi.json"),
            "--url", api.server.url,
            "--header", f"Authorization: Bearer {api.server.tokens['spa']}",
            "--checks", "all",
            "--max-examples", "15",
            "--seed", "1",
            "--phases", "examples,coverage,fuzzing",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout.lower()
    assert "Traceback" not in api.server.log()


def test_no_secret_ever_reaches_the_servers_log(api):
    """Run last in this module: everything above has been logged by now."""
    log = api.server.log()
    assert "GET /training-runs" in log  # the access log is on
    for secret in api.server.tokens.values():
        assert secret not in log
        assert secret[:12] not in log
