"""A child's faces: list, thumbnail, remove, reassign to another child, mark rejected.

Every change lists the face in the audit event's `face_ids`, so the gallery's
`catch_up` adds it to, or drops it from, the index.
"""

from __future__ import annotations

import mimetypes
from typing import Any

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from childface.db.models import ChildStatus, Embedding, Face, Image, ReviewItem, ReviewState
from childface.db.session import Actor, Database
from childface.services.children import get_child_row
from childface.services.errors import Conflict, InvalidImage, NotFound
from childface.services.file_journal import journal_deletions, sweep
from childface.services.media import MediaStore, face_thumbnail, image_extension


def face_snapshot(face: Face) -> dict[str, Any]:
    """What audit events record about a face: ids and states, never geometry or vectors."""
    return {
        "face_id": face.id,
        "image_id": face.image_id,
        "child_id": face.child_id,
        "review_state": face.review_state.value,
    }


def _face_row(session: Session, face_id: int, *, lock: bool = False) -> Face:
    query = select(Face).where(Face.id == face_id)
    if lock:
        query = query.with_for_update()
    face = session.scalar(query)
    if face is None:
        raise NotFound(f"no face with id {face_id}")
    return face


def list_faces(*, db: Database, child_id: int, state: ReviewState | None = None) -> list[Face]:
    """A child's faces, oldest first (enrolled and rejected unless `state` narrows it)."""
    with db.session() as session:
        get_child_row(session, child_id)
        query = select(Face).where(Face.child_id == child_id).order_by(Face.id)
        if state is not None:
            query = query.where(Face.review_state == state)
        return list(session.scalars(query))


def get_face(*, db: Database, face_id: int) -> Face:
    with db.session() as session:
        return _face_row(session, face_id)


def thumbnail(*, db: Database, media: MediaStore, face_id: int, max_pixels: int) -> bytes:
    """JPEG crop of a face from its stored photo."""
    from childface.vision.decode import ImageDecodeError, decode_image

    with db.session() as session:
        face = _face_row(session, face_id)
        image = session.get(Image, face.image_id)
        box = face.box
    try:
        data = media.read(image.path)
    except FileNotFoundError:
        raise NotFound(f"the photo of face {face_id} is missing from the media folder") from None
    try:
        rgb = decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise InvalidImage(f"stored photo of face {face_id} cannot be decoded: {exc}") from exc
    return face_thumbnail(rgb, box)


def original_photo(*, db: Database, media: MediaStore, face_id: int) -> tuple[bytes, str]:
    """(bytes, media type) of the stored photo the face was found in, as it was sent."""
    with db.session() as session:
        face = _face_row(session, face_id)
        path = session.get(Image, face.image_id).path
    try:
        data = media.read(path)
    except FileNotFoundError:
        raise NotFound(f"the photo of face {face_id} is missing from the media folder") from None
    media_type = mimetypes.guess_type(f"photo.{image_extension(data)}")[0] or "application/octet-stream"
    return data, media_type


def remove_face(*, db: Database, media: MediaStore, actor: Actor, face_id: int) -> Face:
    """Delete a face and its embeddings; its photo goes too when no other face remains on it."""
    with db.unit_of_work(actor) as uow:
        session = uow.session
        face = _face_row(session, face_id, lock=True)
        before = face_snapshot(face)
        image = session.get(Image, face.image_id)
        session.execute(delete(ReviewItem).where(ReviewItem.face_id == face_id))
        session.execute(delete(Embedding).where(Embedding.face_id == face_id))
        session.execute(delete(Face).where(Face.id == face_id))
        image_gone = not session.scalar(select(exists().where(Face.image_id == image.id)))
        if image_gone:
            session.execute(delete(Image).where(Image.id == image.id))
            journal_deletions(session, [(image.sha256, image.path)])
        uow.audit(
            "face.removed",
            target_type="face",
            target_id=face_id,
            child_id=face.child_id,
            before=before,
            after={"image_deleted": image_gone},
            face_ids=[face_id],
        )
    if image_gone:
        sweep(db=db, media=media, shas=[image.sha256])
    return face


def reassign_face(*, db: Database, actor: Actor, face_id: int, child_id: int) -> Face:
    """Move a face to another (active) child: the fix for a face enrolled under the wrong child."""
    with db.unit_of_work(actor) as uow:
        face = _face_row(uow.session, face_id, lock=True)
        target = get_child_row(uow.session, child_id)
        if target.status != ChildStatus.active:
            raise Conflict(f"child {child_id} is archived; unarchive it first")
        if face.child_id == child_id:
            raise Conflict(f"face {face_id} already belongs to child {child_id}")
        before = face_snapshot(face)
        face.child_id = child_id
        uow.session.flush()
        uow.audit(
            "face.reassigned",
            target_type="face",
            target_id=face_id,
            child_id=child_id,
            before=before,
            after=face_snapshot(face),
            face_ids=[face_id],
        )
    return face


def reject_face(*, db: Database, actor: Actor, face_id: int) -> Face:
    """Keep the face on record but out of the search (a wrong or unusable template)."""
    with db.unit_of_work(actor) as uow:
        face = _face_row(uow.session, face_id, lock=True)
        if face.review_state == ReviewState.rejected:
            raise Conflict(f"face {face_id} is already rejected")
        before = face_snapshot(face)
        face.review_state = ReviewState.rejected
        uow.session.flush()
        uow.audit(
            "face.rejected",
            target_type="face",
            target_id=face_id,
            child_id=face.child_id,
            before=before,
            after=face_snapshot(face),
            face_ids=[face_id],
        )
    return face
