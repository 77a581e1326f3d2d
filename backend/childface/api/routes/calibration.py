"""Calibration for the admin's Settings page: how well enrolled faces separate, and proposed thresholds.

Reads the enrolled gallery (services/evaluation.py `calibration_page`) and
changes nothing; an admin applies proposed thresholds with `PATCH /admin/settings`.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from childface.api.deps import Admin, RuntimeDep
from childface.services.errors import InvalidInput
from childface.services.evaluation import EvaluationError, calibration_page

router = APIRouter(prefix="/admin", tags=["admin"])


class CalibrationPublic(BaseModel):
    report: dict[str, Any] = Field(
        description="children, templates, genuine/impostor statistics, current and proposed thresholds, "
        "suspect_faces (left out: they look more like another child) and drivers (the highest impostor "
        "and lowest genuine pairs, by face id)"
    )
    plot_png: str = Field(description="Score histogram and ROC as a base64 PNG.")


@router.get("/calibration", response_model=CalibrationPublic)
def calibration(
    _: Admin,
    runtime: RuntimeDep,
    target_far: Annotated[float, Query(gt=0.0, lt=1.0, description="False-match rate to aim for")] = 1e-3,
) -> CalibrationPublic:
    try:
        report, png = calibration_page(runtime.db, runtime.current_settings(), target_far=target_far)
    except EvaluationError as exc:
        raise InvalidInput(str(exc), code="cannot_calibrate") from None
    return CalibrationPublic(report=report, plot_png=base64.b64encode(png).decode())
