"""A child's faces: list, thumbnail, remove (kept for undo: `services.removed_faces`), reassign to
another child, mark rejected.

Every change lists the face in the audit event's `face_ids`, so the gallery's
`catch_up` adds it to, or drops it from, the index.
"""

from __future__ import annotations

import mimetypes
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from childface.db.models import ChildStatus, Face, Image, ReviewState
from childface.db.session import Actor, Database
from childface.services.children import get_child_row
from childface.services.errors import Conflict, InvalidImage, NotFound
from childface.services.file_journal import sweep
from childface.services.media import MediaStore, face_thumbnail, image_extension
from childface.services.removed_faces import (
    DEFAULT_KEEP_DAYS,
    delete_face_rows,
    delete_photos,
    stash_face,
    unused_photos,
)


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
        # with the photo rows: the API says when each photo was taken
        query = select(Face).where(Face.child_id == child_id).order_by(Face.id)
        query = query.options(selectinload(Face.image))
        if state is not None:
            query = query.where(Face.review_state == state)
        return list(session.scalars(query))


def get_face(*, db: Database, face_id: int) -> Face:
    """The face, with its photo row loaded."""
    with db.session() as session:
        face = _face_row(session, face_id)
        face.image  # noqa: B018 - loaded while the session is open
        return face


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


def remove_face(
    *, db: Database, media: MediaStore, actor: Actor, face_id: int, keep_days: int = DEFAULT_KEEP_DAYS
) -> Face:
    """Remove a face: its row, embeddings and review items go, so it leaves every query at once.

    With `keep_days` > 0 (`removed_faces_keep_days`) they are kept in `removed_faces`, with the photo,
    so the removal can be undone for that long (`services.undo`); the event's `after.kept_until`
    says until when. With 0 they are deleted for good, and the photo too when nothing else uses it.
    """
    removed_at = datetime.now(UTC)
    with db.unit_of_work(actor) as uow:
        session = uow.session
        face = _face_row(session, face_id, lock=True)
        before = face_snapshot(face)
        photos: list[tuple[int, str, str]] = []
        if keep_days == 0:
            delete_face_rows(session, face_id)
            photos = unused_photos(session, [face.image_id])
            delete_photos(session, photos)
        kept_until = removed_at + timedelta(days=keep_days) if keep_days else None
        event = uow.audit(
            "face.removed",
            target_type="face",
            target_id=face_id,
            child_id=face.child_id,
            before=before,
            after={"image_deleted": bool(photos), "kept_until": kept_until and kept_until.isoformat()},
            face_ids=[face_id],
        )
        if keep_days:
            stash_face(session, face, seq=event.seq, removed_at=removed_at)
    if photos:
        sweep(db=db, media=media, shas=[sha for _, sha, _ in photos])
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
