"""The resident memory of a process and its descendants, sampled from /proc (Linux).

A training run has two processes while it embeds (the trainer and its encoder
process, trainer.model.encoder.process), so its memory is their sum. Not ``ru_maxrss`` from
wait4: Linux carries a process's high-water mark over exec, so a child's figure is at
least the RSS its parent had when it forked, and RUSAGE_CHILDREN gives the largest
descendant, not the sum.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(value) for value in text.split()]


def process_tree(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(_children(current))
    return found


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` field in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class RssSampler(threading.Thread):
    """Sums VmRSS over a process and its descendants every ``interval`` seconds, and
    keeps each process's own high-water mark (VmHWM: exact and monotonic, so only a
    peak in a process's last ``interval`` could be missed)."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self.peak_at = 0.0
        self.samples = 0
        self.hwm_kib: dict[int, int] = {}
        self.stopped = threading.Event()
        self.started_at = time.perf_counter()

    def run(self) -> None:
        while not self.stopped.is_set():
            pids = process_tree(self.pid)
            total = sum(status_kib(pid, "VmRSS") for pid in pids)
            for pid in pids:
                self.hwm_kib[pid] = max(self.hwm_kib.get(pid, 0), status_kib(pid, "VmHWM"))
            self.samples += 1
            if total > self.peak_kib:
                self.peak_kib, self.peak_at = total, time.perf_counter() - self.started_at
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
        self.join()
