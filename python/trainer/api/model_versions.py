"""Model versions and the audit log (read-only listings)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from trainer.api.context import reader, results
from trainer.api.runs import Limit, ModelFilter, Offset, next_offset, with_links
from trainer.api.schemas import AuditEntryOut, AuditPage, Lineage, ModelVersionId, ModelVersionOut, ModelVersionPage
from trainer.api.tokens import ApiToken
from trainer.results.store import ModelVersion, ResultsStore

router = APIRouter()


def _version_out(version: ModelVersion) -> ModelVersionOut:
    return ModelVersionOut(
        model_version_id=version.model_version_id,
        model_name=version.model_name,
        version=version.version,
        run_id=version.run_id,
        artifact_uri=version.artifact_uri,
        artifact_sha256=version.artifact_sha256,
        created_at=version.created_at,
        download_url=f"/model-versions/{version.model_version_id}/download",
    )


@router.get(
    "/model-versions", response_model=ModelVersionPage, summary="List model versions, newest first", tags=["model versions"]
)
def list_model_versions(
    model: str | None = ModelFilter,
    limit: int = Limit,
    offset: int = Offset,
    store: ResultsStore = Depends(results),
    _: ApiToken = Depends(reader),
):
    page = store.page_model_versions(limit, offset, model_name=model)
    return ModelVersionPage(
        items=[_version_out(version) for version in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
        next_offset=next_offset(page),
    )


@router.get(
    "/model-versions/{model_version_id}",
    response_model=Lineage,
    summary="One model version and its lineage back to the exact examples",
    tags=["model versions"],
)
def get_model_version(
    model_version_id: ModelVersionId,
    store: ResultsStore = Depends(results),
    _: ApiToken = Depends(reader),
):
    from trainer.results.lineage import model_lineage

    version = store.get_model_version_by_id(model_version_id)
    return with_links(model_lineage(store, version.model_name, version.version))


@router.get("/audit-log", response_model=AuditPage, summary="Who exported, downloaded or queued what, newest first", tags=["audit"])
def audit_log(limit: int = Limit, offset: int = Offset, store: ResultsStore = Depends(results), _: ApiToken = Depends(reader)):
    page = store.page_audit_log(limit, offset)
    items = [AuditEntryOut(**entry.__dict__) for entry in page.items]
    return AuditPage(items=items, total=page.total, limit=limit, offset=offset, next_offset=next_offset(page))
