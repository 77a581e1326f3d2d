"""Settings in force (admin only): read them, and change the decision thresholds without a restart.

A change is stored in the database and audited (`settings.changed`); every API
process applies it before its next recognition (services/runtime_settings.py).
"""

from __future__ import annotations

from fastapi import APIRouter

from childface.api.deps import Admin, RuntimeDep
from childface.api.schemas_settings import EffectiveSettingsView, SettingChange, SettingsPatch
from childface.services.runtime import Runtime
from childface.services.runtime_settings import ADJUSTABLE, change_settings

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/settings", response_model=EffectiveSettingsView)
def view_settings(_: Admin, runtime: RuntimeDep) -> EffectiveSettingsView:
    """Thresholds, models and limits in effect (secrets such as the database URL are left out)."""
    return _view(runtime)


@router.patch("/settings", response_model=EffectiveSettingsView)
def change(body: SettingsPatch, principal: Admin, runtime: RuntimeDep) -> EffectiveSettingsView:
    """Change thresholds (the fields sent; `null`: back to the configured value), audited.

    400 `invalid_settings` when a value is out of range or the review threshold
    would be above the accept threshold; nothing is changed then.
    """
    change_settings(
        db=runtime.db,
        actor=principal.actor,
        base=runtime.configured_settings,
        changes=body.model_dump(exclude_unset=True),
    )
    runtime.reload_settings()
    return _view(runtime)


def _view(runtime: Runtime) -> EffectiveSettingsView:
    gallery = runtime.current_gallery()  # also brings in changes made by other processes
    s = runtime.settings
    pipeline = runtime.pipeline
    configured = runtime.configured_settings
    return EffectiveSettingsView(
        model_id=pipeline.model_id,
        embedder=pipeline.embedder.name,
        embedding_dim=pipeline.embedder.dim,
        detector=pipeline.detector_id,
        device=str(pipeline.device),
        accept_threshold=s.accept_threshold,
        review_threshold=s.review_threshold,
        match_margin=s.match_margin,
        top_k=s.top_k,
        quality={
            "min_face_px": s.quality_min_face_px,
            "min_sharpness": s.quality_min_sharpness,
            "max_yaw": s.quality_max_yaw,
            "max_roll_deg": s.quality_max_roll_deg,
            "min_detector_score": s.quality_min_detector_score,
            "min_score": s.quality_min_score,
        },
        max_upload_bytes=s.max_upload_bytes,
        max_image_pixels=s.max_image_pixels,
        gallery_faces=gallery.count,
        index_watermark=gallery.watermark,
        adjustable=list(ADJUSTABLE),
        configured={key: getattr(configured, key) for key in ADJUSTABLE},
        changed={
            key: SettingChange(value=o.value, updated_by=o.updated_by, updated_at=o.updated_at)
            for key, o in runtime.effective_settings.overrides.items()
        },
    )
