"""The review loop over HTTP (CONTRACT §7, docs/API.md "The review loop") against a
live server (`python -m trainer serve`), on DuckDB and on PostgreSQL: a propose job
queued through the API and run by `python -m trainer worker`, the proposals it
wrote, the review queue and its documents in priority order, a version's acceptance
once reviewers answered in the app's event log, and every route's refusals in the
audit log.

One module fixture per engine keeps it cheap: the 10 demo forms with the views
built (the template tests/test_api.py copies too), one quick model trained in
process (the character n-gram text model alone), one server, one worker run. The
views are views: events appended to the app's log show at once, with no dbt build.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import pytest
from api_server import ApiServer, running_api, wait_for
from conftest import ENGINES, Workspace, new_workspace, prepared_workspace

TOKENS = {
    "auditor": ("reader", secrets.token_urlsafe(32)),
    "spa": ("trainer", secrets.token_urlsafe(32)),
}
MODEL_NAME = "review-model"
GHOST_WORKER = "gone:1:dead"
PENDING = "from datasets.live_segments where review_state = 'pending'"


@dataclass
class Loop:
    space: Workspace
    server: ApiServer
    version_id: int
    version: int
    queued: dict  # the POST's answer
    location: str
    ghost_job: int  # claimed by a worker that vanished an hour ago
    bad_job: int  # queued with params a worker cannot use
    worker: object  # the CompletedProcess of `worker --until-empty`

    @property
    def actor(self) -> str:
        return f"model:{MODEL_NAME}@{self.version}"

    def audit(self) -> list[dict]:
        """The newest 500 rows of training.audit_log."""
        from trainer.results.store import ResultsStore

        return [entry.__dict__ for entry in ResultsStore(self.space.database()).page_audit_log(500).items]

    def audit_rows(self, request_ids: list[str]) -> dict[str, dict]:
        """The audit rows of these requests (waited for), by request id."""

        def found():
            rows = {row["request_id"]: row for row in self.audit()}
            return rows if all(request_id in rows for request_id in request_ids) else None

        return wait_for(found)

    def pending(self) -> dict[str, str]:
        """annotation_id -> document_id of every pending live segment."""
        return dict(self.space.query(f"select annotation_id, document_id {PENDING}"))


@pytest.fixture(scope="module", params=ENGINES)
def loop(request, tmp_path_factory):
    from trainer.model.arguments import TrainingArguments
    from trainer.results.proposal_store import ProposalStore
    from trainer.runs.training import train

    space = new_workspace(tmp_path_factory.mktemp(f"review-loop-{request.param}"), request.param, request)
    prepared_workspace(space, 10)
    # The API is under test, not the model: the char n-gram text model alone is quick.
    quick = TrainingArguments(model_name=MODEL_NAME, seed=3, embedding_features=False, layout_features=False,
                              neighbour_features=False, label_issues=False)  # fmt: skip
    version = train(quick, space.settings(), progress=False).model_version
    jobs = ProposalStore(space.database())
    ghost = jobs.queue_job(version.model_version_id, {"all_segments": False, "requested_by": None})
    assert jobs.claim_next_job(GHOST_WORKER).job_id == ghost
    space.execute_script(
        "update training.proposal_jobs set started_at = started_at - interval '1 hour', "
        f"heartbeat_at = heartbeat_at - interval '1 hour' where job_id = {ghost}"
    )
    with running_api(space.env(), TOKENS) as server:
        with server.client("spa") as client:
            queued = client.post(f"/model-versions/{version.model_version_id}/propose", json={"all_segments": False})
        assert queued.status_code == 202, queued.text
        bad = jobs.queue_job(version.model_version_id, {"all_segments": "yes"})
        # A heartbeat every 0.2 s: the job's beats go through ProposalStore.heartbeat.
        worker = space.trainer("worker", "--until-empty", "--quiet", TRAINER_HEARTBEAT_INTERVAL="0.2")
        yield Loop(space, server, version.model_version_id, version.version, queued.json(), queued.headers["location"],
                   ghost, bad, worker)  # fmt: skip


def _walk(client: httpx.Client, path: str, limit: int) -> tuple[list[dict], int]:
    """Every item of a paged listing, page by page; and its total."""
    items, offset, total = [], 0, None
    while offset is not None:
        page = client.get(path, params={"limit": limit, "offset": offset})
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["limit"] == limit and body["offset"] == offset
        assert total in (None, body["total"])
        total = body["total"]
        assert len(body["items"]) == min(limit, total - offset)
        items += body["items"]
        offset = body["next_offset"]
    return items, total


def test_a_propose_job_queued_over_http_is_run_by_the_worker(loop):
    queued = loop.queued
    assert queued["status"] == "queued" and queued["model_version_id"] == loop.version_id
    assert queued["requested_by"] == "spa" and queued["all_segments"] is False
    assert queued["url"] == loop.location == f"/propose-jobs/{queued['job_id']}"
    assert queued["proposed"] is None and queued["created_at"].endswith("Z")
    job_id = queued["job_id"]
    # The ghost's job is reaped, ours runs, the one with unusable params fails: exit status 1.
    output = loop.worker.stdout
    assert loop.worker.returncode == 1, output + loop.worker.stderr
    assert f"propose job {loop.ghost_job}: failed (worker lost)" in output
    assert f"propose job {job_id}: claimed (model version {loop.version_id})" in output
    assert f"propose job {job_id}: succeeded: {MODEL_NAME} version {loop.version} proposed " in output
    assert f"propose job {loop.bad_job} failed: invalid params: all_segments must be true or false" in output
    assert "Queue empty: 0 succeeded, 0 failed; propose jobs: 1 succeeded, 1 failed." in output
    assert "Traceback" not in loop.worker.stderr and "heartbeat of" not in loop.worker.stderr

    pending = loop.pending()
    with loop.server.client() as client:
        job = client.get(loop.location).json()
        ghost = client.get(f"/propose-jobs/{loop.ghost_job}").json()
        bad = client.get(f"/propose-jobs/{loop.bad_job}").json()
        assert client.get("/propose-jobs/999999").status_code == 404
    assert job["status"] == "succeeded" and job["error"] is None and job["worker"] and job["finished_at"].endswith("Z")
    assert job["proposed"] == job["new_proposals"] == len(pending) > 0 and job["changed_proposals"] == 0
    assert job["proposals_url"] == f"/model-versions/{loop.version_id}/proposals"
    started, beat, finished = (datetime.fromisoformat(job[key]) for key in ("started_at", "heartbeat_at", "finished_at"))
    assert started <= beat <= finished
    assert ghost["status"] == "failed" and ghost["error"].startswith(f"worker lost: {GHOST_WORKER} sent no heartbeat")
    assert bad["status"] == "failed" and bad["error"] == "invalid params: all_segments must be true or false, not 'yes'"
    assert bad["all_segments"] is False and bad["requested_by"] is None  # as the API reads params it cannot use

    # The POST is audited: who queued what, and the job it made.
    route = "/model-versions/{model_version_id}/propose"
    (post,) = [row for row in loop.audit() if row["route"] == route and row["status_code"] == 202]
    assert post["token_name"] == "spa" and post["outcome"] == "complete" and post["object_id"] == str(loop.version_id)
    assert post["details"]["job_id"] == job_id and post["details"]["all_segments"] is False


def test_one_proposal_per_pending_segment_paged_least_confident_first(loop):
    from trainer.results.proposal_store import ProposalStore

    pending = loop.pending()
    stored = ProposalStore(loop.space.database()).page_proposals(loop.version_id, 10_000).items
    assert sorted(proposal.annotation_id for proposal in stored) == sorted(pending)
    assert {proposal.actor for proposal in stored} == {loop.actor}
    assert all(0 <= proposal.margin <= proposal.confidence <= 1 for proposal in stored)
    with loop.server.client() as client:
        served, total = _walk(client, f"/model-versions/{loop.version_id}/proposals", 7)
        assert client.get("/model-versions/999999/proposals").status_code == 404
    assert total == len(stored)
    assert [(item["annotation_id"], item["label"], item["actor"]) for item in served] == [
        (proposal.annotation_id, proposal.label, proposal.actor) for proposal in stored
    ]
    confidences = [item["confidence"] for item in served]
    assert confidences == sorted(confidences)
    assert served[0]["confidence"] == pytest.approx(stored[0].confidence) and served[0]["created_at"].endswith("Z")


def test_the_review_queue_and_its_documents_come_in_priority_order(loop):
    pending = loop.pending()
    labels = dict(loop.space.query("select annotation_id, label from training.proposals where model_version_id = ?",
                                   (loop.version_id,)))  # fmt: skip
    texts = dict(loop.space.query(f"select annotation_id, text {PENDING}"))
    with loop.server.client() as client:
        queue, total = _walk(client, "/review-queue", 13)
        documents, document_total = _walk(client, "/review-queue/documents", 3)
    assert total == len(queue) == len(pending)
    assert [item["priority"] for item in queue] == list(range(1, total + 1))
    assert {item["annotation_id"] for item in queue} == set(pending)
    for item in queue:
        assert item["review_state"] == "pending" and item["document_id"] == pending[item["annotation_id"]]
        assert item["model_version_id"] == loop.version_id and item["model_name"] == MODEL_NAME
        assert item["version"] == str(loop.version) and item["proposed_at"].endswith("Z")
        assert item["proposed_label"] == labels[item["annotation_id"]] and item["text"] == texts[item["annotation_id"]]
    confidences = [item["confidence"] for item in queue]
    assert confidences == sorted(confidences)  # least confident first

    assert document_total == len(documents) == len(set(pending.values()))
    assert [row["priority"] for row in documents] == list(range(1, document_total + 1))
    per_document = {}
    for item in queue:
        per_document.setdefault(item["document_id"], []).append(item["confidence"])
    for row in documents:
        confidences = per_document[row["document_id"]]
        assert row["pending_segments"] == row["proposed_segments"] == len(confidences)
        assert row["min_confidence"] == pytest.approx(min(confidences))
        assert row["mean_uncertainty"] == pytest.approx(sum(1 - c for c in confidences) / len(confidences))
    uncertainties = [row["mean_uncertainty"] for row in documents]
    assert uncertainties == sorted(uncertainties, reverse=True)  # most uncertain first

    # Every listing is audited, with what it handed out.
    rows = [row for row in loop.audit() if row["route"] in ("/review-queue", "/review-queue/documents")]
    assert rows and all(row["outcome"] == "complete" and row["token_name"] == "auditor" for row in rows)
    assert {row["details"]["rows"] for row in rows if row["route"] == "/review-queue"} >= {13}


def test_refusals_on_every_review_loop_route_are_audited(loop):
    """A reader may not queue a propose job (403); every refused attempt on the review
    loop's routes leaves one audit row, as on the other audited routes."""
    version = loop.version_id
    unknown = {"Authorization": "Bearer " + secrets.token_urlsafe(32)}
    reader = {"Authorization": f"Bearer {loop.server.tokens['auditor']}"}
    trainer = {"Authorization": f"Bearer {loop.server.tokens['spa']}"}
    propose, proposals, acceptance = (f"/model-versions/{{model_version_id}}/{name}"
                                      for name in ("propose", "proposals", "acceptance"))  # fmt: skip
    bad_boolean, nan = b'{"all_segments": "yes"}', b'{"all_segments": NaN}'
    cases = [
        # (method, path, headers, body, status, token_state, route, object_id)
        ("POST", f"/model-versions/{version}/propose", reader, b"{}", 403, "valid", propose, str(version)),
        ("POST", f"/model-versions/{version}/propose", {}, b"{}", 401, "none", propose, str(version)),
        ("POST", "/model-versions/999999/propose", trainer, b"{}", 404, "valid", propose, "999999"),
        ("POST", f"/model-versions/{version}/propose", trainer, bad_boolean, 422, "valid", propose, str(version)),
        ("POST", f"/model-versions/{version}/propose", trainer, nan, 422, "valid", propose, str(version)),
        ("POST", f"/model-versions/{version}/propose", trainer, b'{"other": 1}', 422, "valid", propose, str(version)),
        ("POST", f"/model-versions/{version}/propose", trainer, b"{not json", 400, "valid", propose, str(version)),
        ("POST", f"/model-versions/{version}/propose", trainer, b"x" * 70_000, 413, "valid", propose, str(version)),
        ("POST", f"/model-versions/0{version}/propose", trainer, b"{}", 422, "valid", propose, f"0{version}"),
        ("GET", "/review-queue", {}, None, 401, "none", "/review-queue", None),
        ("GET", "/review-queue?limit=0", reader, None, 422, "valid", "/review-queue", None),
        ("GET", "/review-queue/documents", unknown, None, 401, "unknown", "/review-queue/documents", None),
        ("GET", "/review-queue/documents?offset=-1", reader, None, 422, "valid", "/review-queue/documents", None),
        ("GET", f"/model-versions/{version}/proposals", {}, None, 401, "none", proposals, str(version)),
        ("GET", "/model-versions/999999/proposals", reader, None, 404, "valid", proposals, "999999"),
        ("GET", f"/model-versions/{version}/proposals?limit=501", reader, None, 422, "valid", proposals, str(version)),
        ("GET", f"/model-versions/{version}/acceptance", unknown, None, 401, "unknown", acceptance, str(version)),
        ("GET", "/model-versions/999999/acceptance", reader, None, 404, "valid", acceptance, "999999"),
        ("GET", "/propose-jobs/1", {}, None, 401, "none", "/propose-jobs/{job_id}", "1"),
        ("GET", "/propose-jobs/999999", reader, None, 404, "valid", "/propose-jobs/{job_id}", "999999"),
        ("GET", "/propose-jobs/1.0", reader, None, 422, "valid", "/propose-jobs/{job_id}", "1.0"),
    ]
    sent = []
    before = loop.space.query("select count(*) from training.proposal_jobs")[0][0]
    with httpx.Client(base_url=loop.server.url, timeout=60) as client:
        for method, path, headers, body, status, *_ in cases:
            response = client.request(method, path, headers=headers, content=body)
            assert response.status_code == status, (method, path, response.status_code, response.text[:300])
            assert len(response.content) < 2000 and "Traceback" not in response.text
            sent.append(response.headers["x-request-id"])
            if status == 403:
                assert "role reader" in response.json()["detail"]
    assert loop.space.query("select count(*) from training.proposal_jobs")[0][0] == before  # nothing queued
    rows = loop.audit_rows(sent)
    for (method, path, _, _, status, token_state, route, object_id), request_id in zip(cases, sent, strict=True):
        row = rows[request_id]
        assert (row["method"], row["route"], row["status_code"]) == (method, route, status), row
        assert row["outcome"] == "refused", row
        assert row["token_state"] == token_state and row["object_id"] == object_id, row
        assert row["token_name"] == {"none": "(none)", "unknown": "(unknown)"}.get(token_state, row["token_name"])
        assert row["error"] and row["bytes_sent"] == 0, row
    assert rows[sent[0]]["token_name"] == "auditor" and "role reader" in rows[sent[0]]["error"]


def test_missing_views_are_a_409_naming_the_view(loop):
    with loop.server.client("spa") as client:
        for view, path, method in (
            ("review_queue_documents", "/review-queue/documents", "GET"),
            ("review_queue", "/review-queue", "GET"),
            ("proposal_acceptance", f"/model-versions/{loop.version_id}/acceptance", "GET"),
            ("live_segments", f"/model-versions/{loop.version_id}/propose", "POST"),
        ):
            loop.space.execute_script(f"alter view datasets.{view} rename to {view}_away")
            try:
                response = client.request(method, path, json={} if method == "POST" else None)
            finally:
                loop.space.execute_script(f"alter view datasets.{view}_away rename to {view}")
            assert response.status_code == 409, (path, response.text)
            detail = response.json()["detail"]
            assert f"datasets.{view} does not exist" in detail and "dbt build" in detail, detail


def test_acceptance_counts_what_reviewers_answered(loop):
    """Run last in this module: it appends reviewers' events to the app's log."""
    with loop.server.client() as client:
        before = client.get(f"/model-versions/{loop.version_id}/acceptance").json()
        queue_before = client.get("/review-queue", params={"limit": 4}).json()
    assert before["actor"] == loop.actor and before["items"] == []
    assert before["totals"] == {"proposals": 0, "accepted": 0, "corrected": 0, "rejected": 0, "deleted": 0,
                                "pending": 0, "superseded": 0, "acceptance_rate": None}  # fmt: skip

    # The app shows the four most urgent proposals, and reviewers answer three of them.
    shown = [(item["annotation_id"], item["proposed_label"]) for item in queue_before["items"]]
    last_id, last_at = loop.space.query("select max(event_id), max(occurred_at) from app.annotation_events")[0]
    events = []
    for position, (annotation_id, label) in enumerate(shown):
        at = last_at + timedelta(minutes=1 + position)
        events.append((annotation_id, "proposed", label, loop.actor, at))
        other = "question" if label != "question" else "answer"
        answer = [("accepted", label), ("accepted", other), ("rejected", None), None][position]
        if answer is not None:
            events.append((annotation_id, answer[0], answer[1], "user:elif", at + timedelta(seconds=10)))
    for offset, event in enumerate(events, start=1):
        loop.space.query(
            "insert into app.annotation_events (event_id, annotation_id, event_type, label, actor, occurred_at, note) "
            "values (?, ?, ?, ?, ?, ?, 'review loop test')",
            (last_id + offset, *event),
        )
    outcomes = ["accepted", "corrected", "rejected", "pending"]
    expected: dict = {}
    for (_, label), outcome in zip(shown, outcomes, strict=True):
        counts = expected.setdefault(label, dict.fromkeys(("proposals", *outcomes, "deleted", "superseded"), 0))
        counts["proposals"] += 1
        counts[outcome] += 1

    def rate(counts: dict) -> float | None:
        decided = counts["accepted"] + counts["corrected"] + counts["rejected"]
        return counts["accepted"] / decided if decided else None

    with loop.server.client() as client:
        after = client.get(f"/model-versions/{loop.version_id}/acceptance").json()
        queue_after = client.get("/review-queue", params={"limit": 1}).json()
    assert after["model_name"] == MODEL_NAME and after["version"] == loop.version
    assert after["totals"] == {"proposals": 4, "accepted": 1, "corrected": 1, "rejected": 1, "deleted": 0,
                               "pending": 1, "superseded": 0, "acceptance_rate": pytest.approx(1 / 3)}  # fmt: skip
    served = {item["proposed_label"]: item for item in after["items"]}
    assert set(served) == set(expected)
    for label, counts in expected.items():
        assert {key: served[label][key] for key in counts} == counts, label
        assert served[label]["acceptance_rate"] == (pytest.approx(rate(counts)) if rate(counts) is not None else None)
    # The answered segments left the queue; the one still waiting stays.
    assert queue_after["total"] == queue_before["total"] - 3
    row = next(entry for entry in loop.audit() if entry["route"] == "/model-versions/{model_version_id}/acceptance"
               and entry["status_code"] == 200)  # fmt: skip
    assert row["outcome"] == "complete" and row["details"]["actor"] == loop.actor
    json.dumps(after, allow_nan=False)  # strict JSON: no NaN
