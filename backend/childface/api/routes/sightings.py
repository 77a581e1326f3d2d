"""Video: cameras (state, recent events, a frame on demand), sightings with their crops, attendance.

Reading needs `read`; a camera's frame (a whole scene: other children, bystanders) needs `write`, like
an original photo.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from childface.api.deps import PathId, QueryId, Reader, RuntimeDep, Writer
from childface.api.schemas_video import (
    AbsentChild,
    ArrivedChild,
    AttendanceResponse,
    CameraEvent,
    CameraPublic,
    FrameRequested,
    GroupAttendance,
    SightingPage,
    SightingPublic,
)
from childface.db.models import SightingDecision
from childface.services import attendance as attendance_service
from childface.services import cameras, sightings

router = APIRouter(tags=["video"])

CameraName = Annotated[str, Path(min_length=1, max_length=100)]
_PRIVATE = {"Cache-Control": "private, no-store"}  # biometric data: never cached by shared caches
_JPEG = {200: {"content": {"image/jpeg": {}}, "description": "JPEG image"}}


@router.get("/cameras", response_model=list[CameraPublic])
def list_cameras(_: Reader, runtime: RuntimeDep) -> list[CameraPublic]:
    """Every video source `childface watch` reported, with its state and last few events."""
    return [
        CameraPublic(
            name=view.status.name,
            uri_kind=view.status.uri_kind,
            state=view.status.state.value,
            fps=view.status.fps,
            faces_per_s=view.status.faces_per_s,
            last_error=view.status.last_error,
            updated_at=view.status.updated_at,
            recent_events=[CameraEvent(**vars(event)) for event in view.recent_events],
        )
        for view in cameras.list_cameras(runtime.db)
    ]


@router.post("/cameras/{name}/frame-request", response_model=FrameRequested, status_code=202)
def request_frame(name: CameraName, _: Writer, runtime: RuntimeDep) -> FrameRequested:
    """Ask the camera's watcher for its next annotated frame; fetch it with GET /cameras/{name}/frame
    within a minute (the watcher delivers it with its next heartbeat)."""
    return FrameRequested(requested_at=cameras.request_frame(runtime.db, name))


@router.get("/cameras/{name}/frame", response_class=Response, responses=_JPEG)
def get_frame(name: CameraName, _: Writer, runtime: RuntimeDep) -> Response:
    """The requested frame (JPEG), served once: 404 `frame_not_ready` while the watcher has not
    delivered it yet, `no_frame` when none was requested (or it was served or expired)."""
    return Response(cameras.take_frame(runtime.db, name), media_type="image/jpeg", headers=_PRIVATE)


@router.get("/sightings", response_model=SightingPage)
def list_sightings(
    _: Reader,
    runtime: RuntimeDep,
    source: Annotated[str | None, Query(max_length=100)] = None,
    child_id: QueryId = None,
    day: Annotated[date | None, Query(alias="date", description="Local day (attendance_timezone), "
                                                                 "YYYY-MM-DD, of the track's start")] = None,
    decision: SightingDecision | None = None,
    limit: Annotated[int, Query(ge=1, le=sightings.MAX_SIGHTINGS_PAGE)] = 50,
    before_id: QueryId = None,
) -> SightingPage:
    """Tracks seen by the cameras, newest first; page with `before_id` = the last page's `next_before_id`."""
    items, next_before = sightings.list_sightings(
        runtime.db, runtime.settings, source=source, child_id=child_id, day=day,
        decision=decision.value if decision else None, limit=limit, before_id=before_id,
    )
    return SightingPage(
        items=[
            SightingPublic(
                id=v.sighting.id, source=v.sighting.source, track_id=v.sighting.track_id,
                child_id=v.sighting.child_id, child_name=v.child_name, decision=v.sighting.decision.value,
                score=v.sighting.score, first_seen=v.sighting.first_seen, last_seen=v.sighting.last_seen,
                frames=v.sighting.frames, has_crop=v.sighting.best_crop_path is not None,
                final=v.sighting.final,
            )
            for v in items
        ],
        next_before_id=next_before,
    )


@router.get("/sightings/{sighting_id}/crop", response_class=Response, responses=_JPEG)
def sighting_crop(sighting_id: PathId, _: Reader, runtime: RuntimeDep) -> Response:
    """The best face crop of a matched or reviewed track (404 `no_crop` for unknown people, erased
    children and tracks still running)."""
    return Response(sightings.read_crop(runtime.db, runtime.media, sighting_id), media_type="image/jpeg",
                    headers=_PRIVATE)


@router.get("/attendance", response_model=AttendanceResponse)
def attendance(
    _: Reader,
    runtime: RuntimeDep,
    day: Annotated[date | None, Query(alias="date", description="YYYY-MM-DD; default: today in "
                                                                 "attendance_timezone")] = None,
    group: Annotated[str | None, Query(max_length=100, description='A group name, or "(no group)"')] = None,
) -> AttendanceResponse:
    """Who arrived (first confident match of the day at any camera) and who did not, per group; active
    children only."""
    settings = runtime.settings
    found_day, groups = attendance_service.attendance(runtime.db, settings, day=day, group=group)
    return AttendanceResponse(
        date=found_day,
        timezone=settings.attendance_timezone,
        groups=[
            GroupAttendance(
                group=g.group,
                arrived=[
                    ArrivedChild(child_id=a.child_id, external_id=a.external_id, name=a.name,
                                 arrived_at=a.arrived_at, source=a.source)  # type: ignore[arg-type]
                    for a in g.arrived
                ],
                absent=[AbsentChild(child_id=a.child_id, external_id=a.external_id, name=a.name)
                        for a in g.absent],
            )
            for g in groups
        ],
    )
