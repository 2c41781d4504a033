"""The queue of training runs: a run is requested (`queued`), a worker claims it
(`running`, with a heartbeat) and ends it (`succeeded` or `failed`); runs whose
worker died are reaped (`failed`, "worker lost"). The same worker runs propose
jobs (:mod:`trainer.runs.propose_jobs`) when no training run is queued."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from trainer.core.db import Database
from trainer.core.errors import TrainingFailed
from trainer.core.settings import Settings
from trainer.model.arguments import TrainingArguments
from trainer.results.proposal_store import ProposalStore
from trainer.results.store import ResultsStore
from trainer.runs.propose_jobs import ProposeJobFailed, ProposeJobResult, execute_claimed_job, request_propose
from trainer.runs.sources import ExampleSource
from trainer.runs.training import TrainingResult, _Context, ensure_results_tables, execute_claimed, run_params

__all__ = ["WorkReport", "reap", "request_propose", "request_run", "work"]


def request_run(
    args: TrainingArguments, settings: Settings, source: ExampleSource | None = None, requested_by: str | None = None
) -> int:
    """Queue a training run with these arguments (and examples from ``source``,
    by default the live views); return its id. A worker runs it. ``requested_by``
    (an API token's name) is kept in the run's params."""
    database = Database(settings)
    store = ResultsStore(database)
    ensure_results_tables(database, store)
    params = run_params(args, settings, source)
    if requested_by is not None:
        params["requested_by"] = requested_by
    return store.queue_run(args.model_name, params)


def reap(settings: Settings, timeout: float | None = None) -> list[int]:
    """Fail the running runs whose heartbeat is older than the timeout; return their ids."""
    database = Database(settings)
    store = ResultsStore(database)
    ensure_results_tables(database, store)
    return store.reap(settings.heartbeat_timeout if timeout is None else timeout)


@dataclass
class WorkReport:
    succeeded: list[TrainingResult] = field(default_factory=list)
    failed: list[TrainingFailed] = field(default_factory=list)
    reaped: list[int] = field(default_factory=list)
    # Propose jobs: those this worker ran, and the lost ones it reaped.
    proposed: list[ProposeJobResult] = field(default_factory=list)
    propose_failed: list[ProposeJobFailed] = field(default_factory=list)
    propose_reaped: list[int] = field(default_factory=list)


def work(
    settings: Settings,
    until_empty: bool = False,
    poll_interval: float = 5.0,
    progress: bool | None = None,
    on_event: Callable[[str], None] = lambda message: None,
) -> WorkReport:
    """Run queued runs one at a time, oldest first, and, when no run is queued,
    the oldest queued propose job; until both queues are empty (``until_empty``)
    or forever. Lost runs and propose jobs are reaped before every claim."""
    context = _Context(settings)
    proposals = ProposalStore(context.database)
    report = WorkReport()
    on_event(f"worker {context.worker} polling {context.database.describe()}")
    while True:
        reaped = context.store.reap(settings.heartbeat_timeout)
        for run_id in reaped:
            on_event(f"run {run_id}: failed (worker lost)")
        report.reaped += reaped
        reaped_jobs = proposals.reap(settings.heartbeat_timeout)
        for job_id in reaped_jobs:
            on_event(f"propose job {job_id}: failed (worker lost)")
        report.propose_reaped += reaped_jobs
        run = context.store.claim_next(context.worker)
        if run is not None:
            on_event(f"run {run.run_id}: claimed ({run.model_name})")
            try:
                result = execute_claimed(context, run, progress)
            except TrainingFailed as failure:
                report.failed.append(failure)
                on_event(str(failure))
                continue
            report.succeeded.append(result)
            on_event(
                f"run {run.run_id}: succeeded: {result.model_version.model_name} version {result.model_version.version}"
            )
            continue
        job = proposals.claim_next_job(context.worker)
        if job is not None:
            on_event(f"propose job {job.job_id}: claimed (model version {job.model_version_id})")
            try:
                done = execute_claimed_job(context, proposals, job, progress)
            except ProposeJobFailed as failure:
                report.propose_failed.append(failure)
                on_event(str(failure))
                continue
            report.proposed.append(done)
            proposed = done.report
            on_event(
                f"propose job {job.job_id}: succeeded: {proposed.model_version.model_name} version "
                f"{proposed.model_version.version} proposed {proposed.proposed} label(s), {proposed.new} new, "
                f"{proposed.changed} changed"
            )
            continue
        if until_empty:
            return report
        time.sleep(poll_interval)
