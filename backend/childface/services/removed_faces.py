"""Removed faces kept for undo: stash, restore, purge.

A removed face leaves every query at once: its `faces` row, embeddings and
review items are deleted. Their columns are kept in a `removed_faces` row
(`payload`: the face row, its embeddings with the vector in base64, its review
items and the sightings that pointed at it), and the photo's `images` row and
file stay while any removed face refers to them. So an undo
(`services.undo`) re-inserts the face with its same id, embeddings and review
items, exactly as they were.

`purge_expired_removals` (run by the Housekeeper) deletes removed faces older
than `removed_faces_keep_days`, and each photo nothing else needs any more
(through the file journal); it records one `faces.purged` audit event, so an
undo of such a removal can say when it was purged. Erasure purges a child's
removed faces at once (`purge_rows` inside the erasure's transaction).

Vectors are biometric data: they live only in the payload, never in audit
events.
"""

from __future__ import annotations

import base64
import enum
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import LargeBinary, delete, exists, select, update
from sqlalchemy.orm import Session

from childface.config import Settings
from childface.db.models import (
    Base,
    Embedding,
    EmbeddingModel,
    Face,
    Image,
    RemovedFace,
    ReviewItem,
    Sighting,
    UtcDateTime,
    as_utc,
    embedding_checksum,
)
from childface.db.session import Actor, Database
from childface.services.errors import Conflict
from childface.services.file_journal import journal_deletions, sweep
from childface.services.media import MediaStore

log = logging.getLogger(__name__)

#: the audit action of a purge: its `face_ids` are the removed faces deleted for good
PURGE_ACTION = "faces.purged"
#: who purges expired removals
HOUSEKEEPING = Actor("system", "housekeeping")
#: the keep time when a caller gives none (the setting's default)
DEFAULT_KEEP_DAYS: int = Settings.model_fields["removed_faces_keep_days"].default


# ---- rows as JSON and back --------------------------------------------------------------------------


def row_to_json(row: Base) -> dict[str, Any]:
    """Every column of an ORM row as JSON values: times ISO 8601, enums by value, bytes in base64."""
    out: dict[str, Any] = {}
    for column in row.__table__.columns:
        value = getattr(row, column.key)
        if isinstance(value, datetime):
            value = as_utc(value).isoformat()
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, bytes | bytearray | memoryview):
            value = base64.b64encode(bytes(value)).decode("ascii")
        out[column.key] = value
    return out


def row_from_json(model: type[Base], values: dict[str, Any]) -> Base:
    """The ORM row `row_to_json` described (unknown keys are ignored)."""
    kwargs: dict[str, Any] = {}
    for column in model.__table__.columns:
        if column.key not in values:
            continue
        value = values[column.key]
        if value is not None:
            enum_class = getattr(column.type, "enum_class", None)
            if isinstance(column.type, UtcDateTime):
                value = datetime.fromisoformat(value)
            elif isinstance(column.type, LargeBinary):
                value = base64.b64decode(value)
            elif enum_class is not None:
                value = enum_class(value)
        kwargs[column.key] = value
    return model(**kwargs)


# ---- stash and restore ------------------------------------------------------------------------------


def stash_face(session: Session, face: Face, *, seq: int, removed_at: datetime | None = None) -> RemovedFace:
    """Inside the removing transaction: keep the face's rows in `removed_faces`, then delete them.

    The photo's row stays (the caller decides nothing about it). `seq` is the removing event.
    """
    embeddings = session.scalars(select(Embedding).where(Embedding.face_id == face.id).order_by(Embedding.id))
    items = session.scalars(select(ReviewItem).where(ReviewItem.face_id == face.id).order_by(ReviewItem.id))
    sightings = session.scalars(select(Sighting.id).where(Sighting.face_id == face.id).order_by(Sighting.id))
    payload = {
        "face": row_to_json(face),
        "embeddings": [row_to_json(e) for e in embeddings],
        "review_items": [row_to_json(i) for i in items],
        "sighting_ids": list(sightings),
    }
    removed = RemovedFace(
        face_id=face.id,
        child_id=face.child_id,
        image_id=face.image_id,
        seq=seq,
        payload=payload,
        removed_at=removed_at or datetime.now(UTC),
    )
    delete_face_rows(session, face.id)
    session.add(removed)
    session.flush()
    return removed


def delete_face_rows(session: Session, face_id: int) -> None:
    """Delete a face with its embeddings and review items; its sightings forget it."""
    session.execute(update(Sighting).where(Sighting.face_id == face_id).values(face_id=None))
    session.execute(delete(ReviewItem).where(ReviewItem.face_id == face_id))
    session.execute(delete(Embedding).where(Embedding.face_id == face_id))
    session.execute(delete(Face).where(Face.id == face_id))


def restore_face(session: Session, face_id: int) -> Face:
    """Inside the undoing transaction: put a stashed face back with its same id, embeddings and review
    items, and point its sightings at it again; the `removed_faces` row goes.

    Conflict when it is not kept (`kept`: None), when its photo has a face in its place now (enrolled
    again since), or when a stored vector no longer matches its checksum.
    """
    removed = session.get(RemovedFace, face_id, with_for_update=True)
    if removed is None:
        raise Conflict(f"face {face_id} is no longer kept", code="purged")
    payload = removed.payload
    face = row_from_json(Face, payload["face"])
    assert isinstance(face, Face)
    # imported here: enrollment -> consistency -> gallery -> erasure imports this module
    from childface.services.enrollment import SAME_FACE_IOU, iou

    for other in session.scalars(select(Face).where(Face.image_id == face.image_id).with_for_update()):
        if iou(other.box, face.box) >= SAME_FACE_IOU:
            raise Conflict(
                f"face {face_id} cannot come back: its photo has face {other.id} in its place now "
                f"(the photo was enrolled or recognised again); remove face {other.id} first",
                code="face_replaced",
            )
    known_models = set(session.scalars(select(EmbeddingModel.id)))
    embeddings = []
    for values in payload["embeddings"]:
        row = row_from_json(Embedding, values)
        assert isinstance(row, Embedding)
        if row.model_id not in known_models:
            continue  # its model was deleted since: nothing could search it
        if row.checksum is not None and embedding_checksum(row.model_id, row.vector) != row.checksum:
            raise Conflict(f"the kept embedding of face {face_id} does not match its checksum",
                           code="corrupt_payload")
        embeddings.append(row)
    session.delete(removed)
    session.add(face)
    session.flush()
    session.add_all(embeddings)
    session.add_all(row_from_json(ReviewItem, values) for values in payload["review_items"])
    sightings = [int(s) for s in payload.get("sighting_ids") or ()]
    if sightings:
        session.execute(
            update(Sighting)
            .where(Sighting.id.in_(sightings), Sighting.face_id.is_(None))
            .values(face_id=face_id)
        )
    session.flush()
    return face


# ---- photos -----------------------------------------------------------------------------------------


def unused_photos(session: Session, image_ids: Collection[int]) -> list[tuple[int, str, str]]:
    """Of these photos, those no face, no removed face and no sighting's crop refers to:
    (id, sha256, path)."""
    if not image_ids:
        return []
    rows = session.execute(
        select(Image.id, Image.sha256, Image.path).where(
            Image.id.in_(sorted(image_ids)),
            ~exists().where(Face.image_id == Image.id),
            ~exists().where(RemovedFace.image_id == Image.id),
            ~exists().where(Sighting.best_crop_path == Image.path),
        )
    )
    return [(row.id, row.sha256, row.path) for row in rows]


def delete_photos(session: Session, photos: list[tuple[int, str, str]]) -> None:
    """Delete these photo rows and journal their files (swept after the commit)."""
    if photos:
        session.execute(delete(Image).where(Image.id.in_([image_id for image_id, _, _ in photos])))
        journal_deletions(session, [(sha, path) for _, sha, path in photos])


# ---- purge ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purged:
    """Removed faces deleted for good, and the photos that went with them."""

    face_ids: list[int]
    child_ids: list[int]
    photos: list[tuple[int, str, str]]


def purge_rows(session: Session, removed: Iterable[RemovedFace]) -> Purged:
    """Inside the caller's transaction: delete these removed faces and each photo left unused."""
    rows = list(removed)
    if not rows:
        return Purged([], [], [])
    face_ids = sorted(r.face_id for r in rows)
    image_ids = {r.image_id for r in rows}
    children = sorted({r.child_id for r in rows if r.child_id is not None})
    # photo rows first, in id order, like every writer of faces on them
    session.execute(select(Image.id).where(Image.id.in_(sorted(image_ids))).order_by(Image.id).with_for_update())
    session.execute(delete(RemovedFace).where(RemovedFace.face_id.in_(face_ids)))
    photos = unused_photos(session, image_ids)
    delete_photos(session, photos)
    return Purged(face_ids, children, photos)


def purge_expired_removals(
    *, db: Database, media: MediaStore, settings: Settings, now: datetime | None = None
) -> list[int]:
    """Delete removed faces older than `removed_faces_keep_days`, and their photos when nothing else
    uses them; one `faces.purged` event (actor system:housekeeping). Returns the purged face ids."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=settings.removed_faces_keep_days)
    with db.session() as session:
        due = session.scalar(select(exists().where(RemovedFace.removed_at <= cutoff)))
    if not due:
        return []  # the usual case: no write transaction
    try:
        with db.unit_of_work(HOUSEKEEPING) as uow:
            expired = uow.session.scalars(
                select(RemovedFace)
                .where(RemovedFace.removed_at <= cutoff)
                .order_by(RemovedFace.face_id)
                .with_for_update()
            )
            purged = purge_rows(uow.session, expired)
            if not purged.face_ids:
                raise _NothingDue  # another process purged them first: roll back, no event
            uow.audit(
                PURGE_ACTION,
                target_type="face",
                after={
                    "purged_face_ids": purged.face_ids,
                    "images_deleted": len(purged.photos),
                    "keep_days": settings.removed_faces_keep_days,
                },
                face_ids=purged.face_ids,
                child_ids=purged.child_ids,
            )
    except _NothingDue:
        return []
    if purged.photos:
        sweep(db=db, media=media, shas=[sha for _, sha, _ in purged.photos])
    log.info("purged %d removed face(s) older than %d days (%d photo(s))",
             len(purged.face_ids), settings.removed_faces_keep_days, len(purged.photos))
    return purged.face_ids


class _NothingDue(Exception):
    """Nothing was due after all: leave the unit of work without an event."""
