"""A running run proves it is alive by refreshing `heartbeat_at`; a run whose
heartbeat stops (its process was killed, its machine lost) is reaped as failed."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import warnings

from trainer.results.store import ResultsStore


def worker_identity() -> str:
    """host:pid:token — unique per process, readable in the runs table."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Heartbeat:
    """Refreshes a run's heartbeat from a background thread while the block runs.

    ``lost`` becomes True if the run stops being this worker's running run (a
    reaper declared it lost); the final registration then refuses to complete.
    """

    def __init__(self, store: ResultsStore, run_id: int, worker: str, interval: float):
        self.store = store
        self.run_id = run_id
        self.worker = worker
        self.interval = interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{run_id}", daemon=True)

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
                warnings.warn(f"heartbeat of run {self.run_id} failed: {exc}", RuntimeWarning, stacklevel=1)
