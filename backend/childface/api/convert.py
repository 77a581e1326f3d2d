"""Table rows and service results -> public schemas (one place, so every route answers alike)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect

from childface.api import schemas
from childface.db.models import Child, Face, Image
from childface.services.enrollment import FaceVerdict, PhotoOutcome


def child_public(child: Child, n_faces: int, thumbnail_face_id: int | None = None) -> schemas.ChildPublic:
    return schemas.ChildPublic(
        id=child.id,
        external_id=child.external_id,
        name=child.display_name,
        group=child.group_name,
        status=child.status.value,
        notes=child.notes,
        consent_recorded_by=child.consent_recorded_by,
        consent_recorded_at=child.consent_recorded_at,
        merged_into_id=child.merged_into_id,
        n_faces=n_faces,
        thumbnail_face_id=thumbnail_face_id,
        created_at=child.created_at,
        updated_at=child.updated_at,
    )


def quality_public(quality: Any) -> schemas.QualityPublic:
    """From a vision QualityReport or the stored `quality_details` dict."""
    if isinstance(quality, dict):
        return schemas.QualityPublic(
            score=float(quality.get("score", 0.0)),
            passed=bool(quality.get("passed", False)),
            reasons=list(quality.get("reasons", [])),
        )
    return schemas.QualityPublic(
        score=float(quality.score), passed=bool(quality.passed), reasons=list(quality.reasons)
    )


def face_public(face: Face, image: Image | None = None) -> schemas.FacePublic:
    """`image`: the face's photo, for when it was taken; default: the face's loaded `image`, if any."""
    details = face.quality_details or {"score": face.quality_score, "passed": True, "reasons": []}
    photo = image if image is not None else _loaded_image(face)
    return schemas.FacePublic(
        id=face.id,
        child_id=face.child_id,
        image_id=face.image_id,
        box=face.box,
        landmarks=face.landmarks,
        detector_score=face.detector_score,
        quality=quality_public(details),
        review_state=face.review_state.value,
        mask=face.mask,
        arousal=face.arousal,
        valence=face.valence,
        created_at=face.created_at,
        thumbnail_url=f"/faces/{face.id}/thumbnail",
        taken_at=photo.taken_at if photo is not None else None,
        taken_at_source=photo.taken_at_source if photo is not None else None,
        retired=face.retired_at is not None,
        retired_at=face.retired_at,
    )


def _loaded_image(face: Face) -> Image | None:
    """The face's photo row when it was loaded with it (a detached face cannot load it now)."""
    return None if "image" in inspect(face).unloaded else face.image


def detected_public(face: Any) -> schemas.DetectedFacePublic:
    """From a vision DetectedFace."""
    return schemas.DetectedFacePublic(
        box=[round(float(v), 2) for v in face.box],
        landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
        detector_score=float(face.score),
        quality=quality_public(face.quality),
    )


def _verdict_public(verdict: FaceVerdict) -> schemas.EnrolledFacePublic:
    return schemas.EnrolledFacePublic(
        **detected_public(verdict.face).model_dump(),
        index=verdict.index,
        enrolled=verdict.enrolled,
        face_id=verdict.face_id,
        refused_reasons=verdict.refused_reasons,
    )


def photo_public(outcome: PhotoOutcome) -> schemas.PhotoResult:
    return schemas.PhotoResult(
        filename=outcome.filename,
        status=outcome.status,  # type: ignore[arg-type]
        reasons=outcome.reasons,
        message=outcome.message,
        sha256=outcome.sha256,
        image_id=outcome.image_id,
        width=outcome.width,
        height=outcome.height,
        faces=[_verdict_public(v) for v in outcome.faces],
        enrolled_face_id=outcome.enrolled_face_id,
        consistency=None if outcome.consistency is None else outcome.consistency.to_dict(),
    )
