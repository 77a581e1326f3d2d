"""Liveness and readiness probes (no credentials: they reveal nothing about children)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from childface.api.deps import RuntimeDep
from childface.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up and answering."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Ready to serve: database reachable, models loaded, index caught up with the database."""
    state = runtime.readiness()
    body = Readiness(ready=state.ready, checks=state.checks)
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)
