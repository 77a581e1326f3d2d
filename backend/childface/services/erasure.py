"""Erasure of a child: everything of it goes, everywhere, when the erasure commits.

One unit of work with one audit event (`child.erased`) removes, for the child
and every child merged into it (followed through chains of merges):

- the child rows; their faces, embeddings and review items; their removed
  faces kept for undo (`removed_faces`: erasure cannot be undone, so neither
  can those removals), and removed review faces whose kept review items
  propose them; every photo on which no other face or kept removed face
  remains (the file is journaled and swept after the commit, so a crash
  cannot strand it);
- faces waiting for review that propose one of these children (`child_id`
  still empty, open item naming the child): such a face is most likely the
  child's, so it goes with its photo like the child's own faces. Review items
  that are kept (resolved, or about another child's face) lose these children
  from their candidate lists;
- what earlier audit events say about them (redaction, below);
- their lines in stored import reports, and their external id or name in an
  import run's error text;
- video: their arrivals and webhook events (delivered or not), and their
  entries in other children's `review` events' candidate lists; their
  sightings, and those of the review faces that go, stay as counts (source,
  times, decision) without child, score, crop or review face
  (`services.sightings.erase_sightings`).

Why redaction of the audit trail
--------------------------------
The audit trail is the record of who changed what, and the index's change
feed; deleting a child's earlier events would break both (the feed is read by
`seq`, and staff must still see that changes and an erasure happened). A
per-child encryption key destroyed at erasure would hide the values too, but
every reader of the trail would need the key service, and the database and
every backup would carry ciphertext whose safety rests on key handling. So the
events stay, and in the same transaction as the deletion their identifying
values are replaced by `REDACTED`: every event of these children (by
`child_id`, or `target_type='child'` with their id) keeps only ids, counts,
flags, scores and state words (`status`, `resolution`, ...), and any other
event whose before/after JSON mentions one of their external ids or names
(current or earlier ones) loses those values. Events that name an erased photo
by its hash lose the hash. Action, time, actor, seq and `face_ids` stay, so the
feed and the shape of history stay. Either the erasure and all redaction
commit, or nothing does.

The tombstone (the `child.erased` event) keeps only the child ids, counts,
who and when; the API response still tells the caller the external id.

After the commit: journaled photo files are deleted, and the database is asked
to leave no readable copy of the deleted bytes (`Database.scrub_freed_pages`:
SQLite checkpoints and truncates its write-ahead log, with `secure_delete` on;
PostgreSQL vacuums the touched tables). Each process's index drops the faces
when it applies the event, overwriting the vectors and rewriting its snapshot
(see `services.gallery`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Text, and_, cast, delete, or_, select, update
from sqlalchemy.orm import Session

from childface.db.models import (
    AuditEvent,
    Child,
    Embedding,
    Face,
    Image,
    ImportRun,
    ImportStatus,
    RemovedFace,
    ReviewItem,
    ReviewStatus,
)
from childface.db.session import Actor, Database
from childface.services.children import get_child_row
from childface.services.errors import Conflict, InvalidInput
from childface.services.file_journal import sweep
from childface.services.media import MediaStore, atomic_write
from childface.services.removed_faces import delete_photos, unused_photos
from childface.services.sightings import erase_sightings
from childface.services.text_input import normalise

log = logging.getLogger(__name__)

#: the audit action of an erasure: the gallery purges the faces it lists
ERASURE_ACTION = "child.erased"
#: the value the erase request must carry in `confirm`, so no client erases by accident
ERASE_CONFIRMATION = "ERASE"
#: what replaces an erased value in the audit trail, reports and error texts
REDACTED = "[erased]"

#: keys whose text values are state words, kept by redaction (everything else textual goes)
_STATE_KEYS = frozenset({"status", "review_state", "face_state", "resolution", "source", "action"})
#: values shorter than this are only redacted where a whole value equals them ("Al" stays in "Alps")
_MIN_SUBSTRING = 4
#: tables whose freed space the erasure asks the database to scrub
_TOUCHED_TABLES = (
    "children",
    "faces",
    "embeddings",
    "images",
    "review_items",
    "removed_faces",
    "audit_events",
    "import_runs",
    "file_deletions",
    "sightings",
    "arrivals",
    "webhook_deliveries",
)


@dataclass(frozen=True)
class ErasureReport:
    child_id: int
    external_id: str
    faces_deleted: int
    images_deleted: int
    files_deleted: int


def erase_child(
    *,
    db: Database,
    media: MediaStore,
    actor: Actor,
    child_id: int,
    confirm: str,
    still_due: Callable[[Child], bool] | None = None,
) -> ErasureReport:
    """Irreversibly erase a child and the children merged into it; see the module docstring.

    `still_due` (retention) is asked about the locked child row inside the erasure's transaction:
    False refuses (Conflict `not_due`), so a child restored since the caller decided is never erased.
    """
    if confirm != ERASE_CONFIRMATION:
        raise InvalidInput(
            f"erasure is irreversible: send confirm={ERASE_CONFIRMATION!r} to proceed",
            code="confirmation_required",
        )
    with db.unit_of_work(actor) as uow:
        session = uow.session
        children = _children_to_erase(session, child_id)
        if still_due is not None and not still_due(children[0]):
            raise Conflict(f"child {child_id} is no longer due for erasure", code="not_due")
        running = session.scalar(select(ImportRun.id).where(ImportRun.status == ImportStatus.running))
        if running is not None:
            # a running import holds the child in memory and writes its report at the end: it would
            # re-create the child, fail on it, or keep its lines in a report erasure cannot reach
            raise Conflict(
                f"import run {running} is running: erase the child after it has finished",
                code="import_running",
            )
        root_id, root_external_id = children[0].id, children[0].external_id
        child_ids = [c.id for c in children]
        identity = _Identity.of(session, children)
        own_faces = list(session.scalars(select(Face.id).where(Face.child_id.in_(child_ids))))
        removed = _removed_faces_of(session, set(child_ids))
        proposing = _review_faces_proposing(session, set(child_ids))
        face_ids = sorted(set(own_faces) | set(proposing) | {r.face_id for r in removed})
        # before the faces go (their sightings are found by face): rows stay as counts, crops go
        _, crop_shas = erase_sightings(session, child_ids, face_ids)
        orphaned = _delete_faces(session, face_ids, removed)
        _redact_history(session, child_ids, identity, [sha for _, sha, _ in orphaned])
        _scrub_import_runs(session, identity)
        # merge pointers among the erased rows first: one statement then deletes them all
        session.execute(update(Child).where(Child.id.in_(child_ids)).values(merged_into_id=None))
        session.execute(delete(Child).where(Child.id.in_(child_ids)))
        uow.audit(
            ERASURE_ACTION,
            target_type="child",
            target_id=root_id,
            child_id=root_id,
            after={
                "erased": True,
                "child_ids": child_ids,
                "faces_deleted": len(face_ids),
                "images_deleted": len(orphaned),
            },
            face_ids=face_ids,
        )
        # last, right before the commit: a failed commit then costs report lines of a child that
        # stays, while the other order could leave an erased child's lines in a report for good
        _scrub_import_reports(session, identity, set(face_ids))
    files_deleted = sweep(db=db, media=media, shas=[sha for _, sha, _ in orphaned] + crop_shas)
    db.scrub_freed_pages(_TOUCHED_TABLES)
    log.info("erased child %d (%d children, %d faces)", root_id, len(child_ids), len(face_ids))
    return ErasureReport(
        child_id=root_id,
        external_id=root_external_id,
        faces_deleted=len(face_ids),
        images_deleted=len(orphaned),
        files_deleted=files_deleted,
    )


def _children_to_erase(session: Session, child_id: int) -> list[Child]:
    """The child (first) and every child merged into it, directly or through a chain, rows locked."""
    found = [get_child_row(session, child_id, lock=True)]
    seen = {child_id}
    frontier = [child_id]
    while frontier:
        merged = [
            c
            for c in session.scalars(
                select(Child).where(Child.merged_into_id.in_(frontier)).order_by(Child.id).with_for_update()
            )
            if c.id not in seen
        ]
        found += merged
        seen.update(c.id for c in merged)
        frontier = [c.id for c in merged]
    return found


@dataclass(frozen=True)
class _Identity:
    """The erased children's identifying values: current ones and those earlier events recorded."""

    external_ids: frozenset[str]
    #: external ids, names and notes: values no event or report may keep
    values: frozenset[str]

    @classmethod
    def of(cls, session: Session, children: list[Child]) -> _Identity:
        external_ids = {c.external_id for c in children}
        values = {v for c in children for v in (c.external_id, c.display_name, c.notes) if v}
        for before, after in session.execute(
            select(AuditEvent.before, AuditEvent.after).where(_concerns([c.id for c in children]))
        ):
            for snap in _snapshots(before) + _snapshots(after):
                external_ids.add(snap["external_id"])
                recorded = (snap["external_id"], snap.get("name"), snap.get("notes"))
                values.update(v for v in recorded if isinstance(v, str))
        return cls(frozenset(external_ids), frozenset(v for v in values if v.strip()))

    def mentioned_in(self, text: str) -> bool:
        return any(v == text or (len(v) >= _MIN_SUBSTRING and v in text) for v in self.values)

    def scrub_text(self, text: str) -> str:
        """`text` with every mention replaced by REDACTED."""
        if text in self.values:
            return REDACTED
        for value in sorted(self.values, key=len, reverse=True):
            if len(value) >= _MIN_SUBSTRING:
                text = text.replace(value, REDACTED)
        return text


def _snapshots(value: Any) -> list[dict[str, Any]]:
    """The child snapshots (dicts with a text `external_id`) anywhere inside an event's JSON."""
    if isinstance(value, dict):
        own = [value] if isinstance(value.get("external_id"), str) else []
        return own + [s for v in value.values() for s in _snapshots(v)]
    if isinstance(value, list):
        return [s for v in value for s in _snapshots(v)]
    return []


def _concerns(child_ids: list[int]) -> Any:
    """Events that belong to these children: theirs by `child_id`, or with a child of them as target."""
    return or_(
        AuditEvent.child_id.in_(child_ids),
        and_(AuditEvent.target_type == "child", AuditEvent.target_id.in_([str(c) for c in child_ids])),
    )


# ---- faces, photos, review items -------------------------------------------------------------


def _review_faces_proposing(session: Session, child_ids: set[int]) -> list[int]:
    """Faces awaiting review with an open item that proposes one of these children.

    Every other item that names them (resolved ones, or an odd open item on a face
    that has a child) keeps its face and loses these children from its candidates.
    """
    # a superset in SQL (the id's digits in the JSON text), decided exactly below
    mentions = or_(*(cast(ReviewItem.candidates, Text).contains(str(c)) for c in child_ids))
    doomed: list[int] = []
    for item in session.scalars(select(ReviewItem).where(mentions).order_by(ReviewItem.id).with_for_update()):
        kept = [c for c in item.candidates if int(c.get("child_id", -1)) not in child_ids]
        if len(kept) == len(item.candidates):
            continue
        face_child = session.scalar(select(Face.child_id).where(Face.id == item.face_id))
        if item.status == ReviewStatus.open and face_child is None:
            doomed.append(item.face_id)
        else:
            item.candidates = kept
    return doomed


def _removed_faces_of(session: Session, child_ids: set[int]) -> list[RemovedFace]:
    """Removed faces kept for undo that go with these children: theirs, and removed review faces (no
    child) whose kept review items propose one of them (most likely theirs, like a pending review face)."""
    rows = list(session.scalars(
        select(RemovedFace).where(RemovedFace.child_id.in_(child_ids)).order_by(RemovedFace.face_id).with_for_update()
    ))
    # a superset in SQL (the id's digits in the JSON text), decided exactly below
    mentions = or_(*(cast(RemovedFace.payload, Text).contains(str(c)) for c in child_ids))
    for row in session.scalars(
        select(RemovedFace).where(RemovedFace.child_id.is_(None), mentions).order_by(RemovedFace.face_id)
        .with_for_update()
    ):
        proposed = {
            int(c.get("child_id", -1))
            for item in row.payload.get("review_items") or ()
            for c in item.get("candidates") or ()
        }
        if proposed & child_ids:
            rows.append(row)
    return rows


def _delete_faces(
    session: Session, face_ids: list[int], removed: list[RemovedFace]
) -> list[tuple[int, str, str]]:
    """Delete faces with their embeddings and review items, these removed faces, and each photo left
    without a face or a kept removed face.

    Returns the deleted photos as (id, sha256, path); their files are journaled for deletion.
    """
    if not face_ids:
        return []
    image_ids = set(session.scalars(select(Face.image_id).where(Face.id.in_(face_ids))))
    image_ids |= {r.image_id for r in removed}
    # lock the photos first (in id order, like every writer of faces): a face another writer is
    # adding to one of them right now is then either committed and seen below, or waits and finds
    # the photo row gone; without the lock a stale "no face left" would cascade its new face away
    session.execute(select(Image.id).where(Image.id.in_(image_ids)).order_by(Image.id).with_for_update())
    session.execute(delete(ReviewItem).where(ReviewItem.face_id.in_(face_ids)))
    session.execute(delete(Embedding).where(Embedding.face_id.in_(face_ids)))
    session.execute(delete(Face).where(Face.id.in_(face_ids)))
    if removed:
        session.execute(delete(RemovedFace).where(RemovedFace.face_id.in_([r.face_id for r in removed])))
    # a photo goes when no other face (another child's, a pending review, a kept removed one) remains on it
    orphaned = unused_photos(session, image_ids)
    delete_photos(session, orphaned)
    return orphaned


# ---- the audit trail -----------------------------------------------------------------------


def redact(value: Any, key: str | None = None) -> Any:
    """An event's before/after JSON with only ids, counts, flags, scores and state words left."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value  # face ids, review ids, line numbers
    if isinstance(value, str) and key in _STATE_KEYS:
        return value
    return REDACTED


def _scrub_mentions(value: Any, identity: _Identity) -> Any:
    """An event's JSON with the erased children's snapshots redacted and mentions of them replaced.

    Another child's snapshot is left alone even where it shares a name with an erased child.
    """
    if isinstance(value, dict):
        external_id = value.get("external_id")
        if isinstance(external_id, str):
            return redact(value) if external_id in identity.external_ids else value
        return {k: _scrub_mentions(v, identity) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_mentions(v, identity) for v in value]
    if isinstance(value, str) and identity.mentioned_in(value):
        return REDACTED
    return value


def _redact_history(
    session: Session, child_ids: list[int], identity: _Identity, photo_shas: Iterable[str]
) -> None:
    """Redact every earlier event about these children or their photos (see the module docstring)."""
    theirs: set[int] = set()
    for event in session.scalars(select(AuditEvent).where(_concerns(child_ids))):
        theirs.add(event.seq)
        _set_json(event, redact(event.before), redact(event.after))
    if identity.values:
        texts = [cast(AuditEvent.before, Text), cast(AuditEvent.after, Text)]
        forms = {form for value in identity.values for form in _stored_forms(value)}
        mentions = or_(*(t.contains(form, autoescape=True) for t in texts for form in forms))
        for event in session.scalars(select(AuditEvent).where(mentions)):
            if event.seq in theirs:
                continue
            _set_json(event, _scrub_mentions(event.before, identity), _scrub_mentions(event.after, identity))
    # events about a deleted photo name it by a hash prefix (review.queued)
    prefixes = [sha[:16] for sha in photo_shas]
    if prefixes:
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.target_type == "image", AuditEvent.target_id.in_(prefixes))
            .values(target_id=REDACTED)
        )


def _stored_forms(value: str) -> set[str]:
    """How a text value may appear in stored JSON: as itself and JSON-escaped (non-ASCII as \\uXXXX)."""
    escaped = json.dumps(value)[1:-1]
    if len(value) < _MIN_SUBSTRING:  # short values count only as whole JSON strings
        return {f'"{value}"', f'"{escaped}"'}
    return {value, escaped}


def _set_json(event: AuditEvent, before: Any, after: Any) -> None:
    if before != event.before:
        event.before = before
    if after != event.after:
        event.after = after


# ---- import runs and their reports ------------------------------------------------------------


def _scrub_import_runs(session: Session, identity: _Identity) -> None:
    """Replace mentions in import runs' error texts and source names."""
    if not identity.values:
        return
    for run in session.scalars(select(ImportRun)):  # few rows: one per import
        for column in ("error", "source_name"):
            text = getattr(run, column)
            if text and identity.mentioned_in(text):
                setattr(run, column, identity.scrub_text(text))


def _scrub_import_reports(session: Session, identity: _Identity, face_ids: Collection[int]) -> None:
    """Rewrite each stored import report without the lines of the erased children."""
    for path in session.scalars(select(ImportRun.report_path).where(ImportRun.report_path.is_not(None))):
        _rewrite_report(Path(path), identity, face_ids)


def _rewrite_report(path: Path, identity: _Identity, face_ids: Collection[int]) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or "child_id" not in rows[0]:
        return
    header = rows[0]
    child_col = header.index("child_id")
    face_col = header.index("face_id") if "face_id" in header else None
    faces = {str(f) for f in face_ids}

    def erased(row: list[str]) -> bool:
        # report cells a spreadsheet would run start with a quote: compare without it
        cell = row[child_col] if child_col < len(row) else ""
        # as stored: the report keeps the CSV's raw text, the database its normalised form
        if normalise(cell.removeprefix("'")) in identity.external_ids:
            return True
        return face_col is not None and face_col < len(row) and row[face_col] in faces

    kept = [header] + [row for row in rows[1:] if not erased(row)]
    if len(kept) == len(rows):
        return
    buffer = io.StringIO()
    csv.writer(buffer).writerows(kept)
    atomic_write(path, buffer.getvalue().encode("utf-8"))
