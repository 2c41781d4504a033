"""docs/CLI.md, written from the commands themselves (click's own help), so the
reference cannot drift from `--help`: `python -m trainer.cli.reference > docs/CLI.md`
rewrites it, and tests/test_cli_reference.py fails when it is stale."""

from __future__ import annotations

import click

from trainer.cli.commands import cli

PROGRAM = "python -m trainer"
HEADER = """# Command-line reference

Generated from the commands' own `--help` by `python -m trainer.cli.reference > docs/CLI.md`;
a test fails when this page and the commands disagree. The [user guide](USER_GUIDE.md)
explains when to use each command.
"""


def _help_of(command: click.Command, path: list[str], parent: click.Context | None) -> str:
    # A fixed width: the page must not depend on the terminal it was made in.
    context = click.Context(command, info_name=" ".join(path), parent=parent, terminal_width=100, max_content_width=100)
    return command.get_help(context)


def _sections(command: click.Command, path: list[str], parent: click.Context | None) -> list[str]:
    context = click.Context(command, info_name=" ".join(path), parent=parent)
    title = "#" * min(len(path) + 1, 4) + " `" + " ".join(path) + "`"
    sections = [f"{title}\n\n```text\n{_help_of(command, path, parent)}\n```\n"]
    if isinstance(command, click.Group):
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is not None and not sub.hidden:
                sections += _sections(sub, [*path, name], context)
    return sections


def reference() -> str:
    """The whole page, in Markdown."""
    return HEADER + "\n" + "\n".join(_sections(cli, [PROGRAM], None))


if __name__ == "__main__":
    click.echo(reference(), nl=False)
