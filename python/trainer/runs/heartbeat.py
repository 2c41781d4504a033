"""A running run (or propose job) proves it is alive by refreshing `heartbeat_at`;
one whose heartbeat stops (its process was killed, its machine lost) is reaped as failed."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import warnings
from typing import Protocol


def worker_identity() -> str:
    """host:pid:token — unique per process, readable in the runs table."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Beating(Protocol):
    """A store whose running rows have a heartbeat: ResultsStore (training runs),
    ProposalStore (propose jobs)."""

    def heartbeat(self, row_id: int, worker: str) -> bool: ...


class Heartbeat:
    """Refreshes a run's (or a propose job's) heartbeat from a background thread
    while the block runs: ``store.heartbeat(run_id, worker)`` every ``interval``
    seconds. ``what`` names the row in warnings and the thread's name.

    ``lost`` becomes True if the run stops being this worker's running run (a
    reaper declared it lost); the final registration then refuses to complete.
    """

    def __init__(self, store: Beating, run_id: int, worker: str, interval: float, what: str = "run"):
        self.store = store
        self.run_id = run_id
        self.worker = worker
        self.interval = interval
        self.what = what
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{what.replace(' ', '-')}-{run_id}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> bool:
        self._stop.set()
        self._thread.join(timeout=self.interval + 30)
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.store.heartbeat(self.run_id, self.worker):
                    self.lost = True
                    return
            except Exception as exc:  # a missed beat is not fatal; the timeout allows several
                warnings.warn(f"heartbeat of {self.what} {self.run_id} failed: {exc}", RuntimeWarning, stacklevel=1)
