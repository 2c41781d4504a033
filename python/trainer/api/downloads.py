"""Downloads: a run's dataset, the live dataset, a model version's archive.

Objects are found by database id only; the files behind them by the URIs the
results tables hold, each checked again (inside the artifact root, no symlink
out, sha256 as recorded) before a byte is sent. Every attempt is audited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from trainer.api.audit import AuditedStreamingResponse
from trainer.api.context import context_of, reader
from trainer.api.guard import attempt_of, content_disposition
from trainer.api.schemas import ModelVersionId, RunId
from trainer.api.tokens import ApiToken
from trainer.results.export import MEDIA_TYPES

router = APIRouter(tags=["downloads"])

Format = Query("jsonl", description="jsonl (one JSON object per example), csv (RFC 4180) or parquet.")
Split = Query("all", description="Which examples: all, train or eval.")

DATASET_RESPONSES = {
    200: {
        "description": "The examples, streamed. Headers: X-Dataset-Fingerprint, X-Example-Count, "
        "X-Snapshot-SHA256 (a run's stored snapshot) and, when the body is that very file (or for the live "
        "dataset's Parquet), X-Content-SHA256.",
        "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()},
    }
}
ARCHIVE_RESPONSES = {
    200: {
        "description": "A tar archive: manifest.json (sha256 of every file, run, fingerprint, library versions) "
        "and model/. Headers: X-Content-SHA256 (the archive's), X-Model-Version, X-Dataset-Fingerprint.",
        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _download_headers(filename: str, extra: dict[str, str | int | None]) -> dict[str, str]:
    headers = {
        "Content-Disposition": content_disposition(filename),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }
    headers.update({name: str(value) for name, value in extra.items() if value is not None})
    return headers


async def _opened(request: Request, details: dict, opener: Callable):
    """Open a download (in a thread: it reads files and the database). A refusal
    (404, 409, ...) is raised as usual; the guard audits it with its status."""
    attempt = attempt_of(request)
    if attempt is not None:
        attempt.details.update(details)
    return attempt, await run_in_threadpool(opener)


@router.get(
    "/training-runs/{run_id}/dataset",
    summary="Stream the exact examples a run trained and evaluated on (its snapshot)",
    response_class=AuditedStreamingResponse,
    status_code=200,
    responses=DATASET_RESPONSES,
)
async def run_dataset(
    request: Request,
    run_id: RunId,
    format: Literal["jsonl", "csv", "parquet"] = Format,
    split: Literal["all", "train", "eval"] = Split,
    token: ApiToken = Depends(reader),
):
    from trainer.results.export import open_run_dataset

    settings = context_of(request).settings
    attempt, stream = await _opened(
        request, {"format": format, "split": split}, lambda: open_run_dataset(settings, run_id, format, split)
    )
    if attempt is not None:
        attempt.details.update(fingerprint=stream.fingerprint, snapshot_sha256=stream.snapshot_sha256, rows=stream.rows)
    headers = _download_headers(
        f"run-{run_id}-{split}.{format}",
        {
            "X-Dataset-Fingerprint": stream.fingerprint,
            "X-Snapshot-SHA256": stream.snapshot_sha256,
            "X-Content-SHA256": stream.content_sha256,
            "X-Example-Count": stream.rows,
        },
    )
    return AuditedStreamingResponse(stream.chunks, stream.close, stream.media_type, headers)


@router.get(
    "/datasets/current",
    summary="Stream datasets.training_examples as it is now",
    response_class=AuditedStreamingResponse,
    status_code=200,
    responses=DATASET_RESPONSES,
)
async def current_dataset(
    request: Request,
    format: Literal["jsonl", "csv", "parquet"] = Format,
    split: Literal["all", "train", "eval"] = Split,
    token: ApiToken = Depends(reader),
):
    from trainer.results.export import open_current_dataset

    settings = context_of(request).settings
    attempt, stream = await _opened(
        request, {"format": format, "split": split}, lambda: open_current_dataset(settings, format, split)
    )
    if attempt is not None:
        attempt.details.update(fingerprint=stream.fingerprint, rows=stream.rows)
    headers = _download_headers(
        f"training-examples-{stream.fingerprint[:12]}-{split}.{format}",
        {"X-Dataset-Fingerprint": stream.fingerprint, "X-Content-SHA256": stream.content_sha256, "X-Example-Count": stream.rows},
    )
    return AuditedStreamingResponse(stream.chunks, stream.close, stream.media_type, headers)


@router.get(
    "/model-versions/{model_version_id}/download",
    summary="Download a model version: its artifact and a manifest, as one tar archive",
    response_class=AuditedStreamingResponse,
    status_code=200,
    responses=ARCHIVE_RESPONSES,
    tags=["model versions"],
)
async def download_model(
    request: Request,
    model_version_id: ModelVersionId,
    token: ApiToken = Depends(reader),
):
    from trainer.results.model_archive import MEDIA_TYPE, open_model_archive

    context = context_of(request)
    attempt, archive = await _opened(
        request, {}, lambda: open_model_archive(context.ready_store(), context.artifacts, model_version_id)
    )
    version = archive.model_version
    if attempt is not None:
        attempt.details.update(
            model_name=version.model_name, version=version.version, run_id=version.run_id, archive_sha256=archive.sha256
        )
    headers = _download_headers(
        archive.filename,
        {
            "Content-Length": archive.size,
            "X-Content-SHA256": archive.sha256,
            "ETag": f'"{archive.sha256}"',
            # Percent-encoded: a name written before the rule must not break or split the header.
            "X-Model-Version": f"{quote(version.model_name, safe='')}:{version.version}",
            "X-Dataset-Fingerprint": archive.manifest["dataset_fingerprint"],
        },
    )
    return AuditedStreamingResponse(archive.chunks, archive.close, MEDIA_TYPE, headers)
