"""The API tests' fixtures: see support.py (shared with the service tests that need real faces)."""

from .support import app, auth, client, photos, pipeline, runtime  # noqa: F401
