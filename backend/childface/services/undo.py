"""Undo of an audited change, from the audit trail: `undo(db=..., actor=..., seq=...)`.

What can be undone, and what an undo restores
---------------------------------------------
- `child.merged`: the faces the merge moved (`after.moved_face_ids`) go back to
  the source child; the source's status, `merged_into_id` and `archived_at`
  return to the event's `before`. Both children keep their own faces.
- `child.archived` / `child.unarchived`: the status (and `archived_at`) as before.
- `face.reassigned`: the face goes back to its earlier child.
- `face.rejected`: the face's review state as before.
- `face.removed`: the face comes back with its same id, embeddings and review
  items (`services.removed_faces`), while it is kept (`removed_faces_keep_days`).
- `review.resolved` (confirm, assign, new child, dismiss): the face is pending
  review again, without a child, and its item is open again (resolution, who and
  when cleared). A child the resolution created ("new child") is deleted again:
  nothing else can refer to it yet (otherwise a later change names it, below).
- `face.auto_template`: the faces it retired are searched again; the added face
  goes out: a confirmed review face returns to `rejected` (kept on record, as
  before), a face stored from a recognition is removed (kept like any removed
  face, so the undo itself can be undone).
- `audit.undone` (an undo): undoing an undo redoes the change.

`child.erased` is irreversible by design (the data is gone); other actions
(enrollment, imports, accounts, settings, ...) are not undoable.

The rule: exactly the state before, or nothing
----------------------------------------------
An undo restores the fields the change set, on the rows it touched, to their
values before it (`updated_at` records the undo). It is refused (409, nothing
changed) when a later event touched the same state: any event after it that
lists one of its faces in `face_ids`, or that concerns (`audit_event_children`)
one of its children. These later events are not counted, because they change
nothing an undo restores:

- for children: `child.updated` (names, group, notes, consent), `child.relation_*`
  (siblings and twins), `duplicates.dismissed`, `faces.purged` (the purge of
  other removed faces), `settings.changed` and `model.*`;
- for faces: `model.*` (embeddings of other models).

A later change that was itself undone since (and that undo) cancel out: after
undoing an automatic template, the review resolution before it can be undone.
The refusal names the first later change that still stands (seq, action, when,
who): undo that first; an erasure or a purge among them is named instead (no
undo can lift those). More than `MAX_LATER_CHANGES` later changes are not
checked: refused. Also refused: a change already undone (naming the undo; undo the undo to redo
it), a removed face purged since ("purged on <date>") or not kept at all, a
face whose photo has another face in its place now (enrolled again since), a
recreated child whose external id another child uses now, a child to delete
that something refers to.

Every undo is one unit of work with one audit event: action `audit.undone`,
`target_type` "audit", `target_id` the undone seq, `child_id` the undone event's
child; `before.state` the state it replaced and `after` = {"undoes": seq,
"action": the undone action, "state": the state restored, "child_ids",
"summary"}; `face_ids` every face whose searchability may have changed, so every
process's index catches up. Undoing that event restores `before.state`: a redo.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, Text, cast, delete, func, or_, select
from sqlalchemy.orm import Session

from childface.db.models import (
    Arrival,
    AuditEvent,
    AuditEventChild,
    Base,
    Child,
    ChildRelation,
    ChildStatus,
    DuplicateDismissal,
    Face,
    RemovedFace,
    ReviewItem,
    Sighting,
    WebhookDelivery,
)
from childface.db.session import Actor, Database
from childface.services.erasure import ERASURE_ACTION
from childface.services.errors import Conflict, Forbidden, NotFound
from childface.services.removed_faces import (
    PURGE_ACTION,
    restore_face,
    row_from_json,
    row_to_json,
    stash_face,
)

log = logging.getLogger(__name__)

#: the audit action of every undo (and redo)
UNDO_ACTION = "audit.undone"
#: undoable actions and the permission (`api.deps`) an undo of each needs
UNDOABLE: dict[str, str] = {
    "child.merged": "write",
    "child.archived": "write",
    "child.unarchived": "write",
    "face.reassigned": "write",
    "face.rejected": "write",
    "face.removed": "write",
    "review.resolved": "write",
    "face.auto_template": "write",
    UNDO_ACTION: "write",
}
#: later events that concern the same children but change nothing an undo restores
CHILD_NEUTRAL = frozenset({"child.updated", "duplicates.dismissed", PURGE_ACTION, "settings.changed"})
CHILD_NEUTRAL_PREFIXES = ("child.relation_", "model.")
#: later events that list the same faces but change nothing an undo restores (other models' embeddings)
FACE_NEUTRAL_PREFIXES = ("model.",)
#: later changes to the same children or faces beyond which an undo is refused unchecked
MAX_LATER_CHANGES = 5000
#: faces checked per query when looking for later events that list them
_FACE_CHUNK = 50
_EVENT_CHUNK = 2000
_ID_CHUNK = 500
#: later events a listing's undo hints read at most
_HINT_ROWS = 5000

IRREVERSIBLE_MESSAGE = (
    "erasure cannot be undone: it is irreversible by design (the child's photos, faces and data are "
    "deleted for good)"
)


@dataclass
class State:
    """Fields of rows, as JSON values: `None` for a child or face that does not exist (a face: removed)."""

    children: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    faces: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    review_items: dict[int, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "children": {str(k): v for k, v in sorted(self.children.items())},
            "faces": {str(k): v for k, v in sorted(self.faces.items())},
            "review_items": {str(k): v for k, v in sorted(self.review_items.items())},
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> State:
        return cls(
            children={int(k): v for k, v in (value.get("children") or {}).items()},
            faces={int(k): v for k, v in (value.get("faces") or {}).items()},
            review_items={int(k): v for k, v in (value.get("review_items") or {}).items()},
        )


@dataclass(frozen=True)
class UndoResult:
    """An undo that committed."""

    #: the undo's own audit event
    seq: int
    undone_seq: int
    #: the undone event's action (`audit.undone` for a redo)
    action: str
    summary: str
    face_ids: list[int]
    child_ids: list[int]

    @property
    def redo(self) -> bool:
        return self.action == UNDO_ACTION


class UndoRefused(Conflict):
    """409: the change cannot be undone; `details` names the later change or the undo, when there is one."""

    def __init__(self, message: str, *, code: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code)
        #: the API's `error.details`: [{"seq", "action", "at", "actor"}] of the change it names
        self.details = None if details is None else [details]


def undo(*, db: Database, actor: Actor, seq: int, permissions: Iterable[str] | None = None) -> UndoResult:
    """Undo audit event `seq` (see the module docstring); the caller runs the gallery's catch-up.

    `permissions`: the caller's (`api.deps`), checked against `UNDOABLE`; None: not checked (trusted callers).
    NotFound (404) for an unknown seq; Forbidden (403); UndoRefused (409) with the reason.
    """
    with db.unit_of_work(actor) as uow:
        session = uow.session
        event = session.get(AuditEvent, seq)
        if event is None:
            raise NotFound(f"no audit event with seq {seq}")
        _check_undoable(event, permissions)
        _check_not_undone(session, event)
        target = _target_state(event)
        _lock(session, target)
        children, faces = _scope(session, event, target)
        later = _later_change(session, event, children, faces)
        if later is not None:
            raise _touched(event, later)
        current = _capture(session, target)
        _check_restorable(session, event, target, current)
        moved_children = _children_with_new_status(target, current)
        face_ids = sorted(faces | set(_faces_of(session, moved_children)))
        summary = _summary(event, target)
        undo_event = uow.audit(
            UNDO_ACTION,
            target_type="audit",
            target_id=event.seq,
            child_id=event.child_id,
            before={"state": current.to_json()},
            after={
                "undoes": event.seq,
                "action": event.action,
                "state": target.to_json(),
                "child_ids": sorted(children),
                "summary": summary,
            },
            face_ids=face_ids,
            child_ids=children,
        )
        _apply(session, target, current, undo_event.seq)
        undo_seq = undo_event.seq
    log.info("audit event %d (%s) undone by %s as %d", seq, event.action, actor, undo_seq)
    return UndoResult(undo_seq, seq, event.action, summary, face_ids, sorted(children))


# ---- may it be undone at all ------------------------------------------------------------------------


def _check_undoable(event: AuditEvent, permissions: Iterable[str] | None) -> None:
    if event.action == ERASURE_ACTION:
        raise UndoRefused(f"change {event.seq}: {IRREVERSIBLE_MESSAGE}", code="irreversible")
    if event.action not in UNDOABLE:
        raise UndoRefused(f"change {event.seq} ({event.action}) cannot be undone", code="not_undoable")
    if permissions is not None:
        original = (event.after or {}).get("action") if event.action == UNDO_ACTION else event.action
        needed = UNDOABLE.get(str(original), "write")
        if needed not in set(permissions):
            raise Forbidden(f"undoing this change needs the {needed!r} permission", code="forbidden")


def _undo_of(session: Session, seq: int) -> AuditEvent | None:
    return session.scalar(
        select(AuditEvent)
        .where(AuditEvent.target_type == "audit", AuditEvent.target_id == str(seq),
               AuditEvent.action == UNDO_ACTION)
        .order_by(AuditEvent.seq)
        .limit(1)
    )


def _check_not_undone(session: Session, event: AuditEvent) -> None:
    undone_by = _undo_of(session, event.seq)
    if undone_by is None:
        return
    message = f"change {event.seq} was already undone by change {undone_by.seq} ({_when_who(undone_by)})"
    redone_by = _undo_of(session, undone_by.seq)
    if redone_by is not None:
        message += f"; change {redone_by.seq} redid it: undo change {redone_by.seq} instead"
    raise UndoRefused(message, code="already_undone", details=_describe(undone_by))


def _when_who(event: AuditEvent) -> str:
    return f"{event.at.strftime('%Y-%m-%d %H:%M')} UTC by {event.actor}"


def _describe(event: AuditEvent) -> dict[str, Any]:
    return {"seq": event.seq, "action": event.action, "at": event.at.isoformat(), "actor": event.actor}


# ---- what the undo restores --------------------------------------------------------------------------


def _target_state(event: AuditEvent) -> State:
    """The state the undo restores, from the event alone."""
    before, after = event.before or {}, event.after or {}
    state = State()
    action = event.action
    if action == UNDO_ACTION:
        return State.from_json(before.get("state") or {})
    if action == "child.merged":
        source = int(str(event.target_id))
        state.children[source] = {
            "status": before.get("status"),
            "merged_into_id": before.get("merged_into_id"),
            "archived_at": _archived_at(before, event),
        }
        for face_id in after.get("moved_face_ids") or ():
            state.faces[int(face_id)] = {"child_id": source}
    elif action in ("child.archived", "child.unarchived"):
        state.children[int(str(event.target_id))] = {
            "status": before.get("status"),
            "archived_at": _archived_at(before, event),
        }
    elif action == "face.reassigned":
        state.faces[int(str(event.target_id))] = {"child_id": before.get("child_id")}
    elif action == "face.rejected":
        state.faces[int(str(event.target_id))] = {"review_state": before.get("review_state")}
    elif action == "face.removed":
        state.faces[int(str(event.target_id))] = {
            "child_id": before.get("child_id"),
            "review_state": before.get("review_state"),
        }
    elif action == "review.resolved":
        (face_id,) = event.face_ids or ()
        state.faces[face_id] = {"child_id": before.get("child_id"), "review_state": before.get("face_state")}
        state.review_items[int(str(event.target_id))] = {
            "status": before.get("status", "open"),
            "resolution": None,
            "resolved_by": None,
            "resolved_at": None,
        }
        if after.get("resolution") == "new_child" and event.child_id is not None:
            state.children[event.child_id] = None
    elif action == "face.auto_template":
        added = int(after["face_id"])
        # a confirmed review face was kept as `rejected` before it became a template; a recognition's
        # face did not exist
        state.faces[added] = {"review_state": "rejected"} if after.get("source") == "review" else None
        for face_id in after.get("retired_face_ids") or ():
            state.faces[int(face_id)] = {"retired_at": None}
    return state


def _archived_at(before: dict[str, Any], event: AuditEvent) -> str | None:
    if before.get("status") != ChildStatus.archived.value:
        return None
    if "archived_at" in before:
        return before["archived_at"]
    # recorded before snapshots carried it: retention then counts from the undone change
    return event.at.isoformat()


def _lock(session: Session, target: State) -> None:
    """Lock the rows the undo writes, children first, each kind in id order (like other writers)."""
    if target.children:
        session.execute(select(Child.id).where(Child.id.in_(sorted(target.children))).order_by(Child.id)
                        .with_for_update())
    if target.faces:
        ids = sorted(target.faces)
        session.execute(select(Face.id).where(Face.id.in_(ids)).order_by(Face.id).with_for_update())
        session.execute(select(RemovedFace.face_id).where(RemovedFace.face_id.in_(ids))
                        .order_by(RemovedFace.face_id).with_for_update())
    if target.review_items:
        session.execute(select(ReviewItem.id).where(ReviewItem.id.in_(sorted(target.review_items)))
                        .order_by(ReviewItem.id).with_for_update())


def _scope(session: Session, event: AuditEvent, target: State) -> tuple[set[int], set[int]]:
    """The children and faces the undone event concerns: later changes to them block the undo."""
    children = set(session.scalars(select(AuditEventChild.child_id).where(AuditEventChild.seq == event.seq)))
    children |= set(target.children)
    children |= {v["child_id"] for v in target.faces.values() if v and isinstance(v.get("child_id"), int)}
    faces = set(target.faces) | set(event.face_ids or ())
    return children, faces


# ---- touched since? ----------------------------------------------------------------------------------


def _child_neutral(action: str) -> bool:
    return action in CHILD_NEUTRAL or action.startswith(CHILD_NEUTRAL_PREFIXES)


def _later_change(
    session: Session, event: AuditEvent, children: set[int], faces: set[int]
) -> AuditEvent | None:
    """The first event after `event` that changed state of these children or faces and still stands
    (module docstring): a later change and its own undo cancel out."""
    seqs: set[int] = set()
    if children:
        seqs.update(session.scalars(_child_events(children).where(AuditEvent.seq > event.seq)))
    if faces:
        seqs.update(_later_face_seqs(session, event.seq, sorted(faces)))
    if len(seqs) > MAX_LATER_CHANGES:
        raise UndoRefused(
            f"change {event.seq} cannot be undone: {len(seqs)} later changes touched the same children or "
            f"faces (more than {MAX_LATER_CHANGES} are not checked)",
            code="changed_since",
        )
    ordered = sorted(seqs)
    rows = [
        row
        for start in range(0, len(ordered), _ID_CHUNK)
        for row in session.execute(
            select(AuditEvent.seq, AuditEvent.action, AuditEvent.after)
            .where(AuditEvent.seq.in_(ordered[start : start + _ID_CHUNK]))
            .order_by(AuditEvent.seq)
        )
    ]
    standing = standing_events([(seq, action, after) for seq, action, after in rows])
    if not standing:
        return None
    actions = {seq: action for seq, action, _ in rows}
    # a reason no undo of later changes can lift comes first: an erasure, then a purge
    final = [s for s in standing if actions[s] == ERASURE_ACTION] or [
        s for s in standing if actions[s] == PURGE_ACTION
    ]
    return session.get(AuditEvent, (final or standing)[0])


def standing_events(events: list[tuple[int, str, dict[str, Any] | None]]) -> list[int]:
    """Of later events (seq, action, after), in seq order: the seqs whose effect still stands.

    An undo and the change it undid, both among them, cancel out (in seq order, each event pairs once):
    a change, its undo and a redo leave the redo standing; with an undo of the redo, nothing.
    """
    present = {seq for seq, _, _ in events}
    paired: set[int] = set()
    for seq, action, after in events:
        if action != UNDO_ACTION:
            continue
        undone = (after or {}).get("undoes")
        if undone in present and undone not in paired and seq not in paired:
            paired.update((undone, seq))
    return [seq for seq, _, _ in events if seq not in paired]


def _child_events(children: Iterable[int]) -> Select:
    """Seqs of events concerning these children that may change what an undo restores (not neutral)."""
    neutral_prefixes = [AuditEvent.action.startswith(p, autoescape=True) for p in CHILD_NEUTRAL_PREFIXES]
    return (
        select(AuditEvent.seq)
        .join(AuditEventChild, AuditEventChild.seq == AuditEvent.seq)
        .where(
            AuditEventChild.child_id.in_(sorted(children)),
            AuditEvent.action.not_in(sorted(CHILD_NEUTRAL)),
            ~or_(*neutral_prefixes),
        )
    )


def _later_face_seqs(session: Session, after_seq: int, faces: Sequence[int]) -> set[int]:
    """Seqs of the events after `after_seq` whose `face_ids` list one of `faces` (not neutral ones).

    `face_ids` is a JSON list on both back ends: the SQL condition (the id as a whole list element
    of its text) finds a superset, decided exactly here, a chunk of events at a time.
    """
    wanted = set(faces)
    found: set[int] = set()
    text = cast(AuditEvent.face_ids, Text)
    for start in range(0, len(faces), _FACE_CHUNK):
        chunk = faces[start : start + _FACE_CHUNK]
        mentions = or_(*(text.like(pattern) for f in chunk for pattern in _element_patterns(f)))
        last = after_seq
        while True:
            rows = session.execute(
                select(AuditEvent.seq, AuditEvent.action, AuditEvent.face_ids)
                .where(AuditEvent.seq > last, AuditEvent.face_ids.is_not(None), mentions)
                .order_by(AuditEvent.seq)
                .limit(_EVENT_CHUNK)
            ).all()
            found.update(
                seq for seq, action, ids in rows
                if not action.startswith(FACE_NEUTRAL_PREFIXES) and wanted.intersection(ids or ())
            )
            if len(rows) < _EVENT_CHUNK or len(found) > MAX_LATER_CHANGES:
                break
            last = rows[-1].seq
    return found


def _element_patterns(face_id: int) -> tuple[str, ...]:
    """LIKE patterns for `face_id` as an element of a JSON list written with "," or ", " between
    elements (json.dumps writes ", "): the only, first, last or a middle element."""
    n = int(face_id)
    return (f"[{n}]", f"[{n},%", f"%,{n}]", f"%, {n}]", f"%,{n},%", f"%, {n},%")


def _touched(event: AuditEvent, later: AuditEvent) -> UndoRefused:
    details = _describe(later)
    if later.action == ERASURE_ACTION:
        return UndoRefused(
            f"change {event.seq} cannot be undone: change {later.seq} erased the child ({_when_who(later)}); "
            + IRREVERSIBLE_MESSAGE,
            code="irreversible",
            details=details,
        )
    if later.action == PURGE_ACTION:
        return UndoRefused(
            f"change {event.seq} cannot be undone: the removed face was purged on "
            f"{later.at.strftime('%Y-%m-%d')} (removed faces are kept "
            f"{(later.after or {}).get('keep_days', '?')} days)",
            code="purged",
            details=details,
        )
    return UndoRefused(
        f"change {event.seq} ({event.action}) cannot be undone: a later change touched the same "
        f"child or face: change {later.seq} ({later.action}, {_when_who(later)}); undo that first",
        code="changed_since",
        details=details,
    )


# ---- the state now, and whether the target can be restored -------------------------------------------

#: what a face's state is, besides its presence
_FACE_STATE = ("child_id", "review_state", "retired_at")


def _capture(session: Session, target: State) -> State:
    """The same fields of the same rows as they are now (a row the undo deletes: all its fields)."""
    current = State()
    for child_id, wanted in target.children.items():
        row = session.get(Child, child_id)
        current.children[child_id] = None if row is None else _fields(row, wanted)
    for face_id, wanted in target.faces.items():
        row = session.get(Face, face_id)
        if row is None:
            current.faces[face_id] = None
        elif wanted is None:  # to be removed: what a redo sets again after restoring it
            current.faces[face_id] = _fields(row, _FACE_STATE)
        else:
            current.faces[face_id] = _fields(row, wanted)
    for item_id, wanted in target.review_items.items():
        item = session.get(ReviewItem, item_id)
        if item is None:
            raise UndoRefused(f"review item {item_id} no longer exists", code="changed_since")
        current.review_items[item_id] = _fields(item, wanted)
    return current


def _fields(row: Base, wanted: Iterable[str] | None) -> dict[str, Any]:
    values = row_to_json(row)
    values.pop("updated_at", None)  # an undo is an update: the column records it
    return values if wanted is None else {k: values[k] for k in wanted}


def _check_restorable(session: Session, event: AuditEvent, target: State, current: State) -> None:
    for face_id, wanted in target.faces.items():
        if wanted is None or current.faces[face_id] is not None:
            continue
        if session.get(RemovedFace, face_id) is None:
            raise UndoRefused(_not_kept(session, event, face_id), code="purged")
    for child_id, wanted in target.children.items():
        if wanted is None or current.children[child_id] is not None:
            continue
        if "external_id" not in wanted:
            raise UndoRefused(f"child {child_id} no longer exists", code="changed_since")
        taken = session.scalar(select(Child.id).where(Child.external_id == wanted["external_id"]))
        if taken is not None:
            raise UndoRefused(
                f"child {child_id} cannot come back: child {taken} has its external id now",
                code="changed_since",
            )


def _not_kept(session: Session, event: AuditEvent, face_id: int) -> str:
    removal = session.scalar(
        select(AuditEvent)
        .where(AuditEvent.action == "face.removed", AuditEvent.target_type == "face",
               AuditEvent.target_id == str(face_id))
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    )
    if removal is not None and (removal.after or {}).get("kept_until") is None:
        return (f"face {face_id} cannot come back: it was deleted for good when it was removed "
                f"(change {removal.seq}: removed faces were not kept)")
    return f"face {face_id} cannot come back: it is no longer kept"


def _children_with_new_status(target: State, current: State) -> list[int]:
    changed = []
    for child_id, wanted in target.children.items():
        now = current.children[child_id]
        if wanted is None or now is None or wanted.get("status", now.get("status")) != now.get("status"):
            changed.append(child_id)
    return changed


def _faces_of(session: Session, child_ids: Sequence[int]) -> list[int]:
    if not child_ids:
        return []
    return list(session.scalars(select(Face.id).where(Face.child_id.in_(child_ids))))


# ---- applying it ---------------------------------------------------------------------------------------


def _apply(session: Session, target: State, current: State, seq: int) -> None:
    """Write `target`: children created first, then fields, faces, review items; children deleted last."""
    for child_id, wanted in target.children.items():
        if wanted is not None and current.children[child_id] is None:
            row = row_from_json(Child, {**wanted, "id": child_id})
            session.add(row)
    session.flush()
    for child_id, wanted in target.children.items():
        if wanted is not None and current.children[child_id] is not None:
            _set(session.get(Child, child_id), wanted)
    for face_id, wanted in target.faces.items():
        face = session.get(Face, face_id)
        if wanted is None:
            if face is not None:
                stash_face(session, face, seq=seq)
            continue
        if face is None:
            try:
                face = restore_face(session, face_id)
            except Conflict as exc:
                raise UndoRefused(exc.message, code=exc.code) from None
        _set(face, wanted)
    for item_id, wanted in target.review_items.items():
        _set(session.get(ReviewItem, item_id), wanted)
    session.flush()
    for child_id, wanted in target.children.items():
        if wanted is None and current.children[child_id] is not None:
            _delete_child(session, child_id)
    session.flush()


def _set(row: Base | None, values: dict[str, Any]) -> None:
    assert row is not None  # locked and checked above
    decoded = row_from_json(type(row), values)
    for key in values:
        setattr(row, key, getattr(decoded, key))


def _delete_child(session: Session, child_id: int) -> None:
    """Delete a child a review resolution created, unless anything refers to it now."""
    uses = {
        "face(s)": select(func.count()).where(Face.child_id == child_id),
        "removed face(s)": select(func.count()).where(RemovedFace.child_id == child_id),
        "sighting(s)": select(func.count()).where(Sighting.child_id == child_id),
        "arrival(s)": select(func.count()).where(Arrival.child_id == child_id),
        "webhook event(s)": select(func.count()).where(WebhookDelivery.child_id == child_id),
        "sibling or twin mark(s)": select(func.count()).where(
            or_(ChildRelation.child_a_id == child_id, ChildRelation.child_b_id == child_id)
        ),
        "duplicate dismissal(s)": select(func.count()).where(
            or_(DuplicateDismissal.child_a_id == child_id, DuplicateDismissal.child_b_id == child_id)
        ),
        "merged child(ren)": select(func.count()).where(Child.merged_into_id == child_id),
    }
    found = [f"{n} {what}" for what, query in uses.items() if (n := session.scalar(query) or 0)]
    if found:
        raise UndoRefused(
            f"child {child_id}, created by this review, cannot be deleted: "
            f"{', '.join(found)} refer to it now",
            code="changed_since",
        )
    session.execute(delete(Child).where(Child.id == child_id))


# ---- words ---------------------------------------------------------------------------------------------


def _summary(event: AuditEvent, target: State) -> str:
    action = event.action
    if action == UNDO_ACTION:
        return f"change {event.seq} (an undo of change {(event.after or {}).get('undoes')}) undone: redone"
    if action == "child.merged":
        return (f"child {event.target_id} separated again from child {event.child_id}, with its "
                f"{len(target.faces)} face(s)")
    if action in ("child.archived", "child.unarchived"):
        status = (next(iter(target.children.values())) or {}).get("status")
        return f"child {event.target_id} is {status} again"
    if action == "face.reassigned":
        return f"face {event.target_id} is back with child {(event.before or {}).get('child_id')}"
    if action == "face.rejected":
        return f"face {event.target_id} is {(event.before or {}).get('review_state')} again"
    if action == "face.removed":
        return f"face {event.target_id} restored"
    if action == "review.resolved":
        created = [c for c, v in target.children.items() if v is None]
        extra = f"; child {created[0]}, created by it, deleted" if created else ""
        return f"review {event.target_id} is open again{extra}"
    retired = sum(1 for v in target.faces.values() if v is not None and "retired_at" in v)
    added = (event.after or {}).get("face_id")
    return f"automatic template {added} taken out; {retired} retired face(s) in use again"


# ---- listings: which rows offer an undo ----------------------------------------------------------------


def undoable(db: Database, events: Sequence[AuditEvent]) -> dict[int, bool]:
    """seq -> whether an undo would likely be accepted, for a page of events (a few queries per page).

    A hint for listings: undoable actions not undone yet, whose removed face is still kept, with no
    later standing non-neutral event concerning their children. Later events that only list the
    same faces are not looked for here; the undo itself says so when it refuses.
    """
    candidates = {e.seq: e for e in events if e.action in UNDOABLE}
    if not candidates:
        return {}
    seqs = sorted(candidates)
    with db.session() as session:
        undone = {
            int(t)
            for t in session.scalars(
                select(AuditEvent.target_id).where(
                    AuditEvent.target_type == "audit",
                    AuditEvent.target_id.in_([str(s) for s in seqs]),
                    AuditEvent.action == UNDO_ACTION,
                )
            )
            if t and t.isdigit()
        }
        concerned: dict[int, set[int]] = {}
        for seq, child_id in session.execute(
            select(AuditEventChild.seq, AuditEventChild.child_id).where(AuditEventChild.seq.in_(seqs))
        ):
            concerned.setdefault(seq, set()).add(child_id)
        children = sorted({c for cs in concerned.values() for c in cs})
        later: dict[int, list[tuple[int, str, dict[str, Any] | None]]] = {}
        if children:
            rows = session.execute(
                _child_events(children)
                .add_columns(AuditEventChild.child_id, AuditEvent.action, AuditEvent.after)
                .where(AuditEvent.seq > seqs[0])
                .order_by(AuditEvent.seq)
                .limit(_HINT_ROWS + 1)
            ).all()
            if len(rows) > _HINT_ROWS:
                return {seq: False for seq in seqs}  # too busy to tell cheaply: the undo decides
            for seq, child_id, action, after in rows:
                later.setdefault(child_id, []).append((seq, action, after))
        removals = [int(str(e.target_id)) for e in candidates.values()
                    if e.action == "face.removed" and str(e.target_id).isdigit()]
        kept = set(session.scalars(select(RemovedFace.face_id).where(RemovedFace.face_id.in_(removals))))
        present = set(session.scalars(select(Face.id).where(Face.id.in_(removals))))
    hints: dict[int, bool] = {}
    for seq, event in candidates.items():
        since = {e[0]: e for c in concerned.get(seq, ()) for e in later.get(c, ()) if e[0] > seq}
        ok = seq not in undone and not standing_events([since[k] for k in sorted(since)])
        if ok and event.action == "face.removed":
            face_id = int(str(event.target_id))
            ok = face_id in kept and face_id not in present
        hints[seq] = ok
    return hints
