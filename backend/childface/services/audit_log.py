"""Reading the audit trail: filtered, paginated queries, per-child history and CSV export.

Erasure redacts earlier events in place (`services.erasure`), so every
listing and export shows the redacted values. A child erased because it was
merged into the erased child finds the erasure event in its history too.

The CSV is meant for spreadsheets, which execute a cell that starts with
`=`, `+`, `-`, `@`, TAB or CR as a formula (CSV injection: a child named
`=HYPERLINK(...)` would run when staff open the export). Such cells get a
leading `'`, which spreadsheets show as text and do not evaluate.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import BigInteger, Text, and_, cast, func, or_, select
from sqlalchemy.orm import Session

from childface.db.models import AuditEvent
from childface.db.session import Database
from childface.services.children import MAX_PAGE, Page
from childface.services.erasure import ERASURE_ACTION

CSV_COLUMNS = (
    "seq",
    "at",
    "actor",
    "action",
    "target_type",
    "target_id",
    "child_id",
    "before",
    "after",
    "face_ids",
)
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_EXPORT_CHUNK = 1000


def neutralise_cell(value: str) -> str:
    """Make a CSV cell inert in spreadsheets (see the module docstring)."""
    return "'" + value if value.startswith(_FORMULA_PREFIXES) else value


def _erasures_of(session: Session, child_id: int | None) -> list[int]:
    """Seqs of the erasure events that list this child among the erased ones."""
    if child_id is None:
        return []
    rows = session.execute(
        select(AuditEvent.seq, AuditEvent.after).where(
            AuditEvent.action == ERASURE_ACTION, cast(AuditEvent.after, Text).contains(str(child_id))
        )
    )
    return [seq for seq, after in rows if child_id in (after or {}).get("child_ids", [])]


def _conditions(
    *,
    child_id: int | None,
    erasures: list[int],
    actor: str | None,
    action: str | None,
    target_type: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list:
    conditions = []
    if child_id is not None:
        # merges name the merged-away child as target and a reassigned face's event names its new
        # child: the child a face or a merge took something from sees the event in its history too
        conditions.append(
            or_(
                AuditEvent.child_id == child_id,
                and_(AuditEvent.target_type == "child", AuditEvent.target_id == str(child_id)),
                and_(
                    AuditEvent.action == "face.reassigned",
                    # BIGINT, not as_integer()'s INTEGER: ids are 64-bit on PostgreSQL
                    cast(AuditEvent.before["child_id"].as_string(), BigInteger) == child_id,
                ),
                AuditEvent.seq.in_(erasures),
            )
        )
    if actor:
        conditions.append(AuditEvent.actor == actor)
    if action:
        if action.endswith("*"):
            conditions.append(AuditEvent.action.startswith(action[:-1], autoescape=True))
        else:
            conditions.append(AuditEvent.action == action)
    if target_type:
        conditions.append(AuditEvent.target_type == target_type)
    if since is not None:
        conditions.append(AuditEvent.at >= since)
    if until is not None:
        conditions.append(AuditEvent.at < until)
    return conditions


def query_events(
    *,
    db: Database,
    child_id: int | None = None,
    actor: str | None = None,
    action: str | None = None,
    target_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page:
    """Events matching every given filter, newest first. `action` may end in `*` (prefix)."""
    limit = max(1, min(limit, MAX_PAGE))
    offset = max(0, offset)
    with db.session() as session:
        conditions = _conditions(
            child_id=child_id,
            erasures=_erasures_of(session, child_id),
            actor=actor,
            action=action,
            target_type=target_type,
            since=since,
            until=until,
        )
        total = session.scalar(select(func.count(AuditEvent.seq)).where(*conditions)) or 0
        events = list(
            session.scalars(
                select(AuditEvent)
                .where(*conditions)
                .order_by(AuditEvent.seq.desc())
                .limit(limit)
                .offset(offset)
            )
        )
    return Page(items=events, total=int(total), limit=limit, offset=offset)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return neutralise_cell(json.dumps(value, sort_keys=True, ensure_ascii=False))
    return neutralise_cell(str(value))


def export_csv(
    *,
    db: Database,
    child_id: int | None = None,
    actor: str | None = None,
    action: str | None = None,
    target_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[str]:
    """CSV text of every matching event, oldest first, in chunks (for a streaming response)."""
    with db.session() as session:
        erasures = _erasures_of(session, child_id)
    conditions = _conditions(
        child_id=child_id,
        erasures=erasures,
        actor=actor,
        action=action,
        target_type=target_type,
        since=since,
        until=until,
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    last_seq = 0
    while True:
        with db.session() as session:
            events = list(
                session.scalars(
                    select(AuditEvent)
                    .where(*conditions, AuditEvent.seq > last_seq)
                    .order_by(AuditEvent.seq)
                    .limit(_EXPORT_CHUNK)
                )
            )
        for event in events:
            writer.writerow([_cell(getattr(event, column)) for column in CSV_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(events) < _EXPORT_CHUNK:
            return
        last_seq = events[-1].seq
