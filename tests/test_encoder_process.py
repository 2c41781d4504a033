"""The encoder in a child process (trainer.model.encoder.process): the same vectors as in
process, errors that keep their type, and no child left behind however the run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from trainer.core.errors import ConfigurationError
from trainer.model.encoder.embeddings import embed_texts
from trainer.model.encoder.process import EncoderProcess, EncoderProcessError

TEXTS = ["Date:", "TO: R. J. Reynolds", "", "«Größe» 👩‍🔬", "CONFIDENTIAL " * 120, "Date:"]


def _gone(pid: int, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_the_child_gives_the_vectors_of_embed_texts_and_exits_at_the_end():
    with EncoderProcess(batch_size=4) as encoder:
        assert encoder.pid is None  # nothing started before the first request
        first = encoder.embed(TEXTS)
        pid = encoder.pid
        assert pid is not None and pid != os.getpid()
        assert psutil.Process(pid).ppid() == os.getpid()
        second = encoder.embed(TEXTS[:2])
        assert encoder.pid == pid  # one child serves every request
    assert _gone(pid)
    assert first.dtype == np.float32 and first.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(first, embed_texts(TEXTS, batch_size=4, progress=False), atol=1e-6)
    np.testing.assert_allclose(second, first[:2], atol=1e-6)
    assert encoder.pid is None


def test_a_block_that_embeds_nothing_starts_no_process():
    before = {child.pid for child in psutil.Process().children()}
    with EncoderProcess() as encoder:
        pass
    assert encoder.pid is None
    assert {child.pid for child in psutil.Process().children()} == before


def test_the_childs_error_is_raised_with_its_type_and_the_child_serves_on():
    with EncoderProcess(backend="tensorrt") as encoder:
        with pytest.raises(ConfigurationError, match="embedding backend 'tensorrt' is not one of torch"):
            encoder.embed(["x"])
        with pytest.raises(ConfigurationError):
            encoder.embed(["y"])  # the same child answers again


def test_an_exception_in_the_block_kills_the_child():
    with pytest.raises(KeyboardInterrupt):
        with EncoderProcess() as encoder:
            encoder.embed(["Date:"])
            pid = encoder.pid
            raise KeyboardInterrupt
    assert _gone(pid, within=5)


def test_a_child_that_dies_is_a_clear_error():
    with EncoderProcess() as encoder:
        encoder.embed(["Date:"])
        os.kill(encoder.pid, signal.SIGKILL)
        with pytest.raises(EncoderProcessError, match=r"ended without an answer \(exit code -9; out of memory\?\)"):
            encoder.embed(["Date:"])


def test_the_child_dies_with_its_parent_even_by_kill_9(tmp_path):
    """A trainer killed with -9 (the queue's worker-lost case) leaves no encoder
    running, even one in the middle of a long request."""
    script = textwrap.dedent(
        """
        from trainer.model.encoder.process import EncoderProcess
        encoder = EncoderProcess()
        encoder.__enter__()
        encoder.embed(["Date:"])
        print(encoder.pid, flush=True)
        encoder.embed([f"text number {i}" for i in range(40_000)])  # keeps the child busy for minutes
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        # The long request is under way once the idle child starts burning CPU again:
        # waited for, not assumed after a fixed sleep, so the kill lands mid-request.
        encoder = psutil.Process(child)
        idle = sum(encoder.cpu_times()[:2])
        deadline = time.monotonic() + 120
        while sum(encoder.cpu_times()[:2]) < idle + 0.5:
            assert time.monotonic() < deadline, "the encoder never started the long request"
            time.sleep(0.05)
        assert encoder.status() != psutil.STATUS_ZOMBIE
        parent.kill()
        parent.wait(timeout=30)
        assert _gone(child), f"encoder process {child} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
