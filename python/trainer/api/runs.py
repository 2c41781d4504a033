"""Training runs: list, inspect, queue, and their metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from trainer.api.context import context_of, reader, results, trainer
from trainer.api.guard import MAX_BODY_BYTES, attempt_of, read_body
from trainer.api.schemas import (
    Lineage,
    MetricOut,
    QueuedRun,
    RunId,
    RunMetrics,
    RunOut,
    RunPage,
    TrainingRequest,
    parse_training_request,
)
from trainer.api.tokens import ApiToken
from trainer.core.errors import NotFound
from trainer.model.arguments import MODEL_NAME_PATTERN
from trainer.results.store import ResultsStore

router = APIRouter(tags=["training runs"])

Limit = Query(50, ge=1, le=500, description="Rows per page.")
Offset = Query(0, ge=0, le=10**9, description="Rows to skip (newest first).")
ModelFilter = Query(None, pattern=MODEL_NAME_PATTERN.pattern, max_length=100, description="Only this model's.")


def run_url(run_id: int) -> str:
    return f"/training-runs/{run_id}"


def next_offset(page) -> int | None:
    following = page.offset + len(page.items)
    return following if following < page.total and page.items else None


@router.get("/training-runs", response_model=RunPage, summary="List training runs, newest first")
def list_runs(
    status: Literal["queued", "running", "succeeded", "failed"] | None = Query(None, description="Only runs in this state."),
    model: str | None = ModelFilter,
    limit: int = Limit,
    offset: int = Offset,
    store: ResultsStore = Depends(results),
    _: ApiToken = Depends(reader),
):
    page = store.page_runs(limit, offset, status=status, model_name=model)
    versions = store.model_versions_of_runs([run.run_id for run in page.items])
    items = [
        RunOut(
            run_id=run.run_id,
            model_name=run.model_name,
            status=run.status,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            error=run.error,
            dataset_fingerprint=run.dataset_fingerprint,
            train_examples=run.train_examples,
            eval_examples=run.eval_examples,
            model_version_id=versions[run.run_id].model_version_id if run.run_id in versions else None,
            url=run_url(run.run_id),
        )
        for run in page.items
    ]
    return RunPage(items=items, total=page.total, limit=limit, offset=offset, next_offset=next_offset(page))


@router.get(
    "/training-runs/{run_id}",
    response_model=Lineage,
    summary="One run: status, params, library versions, dataset, snapshot, artifact, error",
)
def get_run(run_id: RunId, store: ResultsStore = Depends(results), _: ApiToken = Depends(reader)):
    from trainer.results.lineage import run_lineage

    return with_links(run_lineage(store, run_id))


def with_links(lineage: dict) -> dict:
    run_id = lineage["run"]["run_id"]
    links = {"self": run_url(run_id), "metrics": f"{run_url(run_id)}/metrics"}
    if lineage["dataset"]["snapshot"] is not None:
        links["dataset"] = f"{run_url(run_id)}/dataset"
    if lineage["model_version"] is not None:
        version_id = lineage["model_version"]["model_version_id"]
        links["model_version"] = f"/model-versions/{version_id}"
        links["download"] = f"/model-versions/{version_id}/download"
    return {**lineage, "links": links}


@router.get("/training-runs/{run_id}/metrics", response_model=RunMetrics, summary="The metric rows a run wrote")
def get_metrics(run_id: RunId, store: ResultsStore = Depends(results), _: ApiToken = Depends(reader)):
    run = store.get_run(run_id)
    items = [MetricOut(split=m.split, name=m.name, label=m.label, value=m.value) for m in store.run_metrics(run_id)]
    return RunMetrics(run_id=run.run_id, status=run.status, items=items)


@router.post(
    "/training-runs",
    status_code=202,
    response_model=QueuedRun,
    summary="Queue a training run (a worker trains it)",
    # The body is read by the route itself, after the token is checked and only up to
    # MAX_BODY_BYTES; the schema is announced here (see app.py, which publishes it).
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": f"TrainingArguments and a source; at most {MAX_BODY_BYTES} bytes.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TrainingRequest"}}},
        }
    },
    responses={
        400: {"description": "The body is not JSON."},
        403: {"description": "The token's role is not `trainer`."},
        404: {"description": "`source.reference` names no stored snapshot."},
        408: {"description": "The body did not arrive in time."},
        413: {"description": f"The body is larger than {MAX_BODY_BYTES} bytes."},
        422: {"description": "A field is invalid; `detail` names each (`loc`)."},
    },
)
async def queue_run(request: Request, response: Response, token: ApiToken = Depends(trainer)):
    raw = await read_body(request)
    # Parsed in a thread: a slow parse must not hold the event loop (the body limit keeps it short anyway).
    body = await run_in_threadpool(parse_training_request, raw)
    run_id = await run_in_threadpool(_queue, request, body, token)
    response.headers["Location"] = run_url(run_id)
    return QueuedRun(run_id=run_id, status="queued", url=run_url(run_id))


def _queue(request: Request, body: TrainingRequest, token: ApiToken) -> int:
    from trainer.model.arguments import TrainingArguments
    from trainer.runs.sources import DatabaseSource, SnapshotSource
    from trainer.runs.work_queue import request_run

    context = context_of(request)
    store = context.ready_store()
    values = body.model_dump(exclude={"source"})
    if body.source.kind == "snapshot":
        source = SnapshotSource(body.source.reference)
    else:
        source = DatabaseSource(body.source.moment())
    attempt = attempt_of(request)
    if attempt is not None:
        attempt.details.update({"model_name": body.model_name, **source.params()})
    if body.source.kind == "snapshot":
        _check_snapshot_exists(store, source.reference.strip().lower())
    run_id = request_run(TrainingArguments(**values), context.settings, source, requested_by=token.name)
    if attempt is not None:
        attempt.object_id = str(run_id)
    return run_id


def _check_snapshot_exists(store: ResultsStore, reference: str) -> None:
    """Refuse now what the worker would fail on later."""
    if reference.isdigit():
        if store.get_run(int(reference)).snapshot_uri is None:
            raise NotFound(f"training run {reference} recorded no snapshot to train on")
    else:
        store.find_snapshot(reference)
