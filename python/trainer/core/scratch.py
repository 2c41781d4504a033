"""Local scratch directories that a killed run does not leave behind for good.

A run killed by SIGKILL or the kernel's OOM killer cannot clean up after itself,
and its scratch can be large: at a million annotations the spooled vectors alone
are 509 MB (331,501 texts of 384 float32). Each directory's name carries its owner's
host and pid, and making a new one first removes those whose owner has died.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def scratch_directory(kind: str, root: str | None = None) -> tempfile.TemporaryDirectory:
    """A new ``TemporaryDirectory`` in ``root`` (default TMPDIR) for this process's ``kind`` of scratch."""
    sweep_abandoned(kind, root)
    return tempfile.TemporaryDirectory(prefix=f"{_owner_prefix(kind)}{os.getpid()}-", dir=root)


def sweep_abandoned(kind: str, root: str | None = None) -> list[Path]:
    """Remove the ``kind`` scratch directories of this host whose process is gone; return them."""
    prefix = _owner_prefix(kind)
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{prefix}*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by process %s", path, pid)
            removed.append(path)
    return removed


def _owner_prefix(kind: str) -> str:
    # The host too: a TMPDIR shared between machines or containers (whose pids are
    # not ours) is never swept of another host's directories.
    host = socket.gethostname().replace("-", "_") or "localhost"
    return f"trainer-{kind}-{host}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
