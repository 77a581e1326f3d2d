"""Attendance: each child's arrival of a day, and who has not arrived, per group.

An arrival is a child's first confident match of a day at any camera
(`services.sightings.record_track` writes it). Days are calendar days in the
time zone `attendance_timezone` (default UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, select

from childface.config import Settings
from childface.db.models import Arrival, Child, ChildStatus, Sighting, as_utc
from childface.db.session import Database

NO_GROUP = "(no group)"


def local_day(moment: datetime, settings: Settings) -> date:
    """The calendar day of `moment` in `attendance_timezone`."""
    return as_utc(moment).astimezone(ZoneInfo(settings.attendance_timezone)).date()


def day_bounds(day: date, settings: Settings) -> tuple[datetime, datetime]:
    """[start, end) of a local day, in UTC."""
    zone = ZoneInfo(settings.attendance_timezone)
    start = datetime.combine(day, datetime.min.time(), zone)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), zone)
    return start.astimezone(UTC), end.astimezone(UTC)



@dataclass(frozen=True)
class Attendee:
    child_id: int
    external_id: str
    name: str
    arrived_at: datetime | None = None
    source: str | None = None


@dataclass
class GroupAttendance:
    group: str
    arrived: list[Attendee] = field(default_factory=list)
    absent: list[Attendee] = field(default_factory=list)



def attendance(db: Database, settings: Settings, *, day: date | None = None,
               group: str | None = None) -> tuple[date, list[GroupAttendance]]:
    """Who arrived on `day` (default: today in `attendance_timezone`) and who did not, per group.

    Active children only; arrivals in arrival order, absent children by name.
    `group` filters by group name (NO_GROUP for children without one).
    """
    day = day or local_day(datetime.now(UTC), settings)
    conditions = [Child.status == ChildStatus.active]
    if group is not None:
        conditions.append(Child.group_name.is_(None) if group == NO_GROUP else Child.group_name == group)
    with db.session() as session:
        rows = session.execute(
            select(Child.id, Child.external_id, Child.display_name, Child.group_name,
                   Arrival.arrived_at, Arrival.source)
            .outerjoin(Arrival, and_(Arrival.child_id == Child.id, Arrival.day == day))
            .where(*conditions)
        ).all()
    groups: dict[str, GroupAttendance] = {}
    for child_id, external_id, name, group_name, arrived_at, source in rows:
        entry = groups.setdefault(group_name or NO_GROUP, GroupAttendance(group_name or NO_GROUP))
        attendee = Attendee(child_id, external_id, name, arrived_at, source)
        (entry.arrived if arrived_at is not None else entry.absent).append(attendee)
    for entry in groups.values():
        entry.arrived.sort(key=lambda a: (a.arrived_at, a.child_id))
        entry.absent.sort(key=lambda a: (a.name.casefold(), a.child_id))
    ordered = sorted(groups.values(), key=lambda g: (g.group == NO_GROUP, g.group.casefold()))
    return day, ordered


def count_sightings(db: Database, *, day_start: datetime, day_end: datetime) -> dict[str, int]:
    """Sightings per decision that started in [day_start, day_end) (kept after erasure)."""
    with db.session() as session:
        rows = session.execute(
            select(Sighting.decision, func.count(Sighting.id))
            .where(Sighting.first_seen >= day_start, Sighting.first_seen < day_end)
            .group_by(Sighting.decision)
        ).all()
    return {decision.value: int(n) for decision, n in rows}
