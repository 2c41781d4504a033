"""The rows of the results tables (CONTRACT §5) as records, and how rows become them.

Records are built by column name from the select lists below, never by position.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from trainer.core.errors import TrainerError
from trainer.model.measures import LabelIssue, Metric

__all__ = [
    "AUDIT_OUTCOMES", "RUN_STATUSES", "AuditEntry", "LabelIssue", "Metric", "ModelVersion", "Page", "Proposal",
    "ProposalJob", "RunStateError", "TrainingRun", "utcnow",
]  # fmt: skip

RUN_STATUSES = ("queued", "running", "succeeded", "failed")
# complete; disconnected (the client left first); failed (cut off by an error, or a
# 5xx); refused (answered with a 4xx before any data). Migration 6 added `refused`.
AUDIT_OUTCOMES = ("complete", "disconnected", "failed", "refused")
# training.audit_log's columns as of migration 6, in table order.
AUDIT_COLUMNS = (
    "audit_id, occurred_at, finished_at, token_name, method, route, object_id, details, status_code, "
    "bytes_sent, sha256, outcome, error, token_state, request_id"
)


def utcnow() -> datetime:
    """The current UTC time as a naive timestamp (the contract's columns are UTC)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class RunStateError(TrainerError):
    """A run is not in the state an operation needs (e.g. not queued, or reaped)."""


@dataclass(frozen=True)
class TrainingRun:
    run_id: int
    model_name: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    params: dict[str, Any]
    dataset_fingerprint: str | None
    train_examples: int | None
    eval_examples: int | None
    artifact_uri: str | None
    heartbeat_at: datetime | None
    worker: str | None
    snapshot_uri: str | None
    snapshot_sha256: str | None
    dataset_summary: list[dict[str, Any]] | None
    dataset_as_of: datetime | None


@dataclass(frozen=True)
class ModelVersion:
    model_version_id: int
    model_name: str
    version: int
    run_id: int
    artifact_uri: str
    artifact_sha256: str
    created_at: datetime


RUN_COLUMNS = (
    "run_id, model_name, status, created_at, started_at, finished_at, error, params, "
    "dataset_fingerprint, train_examples, eval_examples, artifact_uri, heartbeat_at, worker, "
    "snapshot_uri, snapshot_sha256, dataset_summary, dataset_as_of"
)
VERSION_COLUMNS = "model_version_id, model_name, version, run_id, artifact_uri, artifact_sha256, created_at"
LABEL_ISSUE_COLUMNS = (
    "rank, annotation_id, document_id, split, label, suggested_label, label_probability, suggested_probability"
)


@dataclass(frozen=True)
class AuditEntry:
    """One audited request: who (the token's name, never the token) got what, how much of it."""

    audit_id: int | None
    occurred_at: datetime
    finished_at: datetime
    token_name: str
    method: str
    route: str
    object_id: str | None
    details: dict[str, Any]
    status_code: int
    bytes_sent: int
    sha256: str | None
    outcome: str
    error: str | None
    token_state: str | None = None  # valid, none or unknown; null on rows from before migration 6
    request_id: str | None = None


@dataclass(frozen=True)
class Page:
    """One page of a listing, newest first, and how many rows match in all."""

    items: list
    total: int
    limit: int
    offset: int


def _named(columns: str, row: Sequence[Any]) -> dict[str, Any]:
    """A row of ``select <columns>`` as {column name: value}: records are built by
    name, so a column added to a select list cannot shift another one."""
    names = [name.strip() for name in columns.split(",")]
    if len(names) != len(row):
        raise TrainerError(f"expected {len(names)} columns ({columns}), got {len(row)}")
    return dict(zip(names, row))


def run_from_row(row: Sequence[Any]) -> TrainingRun:
    values = _named(RUN_COLUMNS, row)
    values["params"] = json.loads(values["params"])
    summary = values["dataset_summary"]
    values["dataset_summary"] = None if summary is None else json.loads(summary)
    return TrainingRun(**values)


def audit_entry_from_row(row: Sequence[Any]) -> AuditEntry:
    values = _named(AUDIT_COLUMNS, row)
    values["details"] = json.loads(values["details"]) if values["details"] else {}
    return AuditEntry(**values)


def version_from_row(row: Sequence[Any]) -> ModelVersion:
    return ModelVersion(**_named(VERSION_COLUMNS, row))


def label_issue_from_row(row: Sequence[Any]) -> LabelIssue:
    return LabelIssue(**_named(LABEL_ISSUE_COLUMNS, row))


METRIC_COLUMNS = "split, name, label, value"


def metric_from_row(row: Sequence[Any]) -> Metric:
    return Metric(**_named(METRIC_COLUMNS, row))


@dataclass(frozen=True)
class Proposal:
    """A model version's label for one of the app's segments (CONTRACT §7.3)."""

    model_version_id: int
    annotation_id: str
    actor: str
    label: str
    confidence: float
    margin: float
    created_at: datetime


PROPOSAL_COLUMNS = "model_version_id, annotation_id, actor, label, confidence, margin, created_at"


def proposal_from_row(row: Sequence[Any]) -> Proposal:
    return Proposal(**_named(PROPOSAL_COLUMNS, row))


@dataclass(frozen=True)
class ProposalJob:
    """A queued `propose` of one model version (the API queues them, `worker` runs them)."""

    job_id: int
    model_version_id: int
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    worker: str | None
    error: str | None
    params: dict[str, Any]
    proposed: int | None
    new_proposals: int | None
    changed_proposals: int | None


PROPOSAL_JOB_COLUMNS = (
    "job_id, model_version_id, status, created_at, started_at, finished_at, heartbeat_at, worker, error, "
    "params, proposed, new_proposals, changed_proposals"
)


def proposal_job_from_row(row: Sequence[Any]) -> ProposalJob:
    values = _named(PROPOSAL_JOB_COLUMNS, row)
    values["params"] = json.loads(values["params"])
    return ProposalJob(**values)
