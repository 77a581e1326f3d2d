"""Merge child B into child A: the fix for a child enrolled twice.

All of B's faces move to A, B is archived with `merged_into_id = A` (so old
references to B can be followed), in one unit of work whose audit event lists
the moved faces. The event's `target_id` is B and its `child_id` is A, so both
children's histories show it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from childface.db.models import Child, ChildStatus, Face, utcnow
from childface.db.session import Actor, Database
from childface.services.children import get_child_row, snapshot
from childface.services.errors import Conflict, InvalidInput


@dataclass(frozen=True)
class MergeResult:
    target: Child
    source: Child
    moved_face_ids: list[int]


def merge_children(*, db: Database, actor: Actor, source_id: int, target_id: int) -> MergeResult:
    if source_id == target_id:
        raise InvalidInput("a child cannot be merged into itself")
    with db.unit_of_work(actor) as uow:
        session = uow.session
        # lock both rows in id order, so two opposite merges cannot deadlock
        rows = {cid: get_child_row(session, cid, lock=True) for cid in sorted((source_id, target_id))}
        source, target = rows[source_id], rows[target_id]
        if source.merged_into_id is not None:
            raise Conflict(f"child {source_id} was already merged into child {source.merged_into_id}")
        if target.status != ChildStatus.active:
            raise Conflict(f"child {target_id} is archived; merge into an active child")
        before = snapshot(source)
        faces = list(session.scalars(select(Face).where(Face.child_id == source_id).order_by(Face.id)))
        for face in faces:
            face.child_id = target_id
        if source.status != ChildStatus.archived:
            source.archived_at = utcnow()  # an archived source keeps its own archive time
        source.status = ChildStatus.archived
        source.merged_into_id = target_id
        session.flush()
        moved = [face.id for face in faces]
        uow.audit(
            "child.merged",
            target_type="child",
            target_id=source_id,
            child_id=target_id,
            before=before,
            after={**snapshot(source), "moved_face_ids": moved},
            face_ids=moved,
        )
    return MergeResult(target=target, source=source, moved_face_ids=moved)
