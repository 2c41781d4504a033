"""The command line (`python -m trainer`): thin commands over the library."""

from trainer.cli.commands import cli

__all__ = ["cli"]
