"""`python -m childface.cli ...` runs the same commands as `childface ...`."""

from childface.cli import app

app()
