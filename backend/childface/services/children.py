"""Children: create, read, list, update and archive/unarchive (erasure: `services.erasure`).

Each change is one unit of work with one audit event (DESIGN.md invariant 2).
Events that change whether faces are searchable (archive, unarchive)
list those faces in `face_ids`, so the gallery's `catch_up` re-reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from childface.db.models import Child, ChildStatus, Face, ReviewState, utcnow
from childface.db.session import Actor, Database
from childface.services.errors import Conflict, InvalidInput, NotFound
from childface.services.text_input import clean_field

MAX_PAGE = 500

_LIMITS = {"external_id": 128, "display_name": 200, "group_name": 100, "consent_recorded_by": 200,
           "notes": 5000}
#: fields that may hold line feeds and tabs
_MULTILINE = {"notes"}


@dataclass(frozen=True)
class Page:
    items: list[Any]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class ChildSummary:
    child: Child
    n_faces: int
    #: the child's first enrolled face (its picture in lists), None without one
    thumbnail_face_id: int | None = None


def snapshot(child: Child) -> dict[str, Any]:
    """What audit events record about a child (no biometric data)."""
    return {
        "external_id": child.external_id,
        "name": child.display_name,
        "group": child.group_name,
        "status": child.status.value if child.status else ChildStatus.active.value,
        "notes": child.notes,
        "merged_into_id": child.merged_into_id,
        # an undo that archives the child again restores this time (retention counts from it)
        "archived_at": child.archived_at.isoformat() if child.archived_at else None,
    }


def clean_text(field: str, value: str | None, *, required: bool) -> str | None:
    """A child's text field as stored (`services.text_input.clean_field`: NFKC, stripped, no control or
    bidi characters, within the column's length); None for blank optional values; InvalidInput otherwise."""
    return clean_field(field, value, max_length=_LIMITS.get(field, 10_000), required=required,
                       multiline=field in _MULTILINE)


def get_child_row(session: Session, child_id: int, *, lock: bool = False) -> Child:
    query = select(Child).where(Child.id == child_id)
    if lock:
        query = query.with_for_update()
    child = session.scalar(query)
    if child is None:
        raise NotFound(f"no child with id {child_id}")
    return child


def enrolled_face_ids(session: Session, child_id: int) -> list[int]:
    return list(
        session.scalars(
            select(Face.id).where(Face.child_id == child_id, Face.review_state == ReviewState.enrolled)
        )
    )


def create_child(
    *,
    db: Database,
    actor: Actor,
    external_id: str,
    name: str,
    group: str | None = None,
    notes: str | None = None,
    consent_recorded_by: str | None = None,
    consent_recorded_at: datetime | None = None,
) -> Child:
    child = Child(
        external_id=clean_text("external_id", external_id, required=True),
        display_name=clean_text("display_name", name, required=True),
        group_name=clean_text("group_name", group, required=False),
        notes=clean_text("notes", notes, required=False),
        consent_recorded_by=clean_text("consent_recorded_by", consent_recorded_by, required=False),
        consent_recorded_at=consent_recorded_at,
        status=ChildStatus.active,
    )
    try:
        with db.unit_of_work(actor) as uow:
            if uow.session.scalar(select(Child.id).where(Child.external_id == child.external_id)):
                raise Conflict(f"a child with external_id {child.external_id!r} already exists")
            uow.session.add(child)
            uow.session.flush()
            uow.audit(
                "child.created",
                target_type="child",
                target_id=child.id,
                child_id=child.id,
                after=snapshot(child),
            )
    except IntegrityError:
        # two concurrent creations of one external id: the unique constraint decides
        raise Conflict(f"a child with external_id {child.external_id!r} already exists") from None
    return child


def get_child(*, db: Database, child_id: int) -> ChildSummary:
    with db.session() as session:
        child = get_child_row(session, child_id)
        face_ids = enrolled_face_ids(session, child_id)
    return ChildSummary(child=child, n_faces=len(face_ids), thumbnail_face_id=min(face_ids, default=None))


def find_child_by_external_id(*, db: Database, external_id: str) -> Child | None:
    with db.session() as session:
        return session.scalar(select(Child).where(Child.external_id == external_id.strip()))


#: the orders a children list can take (`list_children`'s `sort`)
SORTS = ("name", "external_id", "created", "faces")


def list_children(
    *,
    db: Database,
    query: str | None = None,
    external_id: str | None = None,
    group: str | None = None,
    status: ChildStatus | None = None,
    sort: str = "name",
    descending: bool = False,
    limit: int = 50,
    offset: int = 0,
) -> Page:
    """One page of children: a name/external-id search, an exact external id, group and status filters,
    sorted by `sort` (one of SORTS; ties by id), each with its enrolled-face count and first template.

    One query for the page and one for the total: the page's cost does not grow with the page size
    beyond its rows (the counts are correlated subqueries over the indexed `faces.child_id`).
    """
    if sort not in SORTS:
        raise InvalidInput(f"sort must be one of {', '.join(SORTS)}")
    limit = max(1, min(limit, MAX_PAGE))
    offset = max(0, offset)
    conditions = []
    if query and query.strip():
        needle = query.strip().lower()
        conditions.append(
            or_(
                func.lower(Child.display_name).contains(needle, autoescape=True),
                func.lower(Child.external_id).contains(needle, autoescape=True),
            )
        )
    if external_id is not None:
        conditions.append(Child.external_id == external_id.strip())
    if group:
        conditions.append(Child.group_name == group)
    if status is not None:
        conditions.append(Child.status == status)
    enrolled = (Face.child_id == Child.id, Face.review_state == ReviewState.enrolled)
    n_faces = select(func.count(Face.id)).where(*enrolled).correlate(Child).scalar_subquery()
    first_face = select(func.min(Face.id)).where(*enrolled).correlate(Child).scalar_subquery()
    key = {
        "name": func.lower(Child.display_name),
        "external_id": Child.external_id,
        "created": Child.created_at,
        "faces": n_faces,
    }[sort]
    with db.session() as session:
        total = session.scalar(select(func.count(Child.id)).where(*conditions)) or 0
        rows = session.execute(
            select(Child, n_faces, first_face)
            .where(*conditions)
            .order_by(key.desc() if descending else key.asc(), Child.id.desc() if descending else Child.id)
            .limit(limit)
            .offset(offset)
        ).all()
    items = [ChildSummary(child=row[0], n_faces=int(row[1] or 0), thumbnail_face_id=row[2]) for row in rows]
    return Page(items=items, total=int(total), limit=limit, offset=offset)


def update_child(*, db: Database, actor: Actor, child_id: int, changes: dict[str, Any]) -> Child:
    """Apply the given fields (external_id, name, group, notes, consent_*); absent keys stay."""
    mapping = {
        "external_id": "external_id",
        "name": "display_name",
        "group": "group_name",
        "notes": "notes",
        "consent_recorded_by": "consent_recorded_by",
        "consent_recorded_at": "consent_recorded_at",
    }
    unknown = set(changes) - set(mapping)
    if unknown:
        raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}")
    try:
        with db.unit_of_work(actor) as uow:
            child = get_child_row(uow.session, child_id, lock=True)
            before = snapshot(child)
            for key, value in changes.items():
                column = mapping[key]
                if column in _LIMITS:
                    value = clean_text(column, value, required=column in {"external_id", "display_name"})
                setattr(child, column, value)
            if "external_id" in changes and uow.session.scalar(
                select(Child.id).where(Child.external_id == child.external_id, Child.id != child.id)
            ):
                raise Conflict(f"a child with external_id {child.external_id!r} already exists")
            uow.session.flush()
            uow.audit(
                "child.updated",
                target_type="child",
                target_id=child.id,
                child_id=child.id,
                before=before,
                after=snapshot(child),
            )
    except IntegrityError:
        raise Conflict("external_id is already used by another child") from None
    return child


def set_child_status(*, db: Database, actor: Actor, child_id: int, status: ChildStatus) -> Child:
    """Archive (faces leave the search) or unarchive (they come back)."""
    with db.unit_of_work(actor) as uow:
        child = get_child_row(uow.session, child_id, lock=True)
        if child.status == status:
            raise Conflict(f"child {child_id} is already {status.value}")
        if status == ChildStatus.active and child.merged_into_id is not None:
            raise Conflict(
                f"child {child_id} was merged into child {child.merged_into_id}; it stays archived"
            )
        before = snapshot(child)
        child.status = status
        # retention erases children archived for `retention_archived_days`, counted from here
        child.archived_at = utcnow() if status == ChildStatus.archived else None
        uow.session.flush()
        uow.audit(
            "child.archived" if status == ChildStatus.archived else "child.unarchived",
            target_type="child",
            target_id=child.id,
            child_id=child.id,
            before=before,
            after=snapshot(child),
            face_ids=enrolled_face_ids(uow.session, child.id),
        )
    return child
