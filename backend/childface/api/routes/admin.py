"""Administration: staff accounts, API keys, the effective settings (admin only)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from childface.api.deps import Admin, PathId, RuntimeDep
from childface.api.schemas import (
    ApiKeyCreate,
    ApiKeyIssued,
    ApiKeyPublic,
    SettingsView,
    UserCreate,
    UserPublic,
)
from childface.db.models import ApiKey, User
from childface.services import accounts

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/users", response_model=list[UserPublic])
def list_users(_: Admin, runtime: RuntimeDep) -> list[UserPublic]:
    with runtime.db.session() as session:
        return [UserPublic.model_validate(u) for u in session.scalars(select(User).order_by(User.username))]


@router.post("/users", response_model=UserPublic, status_code=201)
def create_user(body: UserCreate, principal: Admin, runtime: RuntimeDep) -> UserPublic:
    user = accounts.create_user(
        db=runtime.db, actor=principal.actor, username=body.username, password=body.password, role=body.role
    )
    return UserPublic.model_validate(user)


@router.get("/api-keys", response_model=list[ApiKeyPublic])
def list_api_keys(_: Admin, runtime: RuntimeDep) -> list[ApiKeyPublic]:
    """Keys with their prefix (to tell them apart), scopes and last use; never the key itself."""
    with runtime.db.session() as session:
        return [ApiKeyPublic.model_validate(k) for k in session.scalars(select(ApiKey).order_by(ApiKey.id))]


@router.post("/api-keys", response_model=ApiKeyIssued, status_code=201)
def create_api_key(body: ApiKeyCreate, principal: Admin, runtime: RuntimeDep) -> ApiKeyIssued:
    """Issue a key for another system. The response holds the key: it is shown this once only."""
    issued = accounts.create_api_key(db=runtime.db, actor=principal.actor, name=body.name, scopes=body.scopes)
    with runtime.db.session() as session:
        row = session.get(ApiKey, issued.id)
    return ApiKeyIssued(**ApiKeyPublic.model_validate(row).model_dump(), key=issued.key)


@router.post("/api-keys/{key_id}/revoke", response_model=ApiKeyPublic)
def revoke_api_key(key_id: PathId, principal: Admin, runtime: RuntimeDep) -> ApiKeyPublic:
    return ApiKeyPublic.model_validate(
        accounts.revoke_api_key(db=runtime.db, actor=principal.actor, key_id=key_id)
    )


@router.get("/settings", response_model=SettingsView)
def view_settings(_: Admin, runtime: RuntimeDep) -> SettingsView:
    """Thresholds, models and limits in effect (secrets such as the database URL are left out)."""
    s = runtime.settings
    pipeline = runtime.pipeline
    gallery = runtime.gallery
    return SettingsView(
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
    )
