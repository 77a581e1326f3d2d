"""Retention: erase children archived too long; drop review items and video crops nobody decided.

Two settings, both off (None) by default:

- `retention_archived_days` = N: a child archived more than N days ago (`children.archived_at`,
  set when it is archived, cleared when it is restored) is erased through
  `services.erasure.erase_child`: one `child.erased` event per child, exactly as an erasure from
  the API, with everything that erasure removes. A child that was merged into another is not
  erased on its own (its faces live on in the other child; it goes when that child is erased),
  nor is an archived child without an archive time.
- `retention_review_days` = M: open review-queue items older than M days are dropped together
  with their pending face (its embeddings, its item) and the face's photo when no other face, and
  no removed face kept for undo, uses it (`services.removed_faces`' deletion code); the crops of
  video sightings of unknown people and of review tracks last seen more than M days ago are
  dropped (`services.sightings.drop_expired_crops`, the code that also expires unknown people's
  crops after `video_keep_unknown_crops_days`).

A run (`run_retention`, actor `system:retention`): ONE unit of work drops the review items and
crops and writes the run's summary event `retention.run` (the settings and counts: never a name
or an external id; `face_ids` lists the dropped faces), also when nothing was due, so the audit
trail shows that retention ran. Then each due child is erased in its own erasure; the erasure
asks again, on the locked row, whether the child is still archived since before the cutoff, so
a child restored meanwhile stays. A child that cannot be erased now (an import is running) is
reported and taken by the next run.

The summary event doubles as the guard of the daily run (`run_if_due`, called by the API's
`Housekeeper`): the unit of work takes a lock (PostgreSQL: an advisory transaction lock; SQLite:
the write lock every unit of work holds) and goes on only when the last `retention.run` event is
older than a day, so several API processes on one database run it once a day between them.

`plan_retention` says what a run would do now (the dry run); it changes nothing.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from childface.config import Settings
from childface.db.models import (
    AuditEvent,
    Child,
    ChildStatus,
    Face,
    Image,
    ReviewItem,
    ReviewState,
    ReviewStatus,
    Sighting,
    SightingDecision,
    as_utc,
)
from childface.db.session import Actor, Database
from childface.services.errors import Conflict, NotFound
from childface.services.file_journal import sweep
from childface.services.media import MediaStore

log = logging.getLogger(__name__)

RETENTION_ACTOR = Actor("system", "retention")
RUN_ACTION = "retention.run"
#: how often the API's housekeeping runs retention (at most once in this time, across processes)
DAILY_S = 24 * 3600.0
#: PostgreSQL advisory lock: one retention run at a time
_LOCK_KEY = zlib.crc32(b"childface.retention") - 2**31
#: sightings whose crops retention drops (matches keep theirs: they are the attendance record)
_UNMATCHED = [SightingDecision.unknown, SightingDecision.review]


@dataclass(frozen=True)
class DueChild:
    child_id: int
    external_id: str
    archived_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"child_id": self.child_id, "external_id": self.external_id,
                "archived_at": as_utc(self.archived_at).isoformat()}


@dataclass(frozen=True)
class DueReview:
    review_id: int
    face_id: int
    created_at: datetime
    age_days: float

    def to_dict(self) -> dict[str, Any]:
        return {"review_id": self.review_id, "face_id": self.face_id,
                "created_at": as_utc(self.created_at).isoformat(), "age_days": round(self.age_days, 1)}


@dataclass
class RetentionPlan:
    """What is due now (see the module docstring)."""

    archived_days: int | None
    review_days: int | None
    at: datetime
    children: list[DueChild] = field(default_factory=list)
    review_items: list[DueReview] = field(default_factory=list)
    crops: int = 0  # sightings whose crop would be dropped

    @property
    def enabled(self) -> bool:
        return self.archived_days is not None or self.review_days is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "archived_days": self.archived_days,
            "review_days": self.review_days,
            "at": self.at.isoformat(),
            "children": [c.to_dict() for c in self.children],
            "review_items": [r.to_dict() for r in self.review_items],
            "crops": self.crops,
        }


@dataclass
class RetentionReport:
    """What a run did."""

    plan: RetentionPlan
    erased: list[DueChild] = field(default_factory=list)
    not_erased: list[tuple[DueChild, str]] = field(default_factory=list)  # (child, why not now)
    review_items_dropped: list[DueReview] = field(default_factory=list)
    photos_deleted: int = 0
    crops_dropped: int = 0
    audit_seq: int | None = None  # the `retention.run` event
    skipped: str | None = None  # why nothing ran (off; another process ran it less than a day ago)

    def to_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "plan": self.plan.to_dict(),
            "erased": [c.to_dict() for c in self.erased],
            "not_erased": [{**c.to_dict(), "reason": why} for c, why in self.not_erased],
            "review_items_dropped": [r.to_dict() for r in self.review_items_dropped],
            "photos_deleted": self.photos_deleted,
            "crops_dropped": self.crops_dropped,
            "audit_seq": self.audit_seq,
        }


def _cutoff(now: datetime, days: int | None) -> datetime | None:
    return None if days is None else now - timedelta(days=days)


def _due_children(session: Session, before: datetime | None) -> list[DueChild]:
    if before is None:
        return []
    rows = session.execute(
        select(Child.id, Child.external_id, Child.archived_at)
        .where(
            Child.status == ChildStatus.archived,
            Child.merged_into_id.is_(None),
            Child.archived_at.is_not(None),
            Child.archived_at < before,
        )
        .order_by(Child.id)
    ).all()
    return [DueChild(r.id, r.external_id, r.archived_at) for r in rows]


def _due_reviews(
    session: Session, before: datetime | None, now: datetime, *, lock: bool = False
) -> list[tuple[DueReview, int]]:
    """Open items older than `before` on a pending face without a child: (item, the face's photo id)."""
    if before is None:
        return []
    query = (
        select(ReviewItem.id, ReviewItem.face_id, ReviewItem.created_at, Face.image_id)
        .join(Face, Face.id == ReviewItem.face_id)
        .where(
            ReviewItem.status == ReviewStatus.open,
            ReviewItem.created_at < before,
            Face.child_id.is_(None),
            Face.review_state == ReviewState.pending_review,
        )
        .order_by(ReviewItem.id)
    )
    if lock:  # a staff member resolving the item now waits, then finds it gone
        query = query.with_for_update()
    out = []
    for row in session.execute(query):
        age = (now - as_utc(row.created_at)).total_seconds() / 86400
        out.append((DueReview(row.id, row.face_id, row.created_at, age), row.image_id))
    return out


def _crop_count(session: Session, before: datetime | None) -> int:
    if before is None:
        return 0
    return int(session.scalar(
        select(func.count(Sighting.id)).where(
            Sighting.decision.in_(_UNMATCHED),
            Sighting.best_crop_path.is_not(None),
            Sighting.last_seen < before,
        )
    ) or 0)


def plan_retention(db: Database, settings: Settings, *, now: datetime | None = None) -> RetentionPlan:
    """What a run would erase and drop now; changes nothing."""
    now = now or datetime.now(UTC)
    plan = RetentionPlan(settings.retention_archived_days, settings.retention_review_days, now)
    archived_before = _cutoff(now, settings.retention_archived_days)
    review_before = _cutoff(now, settings.retention_review_days)
    with db.session() as session:
        plan.children = _due_children(session, archived_before)
        plan.review_items = [item for item, _ in _due_reviews(session, review_before, now)]
        plan.crops = _crop_count(session, review_before)
    return plan


class _NotDue(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def run_retention(
    *,
    db: Database,
    media: MediaStore,
    settings: Settings,
    now: datetime | None = None,
    once_per_s: float | None = None,
    actor: Actor = RETENTION_ACTOR,
) -> RetentionReport:
    """Erase and drop what is due (module docstring). With `once_per_s`, nothing happens when a
    `retention.run` event is younger than that (`skipped` says so)."""
    from childface.services.removed_faces import delete_face_rows, delete_photos, unused_photos
    from childface.services.sightings import drop_expired_crops

    now = now or datetime.now(UTC)
    plan = RetentionPlan(settings.retention_archived_days, settings.retention_review_days, now)
    report = RetentionReport(plan)
    if not report.plan.enabled:
        report.skipped = "retention is off"
        return report
    archived_before = _cutoff(now, settings.retention_archived_days)
    review_before = _cutoff(now, settings.retention_review_days)
    try:
        with db.unit_of_work(actor) as uow:
            session = uow.session
            _lock(session, db)
            if once_per_s is not None:
                last = _last_run(session)
                if last is not None and (now - last).total_seconds() < once_per_s:
                    raise _NotDue(f"ran at {last.isoformat()}")
            report.plan.children = _due_children(session, archived_before)
            reviews = _due_reviews(session, review_before, now, lock=True)
            report.plan.review_items = [item for item, _ in reviews]
            report.plan.crops = _crop_count(session, review_before)
            photos: list[tuple[int, str, str]] = []
            if reviews:
                image_ids = sorted({image_id for _, image_id in reviews})
                # photo rows locked in id order, like every writer of faces on them
                session.execute(select(Image.id).where(Image.id.in_(image_ids)).order_by(Image.id)
                                .with_for_update())
                for item, _ in reviews:
                    delete_face_rows(session, item.face_id)
                photos = unused_photos(session, image_ids)
                delete_photos(session, photos)
            crop_shas: list[str] = []
            if review_before is not None:
                report.crops_dropped, crop_shas = drop_expired_crops(session, _UNMATCHED, review_before)
            report.review_items_dropped = report.plan.review_items
            report.photos_deleted = len(photos) + len(crop_shas)
            event = uow.audit(
                RUN_ACTION,
                target_type="retention",
                after={
                    "archived_days": settings.retention_archived_days,
                    "review_days": settings.retention_review_days,
                    "children_due": len(report.plan.children),
                    "review_items_dropped": len(reviews),
                    "photos_deleted": report.photos_deleted,
                    "crops_dropped": report.crops_dropped,
                },
                face_ids=[item.face_id for item, _ in reviews],
            )
            report.audit_seq = event.seq
    except _NotDue as not_due:
        report.skipped = not_due.reason
        return report
    shas = [sha for _, sha, _ in photos] + crop_shas
    if shas:
        sweep(db=db, media=media, shas=shas)
    for child in report.plan.children:
        _erase(db, media, actor, child, archived_before, report)
    log.info(
        "retention: %d child(ren) erased, %d not now, %d review item(s) and %d crop(s) dropped",
        len(report.erased), len(report.not_erased), len(report.review_items_dropped), report.crops_dropped,
    )
    return report


def _erase(
    db: Database, media: MediaStore, actor: Actor, child: DueChild, before: datetime | None,
    report: RetentionReport,
) -> None:
    from childface.services.erasure import ERASE_CONFIRMATION, erase_child

    def still_due(row: Child) -> bool:
        return (
            before is not None and row.status == ChildStatus.archived and row.merged_into_id is None
            and row.archived_at is not None and as_utc(row.archived_at) < before
        )

    try:
        erase_child(db=db, media=media, actor=actor, child_id=child.child_id, confirm=ERASE_CONFIRMATION,
                    still_due=still_due)
    except NotFound:
        report.not_erased.append((child, "gone: erased meanwhile"))
    except Conflict as conflict:
        report.not_erased.append((child, conflict.message))
    else:
        report.erased.append(child)


def _lock(session: Session, db: Database) -> None:
    """One run at a time: SQLite's unit of work holds the write lock already."""
    if not db.is_sqlite:
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def _last_run(session: Session) -> datetime | None:
    last = session.scalar(select(func.max(AuditEvent.at)).where(AuditEvent.action == RUN_ACTION))
    return None if last is None else as_utc(last)


def run_if_due(*, db: Database, media: MediaStore, settings: Settings) -> RetentionReport | None:
    """The daily run of a serving process (`Housekeeper`): a run when retention is on and none ran in
    the last day (in any process); None otherwise. One indexed read when nothing is due."""
    if settings.retention_archived_days is None and settings.retention_review_days is None:
        return None
    with db.session() as session:
        last = _last_run(session)
    if last is not None and (datetime.now(UTC) - last).total_seconds() < DAILY_S:
        return None
    report = run_retention(db=db, media=media, settings=settings, once_per_s=DAILY_S)
    return None if report.skipped else report
