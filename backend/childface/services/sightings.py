"""Video events: sightings, arrivals, attendance, camera status and on-demand frames.

`childface watch` reports each face track here (`record_track`) while it lives
and once more when it ends (`final`). What is stored:

- `sightings`: one row per (source, track_id), upserted: decision, the child
  (matched child; leading candidate of a review track; never for unknown
  people), score, first/last seen, frames.
- `arrivals`: the first match of a child on a local day (`attendance_timezone`)
  at any source. One per child per day, across sources and processes: the
  UNIQUE(child_id, day) constraint decides (INSERT ... ON CONFLICT DO NOTHING),
  so two watchers, or one killed and restarted, never record a second one.
  Per day rather than per source and day: a child who passes the door camera
  and then the hall camera arrived once.
- Crops, written when a track ends and never a frame: a match keeps its best
  crop (the aligned face chip, JPEG) for the record; a review track goes to the
  review queue with that crop exactly like an uncertain photo recognition
  (`services.review.queue_for_review`: photo, face with embedding, review item,
  one `review.queued` audit event); an unknown person leaves nothing but the
  event unless `video_keep_unknown_crops_days` > 0, and such crops are removed
  after that many days. Crops live in the media store as `images` rows (source
  `recognition`), so the file journal, `childface verify` and erasure treat them
  like every other stored photo.
- Webhook events (`services.webhooks.enqueue`, in the same transaction as the
  row they announce): `arrival` when the arrival row is inserted; when a track
  ends, `sighting` (match), `review` (review) or `unknown_person` (unknown).
  `record_track` returns the names of the events it emitted.

What is audited: the review-queue face is identity data (a face and embedding
that staff may turn into a template), so it goes through the review queue's
unit of work and its `review.queued` event. Sightings, arrivals and match crops
are observations, not identity changes: they do not change who anyone is, add
nothing the gallery searches, and one audit event per person passing a camera
would bury the trail that staff read (and that every process replays). They
are written in plain transactions, and erasure of a child removes them
(`services.erasure`): its arrivals and webhook events go, its sightings stay as
counts without child, score, crop or review face, and other review events no
longer list it among their candidates. A child or review face erased while a
track is being recorded is left out the same way: `_write` share-locks the
children it names and the review face, and keeps only those that still exist.

The watch loop's other two calls, `update_camera_status` and `store_frame`,
live in `services.cameras` and are importable from here too (the loop's whole
interface in one place); attendance queries are in `services.attendance`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from childface.db.models import (
    Arrival,
    Child,
    ChildStatus,
    Face,
    Image,
    ImageSource,
    ReviewItem,
    Sighting,
    SightingDecision,
    as_utc,
)
from childface.db.session import Actor, Database
from childface.services import webhooks
from childface.services.attendance import day_bounds, local_day
from childface.services.cameras import store_frame, update_camera_status  # noqa: F401 - see the docstring
from childface.services.errors import InvalidInput, NotFound
from childface.services.file_journal import pending_writes, sweep
from childface.services.media import MediaStore, encode_jpeg
from childface.services.removed_faces import delete_photos, unused_photos

if TYPE_CHECKING:
    from childface.config import Settings
    from childface.services.runtime import Runtime
    from childface.vision.quality import QualityReport

log = logging.getLogger(__name__)

#: who queues a video track for review (the review queue's audit actor)
WATCH_ACTOR = Actor("system", "watch")
CROP_JPEG_QUALITY = 90
#: how often one process looks for expired unknown-person crops
_EXPIRY_EVERY_S = 600.0


@dataclass(frozen=True)
class TrackReport:
    """One face track's state, as `childface watch` sees it now (see the module docstring)."""

    source: str
    #: unique per source for ever: f"{run uuid}-{tracker id}"
    track_id: str
    #: "match" | "review" | "unknown"
    decision: str
    child_id: int | None
    #: child-level score of the decision's child (best candidate for unknown)
    score: float | None
    #: (child_id, score) best first, for the review card
    candidates: list[tuple[int, float]]
    first_seen: datetime
    last_seen: datetime
    frames: int
    #: aligned face chip (uint8 RGB, the embedder's template) of the best-quality face
    best_chip: np.ndarray | None
    #: its unit embedding (for the review queue)
    best_embedding: np.ndarray | None
    #: the track ended
    final: bool
    #: the quality gate's verdict on the best face; without it a reviewed face never becomes a template
    best_quality: QualityReport | None = field(default=None)
    #: why the decision is not a match (`services.recognition` reason codes), kept by its review item
    reasons: list[str] = field(default_factory=list)


def _checked(report: TrackReport) -> None:
    if report.decision not in SightingDecision.__members__:
        raise InvalidInput(f"decision must be one of match, review, unknown, not {report.decision!r}")
    if not report.source or len(report.source) > 100:
        raise InvalidInput("source must be 1 to 100 characters")
    if not report.track_id or len(report.track_id) > 64:
        raise InvalidInput("track_id must be 1 to 64 characters")
    if report.decision == "match" and report.child_id is None:
        raise InvalidInput("a match names its child")
    if report.frames < 0:
        raise InvalidInput("frames must not be negative")


# ---- record_track ----------------------------------------------------------------------------------


def record_track(runtime: Runtime, report: TrackReport) -> list[str]:
    """Upsert the sighting; on the first confident match of a child that day insert the arrival;
    review tracks (when final) go to the review queue with their best crop; enqueue webhook events
    ("arrival", "sighting", "unknown_person", "review"); returns the event names emitted.

    Idempotent: the same report again emits nothing new.
    """
    _checked(report)
    settings = runtime.settings
    with runtime.db.session() as session:
        done = session.scalar(
            select(Sighting.final).where(
                Sighting.source == report.source, Sighting.track_id == report.track_id
            )
        )
    if done:
        return []  # the track ended and was recorded before (a repeated final report)
    queued: tuple[int | None, int | None, str | None] = (None, None, None)
    crop: bytes | None = None
    if report.final and report.best_chip is not None:
        if report.decision == "review" and report.best_embedding is not None:
            queued = _queue_review(runtime, report)
        elif report.decision == "match" or (
            report.decision == "unknown" and settings.video_keep_unknown_crops_days > 0
        ):
            crop = encode_jpeg(report.best_chip, CROP_JPEG_QUALITY)
    if crop is None:
        events = _write(runtime, report, queued, None)
    else:
        media = runtime.media
        sha, relative = media.locate(crop)
        # announced before the file is written, settled after the commit: a crash strands no file
        with media.hold(sha), pending_writes(runtime.db, media, [(sha, relative)]):
            media.put(crop)
            events = _write(runtime, report, queued, (sha, relative, report.best_chip.shape))
    _expire_unknown_crops_now_and_then(runtime)
    return events


def _queue_review(runtime: Runtime, report: TrackReport) -> tuple[int | None, int | None, str | None]:
    """The review track's face into the review queue: (review id, face id, crop path)."""
    from childface.services.enrollment import Photo
    from childface.services.gallery import ChildCandidate
    from childface.services.review import queue_for_review
    from childface.vision.exif import PhotoDate
    from childface.vision.pipeline import DetectedFace
    from childface.vision.quality import QualityReport

    assert report.best_chip is not None and report.best_embedding is not None
    chip = np.ascontiguousarray(np.asarray(report.best_chip, dtype=np.uint8))
    data = encode_jpeg(chip, CROP_JPEG_QUALITY)
    sha, relative = runtime.media.locate(data)
    height, width = chip.shape[:2]
    quality = report.best_quality or QualityReport(
        size_px=float(min(height, width)), sharpness=0.0, yaw=0.0, roll_deg=0.0, detector_score=0.0,
        score=0.0, passed=False, reasons=["quality_not_reported"],
    )
    face = DetectedFace(
        box=(0.0, 0.0, float(width), float(height)),
        score=float(quality.detector_score),
        # the chip is aligned onto the embedder's template: its landmarks are the template's points
        landmarks=np.asarray(runtime.pipeline.embedder.template, dtype=np.float32).reshape(5, 2),
        quality=quality,
        embedding=np.asarray(report.best_embedding, dtype=np.float32).reshape(-1),
        chip=chip,
    )
    # the track's scores (its vote), each with the child's best template for this face (the review card)
    proposed = [int(c) for c, _ in report.candidates]
    templates = {
        c.child_id: c for c in runtime.current_gallery().child_scores(face.embedding, proposed)
    } if proposed else {}
    candidates = [
        ChildCandidate(int(c), float(s), templates[int(c)].face_id, templates[int(c)].n_templates)
        for c, s in report.candidates
        if int(c) in templates  # a child without templates now (erased, archived) is not proposed
    ]
    # a frame has no EXIF: the crop was taken when the track was last seen
    photo = Photo(data=data, rgb=chip, sha256=sha, taken=PhotoDate(as_utc(report.last_seen), "upload"))
    (outcome,) = queue_for_review(runtime=runtime, actor=WATCH_ACTOR, photo=photo, faces=[(face, candidates)],
                                  reasons=[report.reasons])
    if outcome.review_id is None:
        log.info("review track %s/%s not queued: %s", report.source, report.track_id,
                 outcome.not_queued_reason)
        return None, None, None
    with runtime.db.session() as session:
        face_id = session.scalar(select(ReviewItem.face_id).where(ReviewItem.id == outcome.review_id))
    return outcome.review_id, face_id, relative


def _write(
    runtime: Runtime,
    report: TrackReport,
    queued: tuple[int | None, int | None, str | None],
    crop: tuple[str, str, tuple[int, ...]] | None,
) -> list[str]:
    """The sighting, the arrival, the crop's photo row and the outbox rows: one transaction."""
    settings = runtime.settings
    decision = SightingDecision(report.decision)
    review_id, face_id, review_crop = queued
    events: list[str] = []
    with runtime.db.transaction() as session:
        child_id = report.child_id
        if decision == SightingDecision.review and child_id is None and report.candidates:
            child_id = int(report.candidates[0][0])
        if decision == SightingDecision.unknown:
            child_id = None  # nothing of a stranger links to a child
        proposed = [int(c) for c, _ in report.candidates] if decision == SightingDecision.review else []
        live = _live_children(session, [child_id, *proposed])
        child = live.get(child_id) if child_id is not None else None
        score = _score(report)
        if child_id is not None and child is None:
            # erased (or never there) since the search: keep nothing that points at that child
            child_id, crop, score = None, None, None
        # an erased candidate's id and score go nowhere (the row is tied to the leading candidate only)
        candidates = [(int(c), float(s)) for c, s in report.candidates if int(c) in live]
        if face_id is not None and not _live_face(session, face_id):
            face_id, review_crop = None, None  # the review face was erased after it was queued
        sighting, was_final = _upsert(session, report, decision, child_id, score)
        if sighting.final and not was_final:
            if crop is not None:
                sha, relative, shape = crop
                sighting.best_crop_path = _crop_row(session, sha, relative, shape, report.last_seen)
            elif review_crop is not None:
                sighting.best_crop_path, sighting.face_id = review_crop, face_id
        session.flush()
        arrived = (
            decision == SightingDecision.match and child is not None and child.status == ChildStatus.active
            and _insert_arrival(session, runtime, child.id, report, sighting.id)
        )
        if arrived:
            assert child is not None
            events.append("arrival")
            webhooks.enqueue(session, settings, "arrival", {
                "child": _child_json(child),
                "source": report.source,
                "day": local_day(report.first_seen, settings).isoformat(),
                "arrived_at": as_utc(report.first_seen).isoformat(),
                "sighting_id": sighting.id,
                "score": sighting.score,
            }, child_id=child.id, at=report.last_seen)
        if sighting.final and not was_final:
            event = {"match": "sighting", "review": "review", "unknown": "unknown_person"}[decision.value]
            data: dict[str, Any] = {"sighting": _sighting_json(sighting)}
            if decision == SightingDecision.match and child is not None:
                data["child"] = _child_json(child)
            if decision == SightingDecision.review:
                data["review_id"] = review_id
                data["candidates"] = [{"child_id": c, "score": round(s, 6)} for c, s in candidates]
            events.append(event)
            webhooks.enqueue(session, settings, event, data, child_id=child_id, at=report.last_seen)
    return events


def _live_children(session: Session, child_ids: list[int | None]) -> dict[int, Child]:
    """Those of the children that exist, share-locked in id order (an erasure, which locks its
    children first, cannot commit between this check and our commit)."""
    wanted = sorted({c for c in child_ids if c is not None})
    if not wanted:
        return {}
    rows = session.scalars(
        select(Child).where(Child.id.in_(wanted)).order_by(Child.id).with_for_update(read=True)
    )
    return {c.id: c for c in rows}


def _live_face(session: Session, face_id: int) -> bool:
    """The face exists, share-locked (it cannot be deleted before our commit links it)."""
    return session.scalar(select(Face.id).where(Face.id == face_id).with_for_update(read=True)) is not None


def _upsert(
    session: Session, report: TrackReport, decision: SightingDecision, child_id: int | None,
    score: float | None,
) -> tuple[Sighting, bool]:
    """The track's row, created or updated and locked: (row, whether it was final before)."""
    key = (Sighting.source == report.source, Sighting.track_id == report.track_id)
    sighting = session.scalar(select(Sighting).where(*key).with_for_update())
    if sighting is None:
        try:
            with session.begin_nested():
                session.add(Sighting(
                    source=report.source, track_id=report.track_id, child_id=child_id, decision=decision,
                    score=score, first_seen=report.first_seen, last_seen=report.last_seen,
                    frames=report.frames, final=report.final,
                ))
            sighting = session.scalar(select(Sighting).where(*key))
            assert sighting is not None
            return sighting, False
        except IntegrityError:  # another process created it first: update that row
            sighting = session.scalar(select(Sighting).where(*key).with_for_update())
            assert sighting is not None
    was_final = sighting.final
    if was_final:
        return sighting, True
    sighting.decision, sighting.child_id, sighting.score = decision, child_id, score
    sighting.first_seen = min(sighting.first_seen, as_utc(report.first_seen))
    sighting.last_seen = max(sighting.last_seen, as_utc(report.last_seen))
    sighting.frames = max(sighting.frames, report.frames)
    sighting.final = report.final
    return sighting, False


def _score(report: TrackReport) -> float | None:
    return None if report.score is None else round(float(report.score), 6)


def _insert_arrival(session: Session, runtime: Runtime, child_id: int, report: TrackReport,
                    sighting_id: int) -> bool:
    """Insert the day's arrival unless there is one (any process, any source); True when inserted."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(Arrival)
        .values(child_id=child_id, day=local_day(report.first_seen, runtime.settings), source=report.source,
                sighting_id=sighting_id, arrived_at=as_utc(report.first_seen))
        .on_conflict_do_nothing(index_elements=["child_id", "day"])
        .returning(Arrival.id)
    )
    return session.execute(statement).scalar() is not None


def _crop_row(session: Session, sha: str, relative: str, shape: tuple[int, ...], seen: datetime) -> str:
    """The crop's photo row (reused when the same bytes are stored already), dated when it was `seen`;
    its path."""
    existing = session.scalar(select(Image.path).where(Image.sha256 == sha))
    if existing is not None:
        return existing
    session.add(Image(sha256=sha, path=relative, width=int(shape[1]), height=int(shape[0]),
                      source=ImageSource.recognition, uploaded_by=str(WATCH_ACTOR),
                      taken_at=as_utc(seen), taken_at_source="upload"))
    return relative


def _child_json(child: Child) -> dict[str, Any]:
    return {"id": child.id, "external_id": child.external_id, "name": child.display_name,
            "group": child.group_name}


def _sighting_json(sighting: Sighting) -> dict[str, Any]:
    return {
        "id": sighting.id,
        "source": sighting.source,
        "track_id": sighting.track_id,
        "decision": sighting.decision.value,
        "score": sighting.score,
        "first_seen": as_utc(sighting.first_seen).isoformat(),
        "last_seen": as_utc(sighting.last_seen).isoformat(),
        "frames": sighting.frames,
    }


# ---- crop retention ------------------------------------------------------------------------------

_expiry_guard = threading.Lock()
_last_expiry: dict[str, float] = {}


def _expire_unknown_crops_now_and_then(runtime: Runtime) -> None:
    with _expiry_guard:
        if time.monotonic() - _last_expiry.get(runtime.db.url, -_EXPIRY_EVERY_S) < _EXPIRY_EVERY_S:
            return
        _last_expiry[runtime.db.url] = time.monotonic()
    try:
        expire_unknown_crops(runtime.db, runtime.media, runtime.settings)
    except Exception:  # noqa: BLE001 - retried on a later call; recording the track matters more
        log.warning("could not remove expired crops of unknown people", exc_info=True)


def expire_unknown_crops(
    db: Database, media: MediaStore, settings: Settings, *, now: datetime | None = None
) -> int:
    """Remove unknown people's crops older than `video_keep_unknown_crops_days`; returns how many."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=settings.video_keep_unknown_crops_days)
    with db.transaction() as session:
        dropped, shas = drop_expired_crops(session, [SightingDecision.unknown], cutoff)
    if dropped:
        sweep(db=db, media=media, shas=shas)
    return dropped


def drop_expired_crops(
    session: Session, decisions: list[SightingDecision], before: datetime
) -> tuple[int, list[str]]:
    """Inside the caller's transaction: `drop_crops` of the sightings with these decisions last seen
    before `before` (this module's expiry of unknown crops, and retention's of review and unknown ones).

    Returns (sightings whose crop was dropped, sha256s of the photo rows deleted, for the sweep)."""
    rows = session.execute(
        select(Sighting.id, Sighting.best_crop_path).where(
            Sighting.decision.in_(decisions),
            Sighting.best_crop_path.is_not(None),
            Sighting.last_seen < before,
        )
    ).all()
    if not rows:
        return 0, []
    return len(rows), drop_crops(session, [r.id for r in rows], [r.best_crop_path for r in rows])


def drop_crops(session: Session, sighting_ids: list[int], paths: list[str]) -> list[str]:
    """Unlink these sightings' crops and delete each crop's photo row that nothing else uses.

    Inside the caller's transaction; the deleted rows' files are journaled (their
    sha256s are returned, for the sweep after the commit).
    """
    session.execute(update(Sighting).where(Sighting.id.in_(sighting_ids)).values(best_crop_path=None))
    paths = sorted(set(paths))
    if not paths:
        return []
    # the one "photo nothing uses" rule: faces, removed faces kept for undo, other sightings' crops
    photos = unused_photos(session, list(session.scalars(select(Image.id).where(Image.path.in_(paths)))))
    delete_photos(session, photos)
    return [sha for _, sha, _ in photos]


# ---- queries: sightings and their crops ----------------------------------------------------------

MAX_SIGHTINGS_PAGE = 200


@dataclass(frozen=True)
class SightingView:
    sighting: Sighting
    child_name: str | None


def list_sightings(
    db: Database,
    settings: Settings,
    *,
    source: str | None = None,
    child_id: int | None = None,
    day: date | None = None,
    decision: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> tuple[list[SightingView], int | None]:
    """Sightings, newest first, and the `before_id` of the next page (None on the last page)."""
    limit = max(1, min(limit, MAX_SIGHTINGS_PAGE))
    conditions = []
    if source:
        conditions.append(Sighting.source == source)
    if child_id is not None:
        conditions.append(Sighting.child_id == child_id)
    if day is not None:
        start, end = day_bounds(day, settings)
        conditions += [Sighting.first_seen >= start, Sighting.first_seen < end]
    if decision:
        if decision not in SightingDecision.__members__:
            raise InvalidInput("decision must be one of match, review, unknown")
        conditions.append(Sighting.decision == SightingDecision(decision))
    if before_id is not None:
        conditions.append(Sighting.id < before_id)
    with db.session() as session:
        rows = session.execute(
            select(Sighting, Child.display_name)
            .outerjoin(Child, Child.id == Sighting.child_id)
            .where(*conditions)
            .order_by(Sighting.id.desc())
            .limit(limit + 1)
        ).all()
    items = [SightingView(s, name) for s, name in rows[:limit]]
    return items, (items[-1].sighting.id if len(rows) > limit else None)


def read_crop(db: Database, media: MediaStore, sighting_id: int) -> bytes:
    """The sighting's crop (JPEG); NotFound when it has none (never stored, erased or expired)."""
    with db.session() as session:
        sighting = session.get(Sighting, sighting_id)
        if sighting is None:
            raise NotFound(f"no sighting with id {sighting_id}")
        path = sighting.best_crop_path
        stored = path is not None and session.scalar(select(Image.id).where(Image.path == path)) is not None
    if not stored:
        raise NotFound(f"sighting {sighting_id} has no crop", code="no_crop")
    try:
        return media.read(path)
    except FileNotFoundError:
        raise NotFound(f"sighting {sighting_id} has no crop", code="no_crop") from None


def erase_sightings(session: Session, child_ids: list[int], face_ids: list[int]) -> tuple[int, list[str]]:
    """Erasure's part (inside its transaction): these children's sightings, and those of review faces
    that go, keep their row and decision but lose child, score, crop and review face.

    Returns (sightings unlinked, sha256s of crop photos deleted, for the sweep after the commit).
    Arrivals and webhook events of the children go with the children (ON DELETE CASCADE); other
    children's `review` events lose them from their candidates (`webhooks.forget_candidates`).
    """
    webhooks.forget_candidates(session, child_ids)
    concerned = [Sighting.child_id.in_(child_ids)]
    if face_ids:
        concerned.append(Sighting.face_id.in_(face_ids))
    rows = session.execute(select(Sighting.id, Sighting.best_crop_path).where(or_(*concerned))).all()
    if not rows:
        return 0, []
    ids = [r.id for r in rows]
    session.execute(
        update(Sighting).where(Sighting.id.in_(ids)).values(child_id=None, score=None, face_id=None)
    )
    return len(ids), drop_crops(session, ids, [r.best_crop_path for r in rows if r.best_crop_path])

