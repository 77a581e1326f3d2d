"""The audit trail: filtered and paginated, as JSON or CSV, one child's history, and undo."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from childface.api.deps import Offset, PathId, QueryId, Reader, RuntimeDep, Writer
from childface.api.schemas import AuditEventPublic, AuditPage, ErrorResponse
from childface.api.schemas_undo import UndoPublic
from childface.services import audit_log, undo
from childface.services.children import MAX_PAGE

router = APIRouter(tags=["audit"])

CSV_RESPONSE = {200: {"content": {"text/csv": {}}, "description": "CSV export (formula cells neutralised)"}}


def _page(runtime: RuntimeDep, page: audit_log.Page) -> AuditPage:
    hints = undo.undoable(runtime.db, page.items)
    return AuditPage(
        items=[
            AuditEventPublic.model_validate(e).model_copy(update={"undoable": hints.get(e.seq, False)})
            for e in page.items
        ],
        total=page.total,
        limit=page.limit,
        offset=page.offset,
    )


def _csv(runtime: RuntimeDep, **filters: object) -> StreamingResponse:
    return StreamingResponse(
        audit_log.export_csv(db=runtime.db, **filters),  # type: ignore[arg-type]
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="childface-audit.csv"'},
    )


@router.get("/audit", response_model=AuditPage, responses=CSV_RESPONSE)
def list_audit_events(
    _: Reader,
    runtime: RuntimeDep,
    child_id: QueryId = None,
    actor: Annotated[str | None, Query(max_length=200, description="e.g. user:alice, api_key:door")] = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. child.erased, or child.*")] = None,
    target_type: Annotated[str | None, Query(max_length=32)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Offset = 0,
    format: Literal["json", "csv"] = "json",
) -> AuditPage | StreamingResponse:
    """Audit events, newest first. `format=csv` exports every match (oldest first) as CSV."""
    filters = {
        "child_id": child_id,
        "actor": actor,
        "action": action,
        "target_type": target_type,
        "since": since,
        "until": until,
    }
    if format == "csv":
        return _csv(runtime, **filters)
    return _page(runtime, audit_log.query_events(db=runtime.db, limit=limit, offset=offset, **filters))


@router.get("/audit.csv", response_class=StreamingResponse, responses=CSV_RESPONSE)
def export_audit_csv(
    _: Reader,
    runtime: RuntimeDep,
    child_id: QueryId = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    target_type: Annotated[str | None, Query(max_length=32)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> StreamingResponse:
    """The same as `/audit?format=csv`."""
    return _csv(
        runtime,
        child_id=child_id,
        actor=actor,
        action=action,
        target_type=target_type,
        since=since,
        until=until,
    )


@router.get("/children/{child_id}/history", response_model=AuditPage, tags=["children"])
def child_history(
    child_id: PathId,
    _: Reader,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Offset = 0,
) -> AuditPage:
    """Everything that happened to one child, newest first (also after erasure: the tombstone)."""
    page = audit_log.query_events(db=runtime.db, child_id=child_id, limit=limit, offset=offset)
    return _page(runtime, page)


@router.post(
    "/audit/{seq}/undo",
    response_model=UndoPublic,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)
def undo_change(seq: PathId, principal: Writer, runtime: RuntimeDep) -> UndoPublic:
    """Undo audit event `seq`, restoring exactly the state before it; the undo is itself audited
    (`audit.undone`) and can be undone (a redo).

    Undoable: `child.merged`, `child.archived`, `child.unarchived`, `face.reassigned`,
    `face.rejected`, `face.removed` (while the face is kept), `review.resolved`,
    `face.auto_template`, `audit.undone`. 404 for an unknown seq; 409 with the reason as `code`:
    `irreversible` (an erasure, or a change to a child erased since), `not_undoable`,
    `already_undone`, `changed_since` (a later change touched the same child or face: undo that
    first), `purged` (the removed face is no longer kept), `face_replaced`; `error.details` names
    the later change or the undo (seq, action, at, actor).
    """
    result = undo.undo(db=runtime.db, actor=principal.actor, seq=seq, permissions=principal.permissions)
    runtime.catch_up()
    return UndoPublic(
        seq=result.seq,
        undone_seq=result.undone_seq,
        action=result.action,
        redo=result.redo,
        summary=result.summary,
        face_ids=result.face_ids,
        child_ids=result.child_ids,
    )
