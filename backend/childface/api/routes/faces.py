"""Faces: read, thumbnail and original photo (authenticated only), remove, reassign, reject."""

from __future__ import annotations

from fastapi import APIRouter, Response

from childface.api.convert import face_public
from childface.api.deps import PathId, Reader, RuntimeDep, Writer
from childface.api.schemas import FacePublic, ReassignRequest
from childface.services import faces

router = APIRouter(prefix="/faces", tags=["faces"])


@router.get("/{face_id}", response_model=FacePublic)
def get_face(face_id: PathId, _: Reader, runtime: RuntimeDep) -> FacePublic:
    return face_public(faces.get_face(db=runtime.db, face_id=face_id))


@router.get(
    "/{face_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "JPEG crop of the face"}},
)
def face_thumbnail(face_id: PathId, _: Reader, runtime: RuntimeDep) -> Response:
    jpeg = faces.thumbnail(
        db=runtime.db, media=runtime.media, face_id=face_id, max_pixels=runtime.settings.max_image_pixels
    )
    # biometric data: never cached by shared caches
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})


@router.get(
    "/{face_id}/photo",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}, "description": "The stored photo the face was found in"}},
)
def face_photo(face_id: PathId, _: Writer, runtime: RuntimeDep) -> Response:
    """The original photo of a face, byte for byte as it was enrolled, imported or recognised.

    Staff only (`write`): a whole photo may show other children and bystanders, where a
    thumbnail shows one face.
    """
    data, media_type = faces.original_photo(db=runtime.db, media=runtime.media, face_id=face_id)
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, no-store"})


@router.delete("/{face_id}", response_model=FacePublic)
def remove_face(face_id: PathId, principal: Writer, runtime: RuntimeDep) -> FacePublic:
    """Remove the face: it leaves recognition at once. It is kept `removed_faces_keep_days` (with its
    photo) so the removal can be undone (`POST /audit/{seq}/undo`), then deleted for good."""
    face = faces.remove_face(db=runtime.db, media=runtime.media, actor=principal.actor, face_id=face_id,
                             keep_days=runtime.settings.removed_faces_keep_days)
    runtime.catch_up()
    return face_public(face)


@router.post("/{face_id}/reassign", response_model=FacePublic)
def reassign_face(
    face_id: PathId, body: ReassignRequest, principal: Writer, runtime: RuntimeDep
) -> FacePublic:
    """Move the face to another child (it was enrolled under the wrong one)."""
    faces.reassign_face(db=runtime.db, actor=principal.actor, face_id=face_id, child_id=body.child_id)
    runtime.catch_up()
    return face_public(faces.get_face(db=runtime.db, face_id=face_id))  # with its photo's date


@router.post("/{face_id}/reject", response_model=FacePublic)
def reject_face(face_id: PathId, principal: Writer, runtime: RuntimeDep) -> FacePublic:
    """Keep the face on record but take it out of the search."""
    faces.reject_face(db=runtime.db, actor=principal.actor, face_id=face_id)
    runtime.catch_up()
    return face_public(faces.get_face(db=runtime.db, face_id=face_id))  # with its photo's date
