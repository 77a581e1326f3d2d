"""Request/response schemas of the video routes: cameras, sightings, attendance."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

Decision = Literal["match", "review", "unknown"]
EventKind = Literal["arrival", "sighting", "review", "unknown_person"]


class CameraEvent(BaseModel):
    kind: EventKind = Field(description="arrival (a track that recorded the day's arrival), sighting, "
                                        "review or unknown_person")
    child_id: int | None
    child_name: str | None
    decision: Decision
    score: float | None
    at: datetime = Field(description="When the track was last seen")


class CameraPublic(BaseModel):
    name: str
    uri_kind: Literal["file", "webcam", "stream"]
    state: Literal["starting", "running", "reconnecting", "stopped", "error"]
    fps: float | None = Field(description="Frames per second the watcher processes")
    faces_per_s: float | None
    last_error: str | None
    updated_at: datetime = Field(description="The watcher's last heartbeat")
    recent_events: list[CameraEvent] = Field(description="The source's last tracks, newest first")


class FrameRequested(BaseModel):
    requested_at: datetime


class SightingPublic(BaseModel):
    id: int
    source: str
    track_id: str
    child_id: int | None = Field(description="The matched child, or the leading candidate of a review; "
                                             "null for unknown people and after the child's erasure")
    child_name: str | None
    decision: Decision
    score: float | None
    first_seen: datetime
    last_seen: datetime
    frames: int
    has_crop: bool = Field(description="GET /sightings/{id}/crop serves its best face crop")
    final: bool = Field(description="The track ended; until then its decision may change")


class SightingPage(BaseModel):
    items: list[SightingPublic]
    next_before_id: int | None = Field(description="Pass as before_id for the next (older) page; null on "
                                                   "the last page")


class ArrivedChild(BaseModel):
    child_id: int
    external_id: str
    name: str
    arrived_at: datetime
    source: str


class AbsentChild(BaseModel):
    child_id: int
    external_id: str
    name: str


class GroupAttendance(BaseModel):
    group: str = Field(description='The group name; "(no group)" for children without one')
    arrived: list[ArrivedChild] = Field(description="In order of arrival")
    absent: list[AbsentChild] = Field(description="By name")


class AttendanceResponse(BaseModel):
    date: date
    timezone: str = Field(description="The time zone whose calendar day this is (attendance_timezone)")
    groups: list[GroupAttendance]
