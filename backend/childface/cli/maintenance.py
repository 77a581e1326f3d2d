"""`childface verify`, `gc-media`: check a deployment's files, rows and index, and tidy media."""

from __future__ import annotations

from childface.cli import app  # noqa: F401 - commands register on the one Typer app
