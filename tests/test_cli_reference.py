"""docs/CLI.md is the commands' own help, regenerated: it cannot go stale unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_reference_is_the_commands_help():
    # In a fresh process with a plain environment: no setting of this run leaks into a default.
    page = subprocess.run(
        [sys.executable, "-m", "trainer.cli.reference"], capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "python")},
    ).stdout
    assert (ROOT / "docs" / "CLI.md").read_text() == page, (
        "docs/CLI.md is stale: python -m trainer.cli.reference > docs/CLI.md"
    )
    for command in ("train", "train-st", "request", "worker", "serve", "export", "predict", "show run"):
        assert f"`python -m trainer {command}`" in page


def test_help_lists_every_setting_the_code_reads():
    """The settings in --help come from trainer.core.settings.ENVIRONMENT: every
    variable named anywhere in the package must be declared there, and shown."""
    import re

    from click.testing import CliRunner

    from trainer.cli import cli
    from trainer.core.settings import ENVIRONMENT

    declared = {name for setting in ENVIRONMENT for name in setting.names}
    read = set()
    for path in (ROOT / "python" / "trainer").rglob("*.py"):
        read |= set(re.findall(r"[\"'](TRAINER_[A-Z_]+|PG[A-Z]+)[\"']", path.read_text()))
    assert read and read <= declared, sorted(read - declared)
    shown = CliRunner().invoke(cli, ["--help"], terminal_width=100).output
    assert all(name in shown for name in declared), sorted(name for name in declared if name not in shown)
