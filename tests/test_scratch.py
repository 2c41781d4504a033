"""Scratch directories: a killed process's are removed by the next one, nobody else's are."""

from __future__ import annotations

import os
import subprocess
import sys

from trainer.core.scratch import _owner_prefix, scratch_directory, sweep_abandoned


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_dead_processes_directory_is_removed_and_the_living_ones_kept(tmp_path):
    prefix = _owner_prefix("vectors")
    abandoned = tmp_path / f"{prefix}{dead_pid()}-abc"
    (abandoned / "deep").mkdir(parents=True)
    (abandoned / "deep" / "0.f32").write_bytes(b"\0" * 1024)
    living = tmp_path / f"{prefix}{os.getpid()}-def"
    parent = tmp_path / f"{prefix}{os.getppid()}-ghi"
    other_host = tmp_path / f"trainer-vectors-another_host-{dead_pid()}-jkl"
    other_kind = tmp_path / f"{_owner_prefix('run')}{dead_pid()}-mno"
    not_a_pid = tmp_path / f"{prefix}x1-pqr"
    for path in (living, parent, other_host, other_kind, not_a_pid):
        path.mkdir()

    assert sweep_abandoned("vectors", str(tmp_path)) == [abandoned]
    assert not abandoned.exists()
    assert all(path.exists() for path in (living, parent, other_host, other_kind, not_a_pid))


def test_a_new_scratch_directory_sweeps_first_and_names_its_owner(tmp_path):
    abandoned = tmp_path / f"{_owner_prefix('run')}{dead_pid()}-abc"
    abandoned.mkdir()
    with scratch_directory("run", str(tmp_path)) as scratch:
        assert not abandoned.exists()
        assert os.path.basename(scratch).startswith(f"{_owner_prefix('run')}{os.getpid()}-")
    assert not os.path.exists(scratch)
