"""Liveness and readiness probes (no credentials: they reveal nothing about children)."""

from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from childface.api.deps import RuntimeDep
from childface.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])
VERSION = metadata.version("childface")


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up and answering."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Ready to serve: database reachable, models loaded, index caught up with the database.

    The body names the service and its version (`"service": "childface"`), so a start-up
    check can tell childface from another program answering on the same port.

    `checks.integrity` is the start-up integrity check (embedding checksums of the served
    model, photo files that are missing, the index's size against the database's): "checking"
    while it runs, "ok", or the problems found with the command that repairs them. It never
    makes the answer 503 (corrupt embeddings are left out of searches meanwhile); a problem
    is also listed in `warnings`.
    """
    state = runtime.readiness()
    body = Readiness(version=VERSION, ready=state.ready, checks=state.checks, warnings=state.warnings)
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)
