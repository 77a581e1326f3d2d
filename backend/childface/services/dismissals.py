"""'Not the same child': staff dismiss a pair from the duplicates report, for good.

A dismissal is stored once per pair (smaller child id first) in one unit of
work with one `duplicates.dismissed` event that concerns both children, so it
shows in both histories. `services.duplicates` leaves dismissed pairs out.
A dismissal goes with either child (the rows cascade on erasure).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from childface.db.models import DuplicateDismissal
from childface.db.session import Actor, Database
from childface.services.children import get_child_row
from childface.services.errors import Conflict, InvalidInput

DISMISS_ACTION = "duplicates.dismissed"


def dismiss_pair(*, db: Database, actor: Actor, child_a_id: int, child_b_id: int) -> DuplicateDismissal:
    """Store that the two children are different people; NotFound for an unknown child, Conflict when the
    pair was dismissed before, InvalidInput for one child twice."""
    if child_a_id == child_b_id:
        raise InvalidInput("a child cannot be dismissed as a duplicate of itself")
    low, high = sorted((child_a_id, child_b_id))
    try:
        with db.unit_of_work(actor) as uow:
            session = uow.session
            names = {cid: get_child_row(session, cid).display_name for cid in (low, high)}
            known = select(DuplicateDismissal.id).where(
                DuplicateDismissal.child_a_id == low, DuplicateDismissal.child_b_id == high
            )
            if session.scalar(known) is not None:
                raise Conflict(f"{names[low]} and {names[high]} were already marked as different children")
            row = DuplicateDismissal(child_a_id=low, child_b_id=high, dismissed_by=str(actor))
            session.add(row)
            session.flush()
            uow.audit(
                DISMISS_ACTION,
                target_type="child",
                target_id=low,
                child_id=low,
                after={"child_ids": [low, high]},
                child_ids=[low, high],
            )
    except IntegrityError:  # the same pair dismissed at the same moment by someone else
        raise Conflict("this pair was already marked as different children") from None
    return row


def dismissed_pairs(session: Session) -> set[tuple[int, int]]:
    """Every dismissed pair as (smaller id, larger id)."""
    rows = session.execute(select(DuplicateDismissal.child_a_id, DuplicateDismissal.child_b_id))
    return {(a, b) for a, b in rows}
