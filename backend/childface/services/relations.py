"""Siblings and twins: pairs of children staff mark, so recognition never confuses them silently.

A relation is one `child_relations` row per pair (smaller child id first) with
its kind, `sibling` or `twin`. Each change is one unit of work with one audit
event that concerns both children (so it shows in both histories):

- `child.relation_added`: `after = {"child_ids": [a, b], "kind": k}`;
- `child.relation_changed`: the pair's kind changed, `before = {"kind": old}`;
- `child.relation_removed`: `before = {"kind": old}`, `after = {"child_ids": [a, b]}`.

The events name the children by id only (no names, no external ids), so an
erasure of either child leaves nothing of it in them; the rows themselves go
with either child (foreign keys cascade).

Rules: a child is never related to itself; both children must exist and must
not have been merged into another child (mark the relation on the child it was
merged into). Archived children may be related (they may come back).

What the relations do: recognition (`services.recognition.rule`) asks a match
to lead a marked sibling by `sibling_margin` and a twin by `twin_margin`; the
duplicates report never proposes merging a related pair.

`RelationBook` is a process's copy of every relation for recognition: it
follows the audit feed the way run-time settings do (reloaded only when a
relation event or an erasure has come through since), so deciding costs no
query per face or photo.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from childface.db.models import AuditEvent, Child, ChildRelation, RelationKind, utcnow
from childface.db.session import Actor, Database
from childface.services.children import get_child_row
from childface.services.errors import Conflict, InvalidInput, NotFound

RELATION_ADDED = "child.relation_added"
RELATION_CHANGED = "child.relation_changed"
RELATION_REMOVED = "child.relation_removed"
RELATION_ACTIONS = (RELATION_ADDED, RELATION_CHANGED, RELATION_REMOVED)
#: events after which a process reads the relations again (an erasure cascades rows away)
_RELOAD_ACTIONS = (*RELATION_ACTIONS, "child.erased")

#: child id -> {related child id: "sibling" | "twin"}, both directions
Kinship = dict[int, dict[int, str]]


@dataclass(frozen=True)
class Relative:
    """A child related to the child asked about."""

    child: Child
    kind: RelationKind
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class RelationChange:
    """What `set_relation` did: `created` a new pair, or changed the kind of an existing one."""

    relation: ChildRelation
    created: bool


def _relatable(session: Session, child_id: int, other_id: int) -> tuple[Child, Child]:
    """Both children, rows locked in id order (an erasure or merge racing this waits or is waited for)."""
    if child_id == other_id:
        raise InvalidInput("a child cannot be its own sibling or twin")
    rows = {cid: get_child_row(session, cid, lock=True) for cid in sorted((child_id, other_id))}
    for row in rows.values():
        if row.merged_into_id is not None:
            raise Conflict(
                f"child {row.id} was merged into child {row.merged_into_id}: mark the relation there",
                code="child_merged",
            )
    return rows[child_id], rows[other_id]


def _pair_row(session: Session, low: int, high: int) -> ChildRelation | None:
    return session.scalar(
        select(ChildRelation).where(ChildRelation.child_a_id == low, ChildRelation.child_b_id == high)
    )


def set_relation(
    *, db: Database, actor: Actor, child_id: int, other_id: int, kind: RelationKind | str
) -> RelationChange:
    """Mark the two children as `kind`; a pair marked before with another kind changes kind.

    NotFound for an unknown child, InvalidInput for one child twice or an unknown kind,
    Conflict for a merged child (`child_merged`) or a pair already marked as this kind.
    """
    try:
        kind = RelationKind(kind)
    except ValueError:
        raise InvalidInput(f"kind must be one of {', '.join(k.value for k in RelationKind)}") from None
    low, high = sorted((child_id, other_id))
    try:
        with db.unit_of_work(actor) as uow:
            session = uow.session
            child, other = _relatable(session, child_id, other_id)
            row = _pair_row(session, low, high)
            if row is not None and row.kind == kind:
                raise Conflict(
                    f"{child.display_name} and {other.display_name} are already marked as {kind.value}s",
                    code="relation_exists",
                )
            before = None if row is None else {"kind": row.kind.value}
            if row is None:
                row = ChildRelation(child_a_id=low, child_b_id=high, kind=kind, created_by=str(actor))
                session.add(row)
            else:  # the row says who marked the pair as it is now
                row.kind, row.created_by, row.created_at = kind, str(actor), utcnow()
            session.flush()
            uow.audit(
                RELATION_ADDED if before is None else RELATION_CHANGED,
                target_type="child",
                target_id=child_id,
                child_id=child_id,
                before=before,
                after={"child_ids": [low, high], "kind": kind.value},
                child_ids=[low, high],
            )
    except IntegrityError:  # the same pair marked at the same moment by someone else
        raise Conflict("this pair was marked at the same moment by someone else", code="relation_exists") \
            from None
    return RelationChange(row, before is None)


def remove_relation(*, db: Database, actor: Actor, child_id: int, other_id: int) -> RelationKind:
    """Remove the pair's relation; returns the kind it had. NotFound when the pair is not related."""
    if child_id == other_id:
        raise InvalidInput("a child cannot be its own sibling or twin")
    low, high = sorted((child_id, other_id))
    with db.unit_of_work(actor) as uow:
        session = uow.session
        for cid in (low, high):  # lock both rows, in id order, like every writer of relations
            get_child_row(session, cid, lock=True)
        row = _pair_row(session, low, high)
        if row is None:
            raise NotFound(f"children {child_id} and {other_id} are not marked as siblings or twins")
        kind = row.kind
        session.delete(row)
        session.flush()
        uow.audit(
            RELATION_REMOVED,
            target_type="child",
            target_id=child_id,
            child_id=child_id,
            before={"kind": kind.value},
            after={"child_ids": [low, high]},
            child_ids=[low, high],
        )
    return kind


def list_relatives(*, db: Database, child_id: int) -> list[Relative]:
    """The child's siblings and twins, twins first, then by name. NotFound for an unknown child."""
    with db.session() as session:
        get_child_row(session, child_id)
        rows = session.scalars(
            select(ChildRelation).where(
                or_(ChildRelation.child_a_id == child_id, ChildRelation.child_b_id == child_id)
            )
        ).all()
        others = {r.child_b_id if r.child_a_id == child_id else r.child_a_id: r for r in rows}
        children = session.scalars(select(Child).where(Child.id.in_(others))).all() if others else []
    found = [
        Relative(c, others[c.id].kind, others[c.id].created_by, others[c.id].created_at) for c in children
    ]
    found.sort(key=lambda r: (r.kind != RelationKind.twin, r.child.display_name.lower(), r.child.id))
    return found


def kinship(session: Session) -> Kinship:
    """Every relation, both directions: child id -> {related child id: kind}."""
    out: Kinship = {}
    for a, b, kind in session.execute(
        select(ChildRelation.child_a_id, ChildRelation.child_b_id, ChildRelation.kind)
    ):
        out.setdefault(a, {})[b] = kind.value
        out.setdefault(b, {})[a] = kind.value
    return out


def related_pairs(session: Session) -> set[tuple[int, int]]:
    """Every related pair as (smaller id, larger id)."""
    return {(a, b) for a, b in session.execute(select(ChildRelation.child_a_id, ChildRelation.child_b_id))}


def pair_kinds(session: Session, pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], RelationKind]:
    """The kind of each of these (smaller id, larger id) pairs that is related."""
    wanted = set(pairs)
    if not wanted:
        return {}
    ids = {c for pair in wanted for c in pair}
    rows = session.execute(
        select(ChildRelation.child_a_id, ChildRelation.child_b_id, ChildRelation.kind).where(
            ChildRelation.child_a_id.in_(ids), ChildRelation.child_b_id.in_(ids)
        )
    )
    return {(a, b): kind for a, b, kind in rows if (a, b) in wanted}


class RelationBook:
    """One process's copy of every relation, for deciding recognitions without a query per photo.

    `follow(db, watermark)` returns the relations as of the audit feed position
    `watermark` (the gallery's): it reads the table again only when an event
    that changes relations lies between the last position it saw and this one.
    Relations are few (a kindergarten's siblings), so the copy is the whole table.
    Thread-safe; the mapping it returns is never changed afterwards.
    """

    def __init__(self) -> None:
        self._kin: Kinship = {}
        self._seen: int | None = None
        self._lock = threading.Lock()

    def follow(self, db: Database, watermark: int) -> Kinship:
        seen = self._seen
        if seen is not None and watermark <= seen:
            return self._kin  # nothing new: no database access on the common path
        with self._lock:
            if self._seen is not None and watermark <= self._seen:
                return self._kin
            with db.session() as session:
                changed = self._seen is None or session.scalar(
                    select(AuditEvent.seq)
                    .where(AuditEvent.action.in_(_RELOAD_ACTIONS))
                    .where(AuditEvent.seq > self._seen, AuditEvent.seq <= watermark)
                    .limit(1)
                ) is not None
                if changed:
                    # read after the watermark was taken: every change at or below it is in these rows
                    self._kin = kinship(session)
            self._seen = watermark
            return self._kin
