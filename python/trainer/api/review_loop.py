"""The review loop (CONTRACT §7): the review queue and its documents, a model
version's proposals and how they fared, and propose jobs (queued here, run by
`python -m trainer worker`). Every route here is audited (trainer.api.guard)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from trainer.api.context import context_of, reader, results, trainer
from trainer.api.guard import MAX_BODY_BYTES, attempt_of, read_body
from trainer.api.runs import Limit, next_offset
from trainer.api.schemas import (
    AcceptanceByLabel,
    AcceptanceCountsOut,
    AcceptanceOut,
    JobId,
    ModelVersionId,
    ProposalOut,
    ProposalPage,
    ProposeJobOut,
    ProposeRequest,
    ReviewDocumentOut,
    ReviewDocumentPage,
    ReviewQueueItem,
    ReviewQueuePage,
    parse_propose_request,
)
from trainer.api.tokens import ApiToken
from trainer.results.records import ProposalJob
from trainer.results.store import ResultsStore

router = APIRouter(tags=["review loop"])

Offset = Query(0, ge=0, le=10**9, description="Rows to skip (in priority order).")
ProposalOffset = Query(0, ge=0, le=10**9, description="Rows to skip (least confident first).")


def job_url(job_id: int) -> str:
    return f"/propose-jobs/{job_id}"


def _audit_page(request: Request, page) -> None:
    attempt = attempt_of(request)
    if attempt is not None:
        attempt.details.update(limit=page.limit, offset=page.offset, rows=len(page.items), total=page.total)


def _job_out(job: ProposalJob) -> ProposeJobOut:
    return ProposeJobOut(
        job_id=job.job_id,
        model_version_id=job.model_version_id,
        status=job.status,
        all_segments=job.params.get("all_segments") is True,
        requested_by=job.params.get("requested_by"),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
        worker=job.worker,
        error=job.error,
        proposed=job.proposed,
        new_proposals=job.new_proposals,
        changed_proposals=job.changed_proposals,
        url=job_url(job.job_id),
        proposals_url=f"/model-versions/{job.model_version_id}/proposals",
    )


@router.get(
    "/review-queue",
    response_model=ReviewQueuePage,
    summary="The pending segments with their newest proposal, by priority (datasets.review_queue)",
)
def review_queue(
    request: Request,
    limit: int = Limit,
    offset: int = Offset,
    _store: ResultsStore = Depends(results),
    _: ApiToken = Depends(reader),
):
    from trainer.data.review_loop import page_review_queue

    return _view_page(request, page_review_queue, ReviewQueueItem, ReviewQueuePage, limit, offset)


@router.get(
    "/review-queue/documents",
    response_model=ReviewDocumentPage,
    summary="The documents with pending segments, most uncertain first (datasets.review_queue_documents)",
)
def review_documents(
    request: Request,
    limit: int = Limit,
    offset: int = Offset,
    _store: ResultsStore = Depends(results),
    _: ApiToken = Depends(reader),
):
    from trainer.data.review_loop import page_review_documents

    return _view_page(request, page_review_documents, ReviewDocumentOut, ReviewDocumentPage, limit, offset)


def _view_page(request: Request, read_page, item_type, page_type, limit: int, offset: int):
    """One page of a review-loop view (trainer.data.review_loop), audited, as ``page_type``."""
    with context_of(request).database.session() as session:
        page = read_page(session, limit, offset)
    _audit_page(request, page)
    return page_type(
        items=[item_type(**row) for row in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
        next_offset=next_offset(page),
    )


@router.get(
    "/model-versions/{model_version_id}/proposals",
    response_model=ProposalPage,
    summary="A model version's proposals (training.proposals), least confident first",
    tags=["model versions"],
)
def list_proposals(
    request: Request,
    model_version_id: ModelVersionId,
    limit: int = Limit,
    offset: int = ProposalOffset,
    store: ResultsStore = Depends(results),
    _: ApiToken = Depends(reader),
):
    from trainer.results.proposal_store import ProposalStore

    store.get_model_version_by_id(model_version_id)  # 404 for an unknown version
    page = ProposalStore(context_of(request).database).page_proposals(model_version_id, limit, offset)
    _audit_page(request, page)
    items = [
        ProposalOut(
            annotation_id=proposal.annotation_id,
            label=proposal.label,
            confidence=proposal.confidence,
            margin=proposal.margin,
            actor=proposal.actor,
            created_at=proposal.created_at,
        )
        for proposal in page.items
    ]
    return ProposalPage(
        model_version_id=model_version_id,
        items=items,
        total=page.total,
        limit=limit,
        offset=offset,
        next_offset=next_offset(page),
    )


@router.get(
    "/model-versions/{model_version_id}/acceptance",
    response_model=AcceptanceOut,
    summary="How a model version's proposals fared with reviewers (datasets.proposal_acceptance)",
    tags=["model versions"],
)
def acceptance(
    request: Request,
    model_version_id: ModelVersionId,
    store: ResultsStore = Depends(results),
    _: ApiToken = Depends(reader),
):
    from trainer.data.review_loop import proposal_acceptance_of
    from trainer.results.proposal_store import proposal_actor

    version = store.get_model_version_by_id(model_version_id)
    actor = proposal_actor(version)
    with context_of(request).database.session() as session:
        found = proposal_acceptance_of(session, actor)
    attempt = attempt_of(request)
    if attempt is not None:
        attempt.details.update(actor=actor, proposals=found.totals.proposals)

    def counts(row) -> dict:
        return {
            "proposals": row.proposals,
            "accepted": row.accepted,
            "corrected": row.corrected,
            "rejected": row.rejected,
            "deleted": row.deleted,
            "pending": row.pending,
            "superseded": row.superseded,
            "acceptance_rate": row.acceptance_rate,
        }

    return AcceptanceOut(
        model_version_id=version.model_version_id,
        model_name=version.model_name,
        version=version.version,
        actor=actor,
        totals=AcceptanceCountsOut(**counts(found.totals)),
        items=[AcceptanceByLabel(proposed_label=row.proposed_label, **counts(row)) for row in found.by_label],
    )


@router.post(
    "/model-versions/{model_version_id}/propose",
    status_code=202,
    response_model=ProposeJobOut,
    summary="Queue a propose job: the version labels the pending segments (a worker runs it)",
    tags=["model versions"],
    # Read by the route itself after the token, as POST /training-runs' body (app.py publishes the schema).
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": f"ProposeRequest (`{{}}` for the defaults); at most {MAX_BODY_BYTES} bytes.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProposeRequest"}}},
        }
    },
    responses={
        400: {"description": "The body is not JSON."},
        403: {"description": "The token's role is not `trainer`."},
        404: {"description": "No such model version."},
        408: {"description": "The body did not arrive in time."},
        409: {"description": "datasets.live_segments is not built (`dbt build`)."},
        413: {"description": f"The body is larger than {MAX_BODY_BYTES} bytes."},
        422: {"description": "A field is invalid; `detail` names each (`loc`)."},
    },
)
async def queue_propose(
    request: Request, response: Response, model_version_id: ModelVersionId, token: ApiToken = Depends(trainer)
):
    raw = await read_body(request)
    body = await run_in_threadpool(parse_propose_request, raw)
    job = await run_in_threadpool(_queue, request, model_version_id, body, token)
    response.headers["Location"] = job_url(job.job_id)
    return _job_out(job)


def _queue(request: Request, model_version_id: int, body: ProposeRequest, token: ApiToken) -> ProposalJob:
    from trainer.results.proposal_store import ProposalStore
    from trainer.runs.propose_jobs import request_propose

    context = context_of(request)
    store = context.ready_store()
    attempt = attempt_of(request)
    if attempt is not None:
        attempt.details.update(all_segments=body.all_segments)
    version = store.get_model_version_by_id(model_version_id)
    job_id = request_propose(context.settings, version.model_name, version.version, body.all_segments, token.name)
    if attempt is not None:
        attempt.details.update(job_id=job_id, model_name=version.model_name, version=version.version)
    return ProposalStore(context.database).get_job(job_id)


@router.get("/propose-jobs/{job_id}", response_model=ProposeJobOut, summary="One propose job: status, counts, error")
def get_propose_job(
    request: Request,
    job_id: JobId,
    _store: ResultsStore = Depends(results),
    _: ApiToken = Depends(reader),
):
    from trainer.results.proposal_store import ProposalStore

    return _job_out(ProposalStore(context_of(request).database).get_job(job_id))
