"""The API's request and response bodies (and so its OpenAPI schema)."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    create_model,
    field_validator,
    model_validator,
)

from trainer.model.arguments import ArgumentSpec, argument_specs

MAX_ID = 2**63 - 1  # bigint
_CANONICAL_ID = re.compile(r"[1-9][0-9]{0,18}")


def _canonical_id(value: Any) -> Any:
    """One spelling per id: `1`, never `01`, `+1`, `1.0` or `1_0` (which pydantic would all read as 1)."""
    if isinstance(value, str) and not _CANONICAL_ID.fullmatch(value):
        raise ValueError("must be an id in canonical decimal: digits without sign, point or leading zero")
    return value


RunId = Annotated[
    int, Path(ge=1, le=MAX_ID, description="A training run's id (canonical decimal)."), BeforeValidator(_canonical_id)
]
ModelVersionId = Annotated[
    int, Path(ge=1, le=MAX_ID, description="A model version's id (canonical decimal)."), BeforeValidator(_canonical_id)
]
JobId = Annotated[
    int, Path(ge=1, le=MAX_ID, description="A propose job's id (canonical decimal)."), BeforeValidator(_canonical_id)
]


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


# The results tables hold UTC without a zone; the API says so ("…Z").
UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: an undefined figure (e.g. precision of a label never predicted) is null."""
    return None if value is None or not math.isfinite(value) else value


FiniteOrNull = Annotated[float | None, AfterValidator(_finite)]


class Problem(BaseModel):
    """An error: what went wrong, in one line."""

    detail: str | list[Any]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unavailable"]
    version: str


class ModelVersionOut(BaseModel):
    model_version_id: int
    model_name: str
    version: int
    run_id: int
    artifact_uri: str
    artifact_sha256: str
    created_at: UtcDatetime
    download_url: str


class RunOut(BaseModel):
    run_id: int
    model_name: str
    status: Literal["queued", "running", "succeeded", "failed"]
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    error: str | None
    dataset_fingerprint: str | None
    train_examples: int | None
    eval_examples: int | None
    model_version_id: int | None
    url: str


class Page(BaseModel):
    total: int = Field(description="Rows matching the filters, on all pages.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="The offset of the next page, or null on the last.")


class RunPage(Page):
    items: list[RunOut]


class ModelVersionPage(Page):
    items: list[ModelVersionOut]


class SnapshotRef(BaseModel):
    uri: str
    sha256: str


class SummaryRow(BaseModel):
    split: str
    label: str
    examples: int
    documents: int


class DatasetInfo(BaseModel):
    fingerprint: str | None
    as_of: UtcDatetime | None
    train_examples: int | None
    eval_examples: int | None
    snapshot: SnapshotRef | None
    summary: list[SummaryRow] | None


class RunInfo(BaseModel):
    run_id: int
    model_name: str
    status: Literal["queued", "running", "succeeded", "failed"]
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    worker: str | None
    error: str | None
    artifact_uri: str | None


class VersionInfo(BaseModel):
    model_version_id: int
    model_name: str
    version: int
    artifact_uri: str
    artifact_sha256: str
    created_at: UtcDatetime


class Lineage(BaseModel):
    """From the model version back to the exact examples (as `python -m trainer show`)."""

    model_version: VersionInfo | None
    run: RunInfo
    params: dict[str, Any]
    library_versions: dict[str, str] | None
    dataset: DatasetInfo
    metrics: dict[str, FiniteOrNull] = Field(description="Overall figures, keyed `split.name`.")
    links: dict[str, str]


class MetricOut(BaseModel):
    split: str
    name: str
    label: str | None
    value: FiniteOrNull


class RunMetrics(BaseModel):
    run_id: int
    status: str
    items: list[MetricOut]


class AuditEntryOut(BaseModel):
    audit_id: int
    occurred_at: UtcDatetime
    finished_at: UtcDatetime
    token_name: str
    method: str
    route: str
    object_id: str | None
    details: dict[str, Any]
    status_code: int
    bytes_sent: int
    sha256: str | None = Field(description="sha256 of the bytes sent.")
    outcome: Literal["complete", "disconnected", "failed", "refused"] = Field(
        description="complete; disconnected (the client left early: bytes_sent says how far it got); "
        "refused (answered with the 4xx in status_code before any data; error says why); "
        "failed (a 5xx, or cut off midway by an error; error says why)."
    )
    error: str | None
    token_state: Literal["valid", "none", "unknown"] | None = Field(
        None, description="Whether the request carried a valid token, none, or an unknown one (null: before this was kept)."
    )
    request_id: str | None = Field(None, description="The X-Request-ID of the response; the server's log uses it too.")


class AuditPage(Page):
    items: list[AuditEntryOut]


def _moment(text: str | None) -> datetime | None:
    """An RFC 3339 / ISO 8601 moment as the results tables spell it: naive UTC.
    A moment that leaves the years 1-9999 when moved to UTC is the edge of time it passed."""
    if text is None:
        return None
    cleaned = text.strip().upper().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        # RFC 3339 allows a leap second, which Python's datetime cannot hold.
        try:
            moment = datetime.fromisoformat(re.sub(r"(T\d\d:\d\d):60", r"\1:59", cleaned))
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO 8601 moment (e.g. 2026-11-23T18:00:00Z)") from None
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(timezone.utc).replace(tzinfo=None)
    except OverflowError:
        return datetime.min if moment.year == 1 else datetime.max


class LiveSource(BaseModel):
    """The examples `datasets.training_examples` holds when the worker starts the run,
    or as they were at `as_of`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["database"]
    as_of: str | None = Field(
        None,
        max_length=64,
        json_schema_extra={"format": "date-time"},
        description="Build the examples as they were at this moment (UTC unless an offset is given).",
        examples=["2026-11-23T18:00:00Z"],
    )

    @field_validator("as_of")
    @classmethod
    def _check_as_of(cls, value: str | None) -> str | None:
        _moment(value)
        return value

    def moment(self) -> datetime | None:
        return _moment(self.as_of)


class SnapshotSourceIn(BaseModel):
    """The snapshot an earlier run stored."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["snapshot"]
    reference: str = Field(
        pattern=r"^([0-9]{1,18}|[0-9a-fA-F]{8,64})$",
        description="A run id, or 8 to 64 hex digits of a dataset fingerprint.",
        examples=["1", "c1e9951dbb51"],
    )


def _json_number(value: Any) -> Any:
    """Numbers as JSON has them: no booleans, no numeric strings (pydantic would coerce both)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a JSON number")
    return value


def _json_integer(value: Any) -> Any:
    """An integer as JSON Schema has it: 3 and 3.0, but not 3.5, true or "3"."""
    _json_number(value)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be a whole number")
    return int(value)


JsonInt = Annotated[int, BeforeValidator(_json_integer)]
JsonFloat = Annotated[float, BeforeValidator(_json_number)]


class _TrainingRequestBase(BaseModel):
    """A run to queue: its TrainingArguments and where its examples come from."""

    model_config = ConfigDict(extra="forbid")

    source: Annotated[LiveSource | SnapshotSourceIn, Field(discriminator="kind")] = Field(
        default_factory=lambda: LiveSource(kind="database"),
        description="Default: the live datasets when the run starts.",
    )

    @model_validator(mode="after")
    def _check_text_models(self) -> _TrainingRequestBase:
        if not (self.embedding_features or self.char_ngram_features):
            raise ValueError("a model needs at least one text model: embedding_features or char_ngram_features")
        if self.fine_tune and (not self.embedding_features or self.embedding_backend != "torch"):
            raise ValueError("fine_tune needs embedding_features and the torch embedding backend")
        return self


def _request_field(default: Any, kind: type, spec: ArgumentSpec) -> tuple[Any, Any]:
    """(type, Field) of one TrainingArguments field in the request body: the same
    default, range and help; JSON's own types only (no "5" for 5, no 1 for true)."""
    bounds: dict[str, Any] = {}
    if spec.minimum is not None:
        bounds["gt" if spec.exclusive_minimum else "ge"] = spec.minimum
    if spec.maximum is not None:
        bounds["le"] = spec.maximum
    if spec.choices is not None:
        return Literal[spec.choices], Field(default, description=spec.help)  # type: ignore[valid-type]
    if kind is bool:
        return StrictBool, Field(default, description=spec.help)
    if kind is int:
        return JsonInt, Field(default, description=spec.help, **bounds)
    if kind is float:
        return JsonFloat, Field(default, description=spec.help, allow_inf_nan=False, **bounds)
    return str, Field(default, description=spec.help, pattern=spec.pattern, max_length=spec.max_length)


# Made from TrainingArguments' fields (trainer.model.arguments), the one declaration.
TrainingRequest = create_model(
    "TrainingRequest",
    __base__=_TrainingRequestBase,
    __doc__=_TrainingRequestBase.__doc__,
    **{name: _request_field(default, kind, spec) for name, (default, kind, spec) in argument_specs().items()},
)


class QueuedRun(BaseModel):
    run_id: int
    status: Literal["queued"]
    url: str


# -- the review loop (CONTRACT §7) ------------------------------------------------------


class ReviewQueueItem(BaseModel):
    """A row of `datasets.review_queue`: a pending live segment and the newest proposal for it."""

    annotation_id: str
    document_id: str
    page: int | None
    x0: FiniteOrNull
    y0: FiniteOrNull
    x1: FiniteOrNull
    y1: FiniteOrNull
    text: str
    review_state: str = Field(description="Always `pending` here.")
    current_label: str | None = Field(description="The label of the segment's latest change (what the app shows now).")
    model_version_id: int | None = Field(description="The proposal's model version; null without a proposal.")
    proposed_label: str | None
    confidence: FiniteOrNull = Field(description="The proposal's top class probability.")
    margin: FiniteOrNull = Field(description="Its top probability minus the second.")
    model_name: str | None
    version: str | None = Field(description="The version as the proposal's actor spells it (text).")
    proposed_at: UtcDatetime | None
    priority: int = Field(description="1 = review first (least confident first, segments without a proposal last).")


class ReviewQueuePage(Page):
    items: list[ReviewQueueItem]


class ReviewDocumentOut(BaseModel):
    """A row of `datasets.review_queue_documents`: a document with pending segments."""

    document_id: str
    pending_segments: int
    proposed_segments: int
    mean_uncertainty: FiniteOrNull = Field(description="Mean of 1 - confidence over its proposed pending segments.")
    min_confidence: FiniteOrNull
    priority: int = Field(description="1 = open first (most uncertain first, documents without a proposal last).")


class ReviewDocumentPage(Page):
    items: list[ReviewDocumentOut]


class ProposalOut(BaseModel):
    """A row of `training.proposals`."""

    annotation_id: str
    label: str
    confidence: FiniteOrNull = Field(description="The top class probability.")
    margin: FiniteOrNull = Field(description="The top probability minus the second.")
    actor: str = Field(description="`model:<model_name>@<version>`: the actor the app records the proposal under.")
    created_at: UtcDatetime = Field(description="When it was written, or last rewritten with a new label or scores.")


class ProposalPage(Page):
    model_version_id: int
    items: list[ProposalOut]


class AcceptanceCountsOut(BaseModel):
    proposals: int
    accepted: int
    corrected: int
    rejected: int
    deleted: int
    pending: int
    superseded: int
    acceptance_rate: FiniteOrNull = Field(
        description="accepted / (accepted + corrected + rejected); null when that is 0."
    )


class AcceptanceByLabel(AcceptanceCountsOut):
    proposed_label: str | None


class AcceptanceOut(BaseModel):
    """How a model version's proposals fared in the app (`datasets.proposal_acceptance`)."""

    model_version_id: int
    model_name: str
    version: int
    actor: str
    totals: AcceptanceCountsOut = Field(description="Over every proposed label.")
    items: list[AcceptanceByLabel] = Field(description="One per proposed label.")


class ProposeRequest(BaseModel):
    """A propose job to queue for the model version in the path."""

    model_config = ConfigDict(extra="forbid")

    all_segments: StrictBool = Field(
        False, description="Propose for every live segment, not only the pending ones."
    )


class ProposeJobOut(BaseModel):
    job_id: int
    model_version_id: int
    status: Literal["queued", "running", "succeeded", "failed"]
    all_segments: bool
    requested_by: str | None = Field(description="The name of the token that queued it.")
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    heartbeat_at: UtcDatetime | None
    worker: str | None
    error: str | None = Field(description="Why it failed, in one line.")
    proposed: int | None = Field(description="Segments labelled (once succeeded).")
    new_proposals: int | None = Field(description="Proposals this version had not made before.")
    changed_proposals: int | None = Field(description="Proposals whose label or scores changed.")
    url: str
    proposals_url: str


def _bounded_int(text: str) -> int | float:
    # Digits beyond any field's range are infinity (a 422 naming the field), not
    # Python's 4300-digit conversion error, and never a slow conversion.
    return int(text) if len(text) <= 40 else math.inf


def parse_training_request(raw: bytes) -> TrainingRequest:
    """The body of POST /training-runs: 400 if it is not JSON, 422 naming each bad field
    (NaN, Infinity and numbers out of range included)."""
    return parse_body(raw, TrainingRequest)


def parse_propose_request(raw: bytes) -> ProposeRequest:
    """The body of POST /model-versions/{id}/propose, checked as POST /training-runs' is."""
    return parse_body(raw, ProposeRequest)


def parse_body(raw: bytes, model: type[BaseModel]) -> Any:
    """A JSON body read by its route: 400 if it is not JSON, 422 naming each bad field."""
    from fastapi import HTTPException
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    if not raw.strip():
        raise RequestValidationError([{"loc": ("body",), "msg": "Field required", "type": "missing"}])
    try:
        data = json.loads(raw, parse_int=_bounded_int)
    except (ValueError, RecursionError):
        raise HTTPException(400, "the body is not JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None
