"""Reading the audit trail: filtered, paginated queries, per-child history and CSV export.

Erasure redacts earlier events in place (`services.erasure`), so every
listing and export shows the redacted values.

A child's history is every event recorded under it in `audit_event_children`
(one indexed lookup): each unit of work records there every child its event
concerns — the child it names, a merge's source, a reassigned face's old
owner, the children of an import batch, and every child an erasure removed
(so an erased child's history still shows its tombstone).

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

from sqlalchemy import func, select

from childface.db.models import AuditEvent, AuditEventChild
from childface.db.session import Database
from childface.services.children import MAX_PAGE, Page

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


def _conditions(
    *,
    child_id: int | None,
    actor: str | None,
    action: str | None,
    target_type: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list:
    conditions = []
    if child_id is not None:
        conditions.append(
            AuditEvent.seq.in_(select(AuditEventChild.seq).where(AuditEventChild.child_id == child_id))
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
    conditions = _conditions(
        child_id=child_id,
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
