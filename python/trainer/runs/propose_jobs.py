"""Propose jobs: `propose` queued for a worker (CONTRACT §7). The API requests one
for a model version (`queued`); `worker` claims it when no training run waits
(`running`, with a heartbeat), runs :func:`trainer.runs.propose.propose_version`
and ends it `succeeded` (with what it wrote) or `failed` (with a one-line error);
a job whose worker died is reaped (`failed`, "worker lost") like a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.core.db import Database
from trainer.core.errors import TrainerError
from trainer.core.settings import Settings
from trainer.data.live_segments import live_segments_relation
from trainer.results.proposal_store import ProposalStore
from trainer.results.records import ProposalJob, RunStateError
from trainer.results.store import ModelVersion, ResultsStore
from trainer.runs.heartbeat import Heartbeat
from trainer.runs.propose import ProposeReport, propose_version
from trainer.runs.training import _Context, describe_error, ensure_results_tables


class ProposeJobFailed(TrainerError):
    """A propose job ended `failed`; the message is the error stored with it."""

    def __init__(self, job_id: int, message: str):
        super().__init__(f"propose job {job_id} failed: {message}")
        self.job_id = job_id


@dataclass(frozen=True)
class ProposeJobResult:
    job_id: int
    report: ProposeReport


def request_propose(
    settings: Settings,
    model_name: str,
    version: int | None,
    all_segments: bool = False,
    requested_by: str | None = None,
) -> int:
    """Queue a propose job of ``version`` of ``model_name`` (its latest now, when
    None: the version is resolved at queue time, not when a worker gets to it);
    return the job's id. Refused at once when ``datasets.live_segments`` is not
    built, which the worker would fail on later."""
    database = Database(settings)
    store = ResultsStore(database)
    ensure_results_tables(database, store)
    model_version = store.get_model_version(model_name, version)
    with database.session() as session:
        live_segments_relation(session)  # refuses now what the worker would fail on later
    params = {"all_segments": bool(all_segments), "requested_by": requested_by}
    return ProposalStore(database).queue_job(model_version.model_version_id, params)


def _all_segments(params: dict[str, Any]) -> bool:
    value = params.get("all_segments", False)
    if not isinstance(value, bool):
        raise TrainerError(f"all_segments must be true or false, not {value!r}")
    return value


def execute_claimed_job(
    context: _Context, proposals: ProposalStore, job: ProposalJob, progress: bool | None
) -> ProposeJobResult:
    """Run a propose job this process has claimed to `succeeded`, or mark it
    `failed` and raise :class:`ProposeJobFailed` (as a training run's failure is
    recorded: one line, :func:`trainer.runs.training.describe_error`)."""
    try:
        all_segments = _all_segments(job.params)
    except TrainerError as exc:
        proposals.fail_job(job.job_id, f"invalid params: {exc}")
        raise ProposeJobFailed(job.job_id, f"invalid params: {exc}") from exc
    try:
        interval = context.settings.heartbeat_interval
        with Heartbeat(proposals, job.job_id, context.worker, interval, what="propose job") as beat:

            def still_ours() -> None:
                if beat.lost:
                    raise RunStateError(f"propose job {job.job_id} is no longer this worker's running job (reaped?)")

            version: ModelVersion = context.store.get_model_version_by_id(job.model_version_id)
            report = propose_version(context.settings, version, all_segments, progress, on_batch=still_ours)
            proposals.finish_job(job.job_id, context.worker, report.proposed, report.new, report.changed)
    except BaseException as exc:
        message = describe_error(exc) if isinstance(exc, Exception) else f"interrupted ({type(exc).__name__})"
        proposals.fail_job(job.job_id, message)
        if isinstance(exc, Exception):
            raise ProposeJobFailed(job.job_id, message) from exc
        raise
    return ProposeJobResult(job.job_id, report)
