"""`childface --help` and every command's help read well: no `<bool>`, every option name in full."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from childface.cli import app


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every (sub)command under a click-style group (Typer carries its own click)."""
    found = []
    for name, command in group.commands.items():
        found.append(((*prefix, name), command))
        if hasattr(command, "commands"):
            found += _commands(command, (*prefix, name))
    return found


@pytest.mark.parametrize("columns", ["60", "80", "200"])
def test_every_help_names_each_option_in_full_without_bool_placeholders(columns: str) -> None:
    runner = CliRunner()
    root = typer.main.get_command(app)
    for path, command in [((), root), *_commands(root)]:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": columns})
        assert result.exit_code == 0, (path, result.output)
        text = result.output
        assert "<bool>" not in text and "…" not in text, (path, text)
        for param in command.params:
            for name in (*param.opts, *param.secondary_opts):
                if name.startswith("-"):
                    assert name in text, (path, name, text)
