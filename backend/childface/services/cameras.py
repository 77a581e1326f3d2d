"""Video sources' status for staff: heartbeats, recent events, and one annotated frame on demand.

Each source's watcher (`childface watch`) calls `update_camera_status` as a
heartbeat (state, frames/s, faces/s, the last error). Staff ask for a frame
(`request_frame`); the watcher's next heartbeat returns True and it hands its
latest annotated frame to `store_frame`. That frame is the only one ever
stored: it is dropped once served (`take_frame`) or after FRAME_TTL_S, and a
request nobody fulfilled lapses after as long.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from childface.db.models import Arrival, CameraState, CameraStatus, Child, Sighting
from childface.db.session import Database
from childface.services.errors import InvalidInput, NotFound

#: a stored frame, or a request for one, counts for this long
FRAME_TTL_S = 60.0
URI_KINDS = ("file", "webcam", "stream")
_ERROR_CHARS = 2000


def update_camera_status(
    db: Database,
    name: str,
    *,
    uri_kind: str,
    state: str,
    fps: float | None,
    faces_per_s: float | None,
    error: str | None,
) -> bool:
    """A source's heartbeat; True when staff asked for a frame (then call `store_frame`)."""
    if uri_kind not in URI_KINDS:
        raise InvalidInput(f"uri_kind must be one of {', '.join(URI_KINDS)}")
    camera_state = CameraState(state)
    now = datetime.now(UTC)
    with db.transaction() as session:
        row = session.get(CameraStatus, name, with_for_update=True)
        if row is None:
            try:
                with session.begin_nested():
                    row = CameraStatus(name=name, uri_kind=uri_kind, state=camera_state)
                    session.add(row)
            except IntegrityError:
                row = session.get(CameraStatus, name, with_for_update=True)
                assert row is not None
        row.uri_kind, row.state, row.updated_at = uri_kind, camera_state, now
        row.fps, row.faces_per_s = fps, faces_per_s
        if error is not None or camera_state in (CameraState.running, CameraState.starting):
            row.last_error = None if error is None else error[:_ERROR_CHARS]
        if row.frame_at is not None and (now - row.frame_at).total_seconds() > FRAME_TTL_S:
            row.frame_jpeg, row.frame_at = None, None  # nobody fetched it
        requested = row.frame_requested_at
        if requested is not None and (now - requested).total_seconds() > FRAME_TTL_S:
            row.frame_requested_at = requested = None  # asked long ago, nobody waits any more
        return requested is not None


def _locked_camera(session: Session, name: str) -> CameraStatus:
    """The camera's row, locked for this transaction; NotFound when no watcher ever reported it."""
    row = session.get(CameraStatus, name, with_for_update=True)
    if row is None:
        raise NotFound(f"no camera named {name!r}")
    return row


def store_frame(db: Database, name: str, jpeg: bytes) -> None:
    """Keep the latest annotated frame the staff asked for (until served, at most FRAME_TTL_S)."""
    with db.transaction() as session:
        row = _locked_camera(session, name)
        row.frame_jpeg, row.frame_at, row.frame_requested_at = jpeg, datetime.now(UTC), None


def request_frame(db: Database, name: str) -> datetime:
    """Ask the camera's watcher for its next annotated frame; when the request was made."""
    now = datetime.now(UTC)
    with db.transaction() as session:
        row = _locked_camera(session, name)
        row.frame_requested_at = now
        return now


def take_frame(db: Database, name: str) -> bytes:
    """The stored frame, dropped as it is served; NotFound (with the reason) when there is none."""
    now = datetime.now(UTC)
    with db.transaction() as session:
        row = _locked_camera(session, name)
        stale = row.frame_at is None or (now - row.frame_at).total_seconds() > FRAME_TTL_S
        jpeg = None if stale else row.frame_jpeg
        waiting = row.frame_requested_at is not None
        row.frame_jpeg, row.frame_at = None, None  # served, or stale: dropped either way
    # raised after the commit: raising inside the transaction would roll the stale frame back in
    if jpeg is None:
        raise NotFound(
            "the frame was requested and is not ready yet; try again in a moment"
            if waiting else "no frame: request one first (POST /cameras/{name}/frame-request)",
            code="frame_not_ready" if waiting else "no_frame",
        )
    return jpeg


@dataclass(frozen=True)
class RecentEvent:
    kind: str
    child_id: int | None
    child_name: str | None
    decision: str
    score: float | None
    at: datetime


@dataclass(frozen=True)
class CameraView:
    status: CameraStatus
    recent_events: list[RecentEvent]


def drop_stale_frames(db: Database) -> int:
    """Drop every stored frame older than FRAME_TTL_S (its camera may have stopped); how many."""
    cutoff = datetime.now(UTC) - timedelta(seconds=FRAME_TTL_S)
    stale = CameraStatus.frame_at < cutoff
    with db.session() as session:
        if session.scalar(select(CameraStatus.name).where(stale).limit(1)) is None:
            return 0  # the usual case: no write transaction
    with db.transaction() as session:
        result = session.execute(update(CameraStatus).where(stale).values(frame_jpeg=None, frame_at=None))
        return int(result.rowcount or 0)


def list_cameras(db: Database, *, recent: int = 5) -> list[CameraView]:
    """Every source with its state and its last few events (newest first)."""
    drop_stale_frames(db)
    with db.session() as session:
        cameras = list(session.scalars(select(CameraStatus).order_by(CameraStatus.name)))
        views = []
        for camera in cameras:
            rows = session.execute(
                select(Sighting, Child.display_name, Arrival.id)
                .outerjoin(Child, Child.id == Sighting.child_id)
                .outerjoin(Arrival, Arrival.sighting_id == Sighting.id)
                .where(Sighting.source == camera.name)
                .order_by(Sighting.id.desc())
                .limit(recent)
            ).all()
            events = [
                RecentEvent(
                    kind=_event_kind(s, arrival_id is not None), child_id=s.child_id, child_name=name,
                    decision=s.decision.value, score=s.score, at=s.last_seen,
                )
                for s, name, arrival_id in rows
            ]
            views.append(CameraView(camera, events))
    return views


def _event_kind(sighting: Sighting, arrived: bool) -> str:
    if arrived:
        return "arrival"
    return {"match": "sighting", "review": "review", "unknown": "unknown_person"}[sighting.decision.value]
