"""The queue of training runs on both engines: real worker and trainer processes,
real kills, real concurrency."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta

import pytest
from conftest import Workspace, prepared_workspace

from trainer.results.store import ResultsStore, RunStateError, utcnow

pytestmark = pytest.mark.slow
QUEUE_DOCUMENTS = 10  # ~450 examples: a training run takes seconds
# The queue is under test, not the model: a run without the encoder skips loading it, and
# the character n-gram text model alone (no second stage, no label-issue fits) takes a
# second or two per trainer process. The killed runs below keep the encoder, to be slow
# enough to kill.
QUICK_MODEL = ("--no-embedding", "--no-layout", "--no-neighbours", "--no-label-issues")


@pytest.fixture
def queue(workspace) -> Workspace:
    return prepared_workspace(workspace, QUEUE_DOCUMENTS)


def runs(space: Workspace) -> list[tuple]:
    return space.query(
        "select run_id, status, error, worker, heartbeat_at from training.training_runs order by run_id"
    )


def versions(space: Workspace, model_name: str) -> list[tuple]:
    return space.query(
        "select version, run_id from training.model_versions where model_name = ? order by version", [model_name]
    )


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stale_run(space: Workspace) -> int:
    """A run whose worker vanished long ago (its heartbeat back-dated by an hour)."""
    store = ResultsStore(space.database())
    run_id = store.start_run("ghost", {"model_name": "ghost"}, worker="gone:1:dead")
    space.execute_script(
        f"update training.training_runs set heartbeat_at = started_at - interval '1 hour', "
        f"started_at = started_at - interval '1 hour' where run_id = {run_id}"
    )
    return run_id


def assert_reaped(space: Workspace, run_id: int) -> None:
    status, error = space.query("select status, error from training.training_runs where run_id = ?", [run_id])[0]
    assert status == "failed" and error.startswith("worker lost: gone:1:dead sent no heartbeat since ")


def test_a_requested_run_is_trained_by_a_worker(queue):
    ghost = stale_run(queue)
    requested = queue.trainer("request", "--model-name", "queued-model", "--seed", "3", *QUICK_MODEL)
    assert requested.returncode == 0, requested.stderr
    run_id = int(requested.stdout.strip())
    import json

    status, params = queue.query("select status, params from training.training_runs where run_id = ?", [run_id])[0]
    assert status == "queued"
    assert json.loads(params)["seed"] == 3 and json.loads(params)["model_name"] == "queued-model"

    worker = queue.trainer("worker", "--until-empty", "--quiet")
    assert worker.returncode == 0, worker.stderr
    assert f"run {ghost}: failed (worker lost)" in worker.stdout  # the worker reaps before it claims
    assert_reaped(queue, ghost)
    assert f"run {run_id}: succeeded: queued-model version 1" in worker.stdout
    assert queue.query("select status, error from training.training_runs where run_id = ?", [run_id])[0] == (
        "succeeded",
        None,
    )
    stored = json.loads(queue.query("select params from training.training_runs where run_id = ?", [run_id])[0][0])
    assert stored["seed"] == 3 and stored["library_versions"]["torch"] and stored["worker"]

    again = queue.trainer("worker", "--until-empty", "--quiet")
    assert again.returncode == 0 and "0 succeeded, 0 failed" in again.stdout


def test_train_runs_a_queued_run_by_id_and_only_once(queue):
    run_id = int(queue.trainer("request", "--model-name", "by-id", *QUICK_MODEL).stdout.strip())
    with_options = queue.trainer("train", "--training-run", str(run_id), "--seed", "9")
    assert with_options.returncode == 2 and "drop --seed" in with_options.stderr
    assert runs(queue)[0][1] == "queued"

    ghost = stale_run(queue)
    trained = queue.trainer("train", "--training-run", str(run_id), "--quiet")
    assert trained.returncode == 0, trained.stderr
    assert f"Run {run_id} succeeded: by-id version 1" in trained.stdout
    assert_reaped(queue, ghost)  # a trainer reaps before it starts

    twice = queue.trainer("train", "--training-run", str(run_id))
    assert twice.returncode == 1 and twice.stderr.strip() == f"Error: training run {run_id} is succeeded, not queued"
    missing = queue.trainer("train", "--training-run", "999")
    assert missing.returncode == 1 and missing.stderr.strip() == "Error: training run 999 does not exist"


def test_two_workers_run_every_queued_run_exactly_once(queue):
    run_ids = [int(queue.trainer("request", "--model-name", "shared", "--seed", str(seed), *QUICK_MODEL).stdout) for seed in range(4)]
    workers = [queue.spawn_trainer("worker", "--until-empty", "--quiet", "--poll-interval", "0.2") for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in workers]
    assert [process.returncode for process in workers] == [0, 0], outputs

    claims = [line for out, _ in outputs for line in out.splitlines() if line.endswith(": claimed (shared)")]
    assert sorted(claims) == sorted(f"run {run_id}: claimed (shared)" for run_id in run_ids)
    assert [row[1] for row in runs(queue)] == ["succeeded"] * 4
    assert sorted(run for _, run in versions(queue, "shared")) == run_ids
    assert [version for version, _ in versions(queue, "shared")] == [1, 2, 3, 4]



@pytest.fixture
def results_only(workspace) -> Workspace:
    return prepared_workspace(workspace, documents=None, build=False)


RACERS = 4


def claims_at_one_instant(space: Workspace, racers: int) -> list:
    """``racers`` threads each call claim_next once, released together; their results.

    On PostgreSQL the release is exact: the test holds an EXCLUSIVE lock on the runs
    table, waits until every racer's claim is blocked on it, then lets them all go at
    once, so every claim reads the same queue. On DuckDB a barrier releases them.
    """
    barrier = threading.Barrier(racers + 1)
    results: list = [None] * racers
    errors: list[BaseException] = []

    def racer(number: int) -> None:
        store = ResultsStore(space.database())
        barrier.wait(timeout=60)
        try:
            results[number] = store.claim_next(f"racer:{number}")
        except BaseException as exc:  # reported by the test, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=racer, args=(number,)) for number in range(racers)]
    if space.target == "postgres":
        with space.server.connect(space.pg_database) as blocker, blocker.transaction():
            blocker.execute("lock table training.training_runs in exclusive mode")
            for thread in threads:
                thread.start()
            barrier.wait(timeout=60)
            with space.server.connect() as observer:
                wait_for(
                    lambda: observer.execute(
                        "select count(*) from pg_stat_activity where datname = %s and wait_event_type = 'Lock'",
                        (space.pg_database,),
                    ).fetchone()[0]
                    == racers,
                    120,
                    "every claim to be waiting on the lock",
                )
        # The transaction has ended: every claim proceeds at this instant.
    else:
        for thread in threads:
            thread.start()
        barrier.wait(timeout=60)
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results


def test_claims_at_the_same_instant_take_distinct_runs(results_only):
    """The exactly-once guarantee under a forced race (FOR UPDATE SKIP LOCKED on
    PostgreSQL, one writer at a time on DuckDB): no run claimed twice, and no claim
    comes back empty while a run is queued. Several rounds, each a fresh race."""
    queue = results_only
    store = ResultsStore(queue.database())
    for round_number in range(3):
        queued = [store.queue_run("raced", {"model_name": "raced"}) for _ in range(RACERS + 1)]
        claims = claims_at_one_instant(queue, RACERS)
        assert None not in claims, f"round {round_number}: a claim found nothing with {RACERS + 1} runs queued"
        claimed = [run.run_id for run in claims]
        assert len(set(claimed)) == RACERS, f"round {round_number}: a run was claimed twice: {claimed}"
        assert sorted(claimed) == queued[:RACERS]  # oldest first
        rows = queue.query(
            "select run_id, status, worker from training.training_runs where run_id >= ? order by run_id", [queued[0]]
        )
        owners = {run.run_id: f"racer:{number}" for number, run in enumerate(claims)}
        assert rows == [(run_id, "running", owners[run_id]) for run_id in queued[:RACERS]] + [
            (queued[-1], "queued", None)
        ]
        queue.execute_script(  # clear the field for the next round
            "update training.training_runs set status = 'failed', finished_at = created_at, error = 'raced' "
            "where status in ('running', 'queued')"
        )


def test_a_claim_passes_over_a_run_another_worker_holds_without_waiting(postgres_workspace):
    """What SKIP LOCKED adds on PostgreSQL (plain FOR UPDATE is also exactly-once, but
    a worker would wait for the other's transaction): the held run is skipped at once."""
    space = prepared_workspace(postgres_workspace, documents=None, build=False)
    store = ResultsStore(space.database())
    held, free = store.queue_run("held", {}), store.queue_run("free", {})
    with space.server.connect(space.pg_database) as other, other.transaction():
        other.execute("select run_id from training.training_runs where run_id = %s for update", (held,))
        claimed: list = []
        claimer = threading.Thread(target=lambda: claimed.append(store.claim_next("racer")), daemon=True)
        claimer.start()
        claimer.join(timeout=30)  # far longer than a claim takes on a loaded machine
        assert not claimer.is_alive(), "the claim waited for the run another transaction holds"
    assert [run.run_id for run in claimed] == [free]

def test_four_trainers_at_once_get_versions_one_to_four(queue):
    trainers = [queue.spawn_trainer("train", "--model-name", "race", "--quiet", *QUICK_MODEL) for _ in range(4)]
    outputs = [process.communicate(timeout=600) for process in trainers]
    assert [process.returncode for process in trainers] == [0, 0, 0, 0], [err for _, err in outputs]
    assert all(not err.strip() or "Error" not in err for _, err in outputs)
    assert [version for version, _ in versions(queue, "race")] == [1, 2, 3, 4]
    assert len({run for _, run in versions(queue, "race")}) == 4
    assert [row[1] for row in runs(queue)] == ["succeeded"] * 4


# A beat every half second, so a run shows it is alive soon after it starts. The tests
# below never rely on this timeout running out at a given moment: each reap names its own.
FAST_HEARTBEAT = {"TRAINER_HEARTBEAT_INTERVAL": "0.5", "TRAINER_HEARTBEAT_TIMEOUT": "10"}
# Starting a trainer (torch, the encoder) on a loaded machine: generous, as it is only a deadline.
START_TIMEOUT = 300


def wait_until_older_than(space: Workspace, run_id: int, seconds: float):
    """Wait until the run's last beat is older than ``seconds`` by the clock `reap` reads
    (this machine's UTC); return that beat. Time only moves on, so a reap started
    afterwards with that timeout must find the run stale, however loaded the machine."""
    last_beat = space.query("select heartbeat_at from training.training_runs where run_id = ?", [run_id])[0][0]
    wait_for(lambda: utcnow() - last_beat > timedelta(seconds=seconds), seconds + 60, "the last beat to age")
    return last_beat


def start_and_kill(space: Workspace, **env: str) -> int:
    """Start a real training process, wait until it beats, then kill -9 it."""
    # One text per encoder batch: the run lasts long enough to be killed mid-way.
    process = space.spawn_trainer(
        "train", "--model-name", "doomed", "--quiet", "--batch-size", "1", **FAST_HEARTBEAT, **env
    )

    def beating():
        rows = space.query(
            "select run_id from training.training_runs where status = 'running' and heartbeat_at > started_at"
        )
        return rows[0][0] if rows else None

    run_id = wait_for(beating, START_TIMEOUT, "the run to be running with a heartbeat")
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return run_id


def test_a_killed_training_process_is_reaped_as_worker_lost(queue):
    run_id = start_and_kill(queue)
    assert runs(queue)[0][1] == "running"  # nothing else knows yet

    # Fresh by an hour's timeout, which no slow start of `reap` can outlast.
    early = queue.trainer("reap", "--timeout", "3600")
    assert early.returncode == 0 and "Reaped 0 run(s)." in early.stdout, early.stdout + early.stderr
    assert runs(queue)[0][1] == "running"
    last_beat = wait_until_older_than(queue, run_id, 2)

    result = queue.trainer("reap", "--timeout", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Reaped 1 run(s): {run_id}."
    _, status, error, worker, _ = runs(queue)[0]
    assert status == "failed"
    assert error == (
        f"worker lost: {worker} sent no heartbeat since {last_beat:%Y-%m-%d %H:%M:%S} UTC (timeout 2s)"
    )
    assert versions(queue, "doomed") == []


def test_the_next_run_removes_the_local_files_a_killed_run_left(queue, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    start_and_kill(queue, TMPDIR=str(tmpdir))
    left = list(tmpdir.glob("trainer-run-*"))
    assert len(left) == 1  # SIGKILL: nothing could clean up

    result = queue.trainer("train", "--model-name", "next", "--quiet", *QUICK_MODEL, TMPDIR=str(tmpdir))
    assert result.returncode == 0, result.stderr
    assert list(tmpdir.glob("trainer-*")) == []  # the killed run's directory and the new run's own


def test_a_terminated_run_is_marked_failed(queue):
    process = queue.spawn_trainer("train", "--model-name", "stopped", "--quiet", "--batch-size", "1", **FAST_HEARTBEAT)
    wait_for(
        lambda: queue.query("select count(*) from training.training_runs where heartbeat_at > started_at")[0][0],
        START_TIMEOUT,
        "the run to beat",
    )
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0
    status, error = queue.query("select status, error from training.training_runs")[0]
    assert status == "failed" and error == "interrupted (KeyboardInterrupt)"
    assert versions(queue, "stopped") == []


def test_a_reaped_run_cannot_register_a_model_version(results_only):
    queue = results_only
    store = ResultsStore(queue.database())
    run_id = store.start_run("late", {"model_name": "late"}, worker="host:1:abc")
    assert store.reap(3600) == []  # a fresh heartbeat is not stale (an hour: any machine's margin)
    time.sleep(0.05)
    assert store.reap(0.01) == [run_id]
    assert store.heartbeat(run_id, "host:1:abc") is False
    with pytest.raises(RunStateError, match=f"training run {run_id} was failed before it could be registered: worker lost"):
        store.succeed_run(run_id, "host:1:abc", "late", "file:///nowhere", "0" * 64, [])
    assert versions(queue, "late") == []
    assert store.get_run(run_id).status == "failed"


def test_only_a_queued_run_can_be_claimed(results_only):
    queue = results_only
    store = ResultsStore(queue.database())
    run_id = store.queue_run("m", {"model_name": "m"})
    assert store.claim_next("w:1:a").run_id == run_id
    assert store.claim_next("w:2:b") is None
    with pytest.raises(RunStateError, match=f"training run {run_id} is running, not queued"):
        store.claim_run(run_id, "w:2:b")
