"""Retention on real data (both back ends): archived children erased after N days, stale review items
dropped with their faces and photos, unmatched video crops dropped; audited as the system.

Ages are made by moving `archived_at`, `created_at` and `last_seen` into the past directly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from api.support import (  # noqa: F401 - the API tests' fixtures: real models, both databases
    Photos,
    photos,
    pipeline,
    runtime,
)
from childface.db import Actor
from childface.db.models import (
    AuditEvent,
    Child,
    ChildStatus,
    Face,
    Image,
    ImageSource,
    ReviewItem,
    Sighting,
    SightingDecision,
)
from childface.services import retention
from childface.services.children import create_child, set_child_status
from childface.services.enrollment import Photo, enroll_photos
from childface.services.erasure import ERASE_CONFIRMATION, erase_child
from childface.services.errors import Conflict
from childface.services.media import sha256_hex
from childface.services.merging import merge_children
from childface.services.recovery import Housekeeper
from childface.services.review import queue_for_review
from childface.services.runtime import Runtime
from childface.vision.decode import decode_image

STAFF = Actor("user", "teacher")
NOW = datetime.now(UTC)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def child_archived(rt: Runtime, external_id: str, days_ago: float | None, photo: bytes | None = None) -> int:
    """A child (with one enrolled photo when given), archived `days_ago` days ago (None: active)."""
    child = create_child(db=rt.db, actor=STAFF, external_id=external_id, name=f"Name of {external_id}")
    if photo is not None:
        (outcome,) = enroll_photos(runtime=rt, actor=STAFF, child_id=child.id, photos=[Photo(photo)])
        assert outcome.status == "enrolled", outcome
    if days_ago is not None:
        set_child_status(db=rt.db, actor=STAFF, child_id=child.id, status=ChildStatus.archived)
        with rt.db.engine.begin() as connection:
            connection.execute(update(Child).where(Child.id == child.id).values(archived_at=ago(days_ago)))
    return child.id


def review_item(rt: Runtime, data: bytes, days_ago: float) -> tuple[int, int, str]:
    """A photo's face queued for review `days_ago` days ago: (review id, face id, photo path)."""
    rgb = decode_image(data, rt.settings.max_image_pixels)
    (face,) = rt.pipeline.process([rgb])[0]
    photo = Photo(data=data, rgb=rgb, sha256=sha256_hex(data))
    (queued,) = queue_for_review(runtime=rt, actor=STAFF, photo=photo, faces=[(face, [])])
    with rt.db.engine.begin() as connection:
        connection.execute(update(ReviewItem).where(ReviewItem.id == queued.review_id)
                           .values(created_at=ago(days_ago)))
    with rt.db.session() as session:
        face_id, path = session.execute(
            select(ReviewItem.face_id, Image.path).join(Face, Face.id == ReviewItem.face_id)
            .join(Image, Image.id == Face.image_id).where(ReviewItem.id == queued.review_id)
        ).one()
    return queued.review_id, face_id, path


def unknown_crop(rt: Runtime, photos: Photos, n: int, days_ago: float) -> tuple[int, str]:  # noqa: F811
    """A final sighting of an unknown person with its crop, last seen `days_ago` days ago."""
    data = photos.person(7, n)
    sha, path = rt.media.put(data)
    with rt.db.transaction() as session:
        session.add(Image(sha256=sha, path=path, width=10, height=10, source=ImageSource.recognition,
                          uploaded_by="system:watch"))
        sighting = Sighting(source="door", track_id=f"t{n}", decision=SightingDecision.unknown,
                            first_seen=ago(days_ago), last_seen=ago(days_ago), frames=9, best_crop_path=path,
                            final=True)
        session.add(sighting)
        session.flush()
        sighting_id = sighting.id
    return sighting_id, path


def test_archive_and_restore_set_the_archive_time_merge_sets_it(runtime: Runtime) -> None:  # noqa: F811
    a = create_child(db=runtime.db, actor=STAFF, external_id="A", name="A").id
    b = create_child(db=runtime.db, actor=STAFF, external_id="B", name="B").id
    archived = set_child_status(db=runtime.db, actor=STAFF, child_id=a, status=ChildStatus.archived)
    assert archived.archived_at is not None
    assert abs(archived.archived_at - datetime.now(UTC)) < timedelta(minutes=1)
    restored = set_child_status(db=runtime.db, actor=STAFF, child_id=a, status=ChildStatus.active)
    assert restored.archived_at is None
    merged = merge_children(db=runtime.db, actor=STAFF, source_id=b, target_id=a).source
    assert merged.status == ChildStatus.archived and merged.archived_at is not None


def test_retention_erases_what_is_due_and_the_dry_run_lists_exactly_that(
    runtime: Runtime, photos: Photos  # noqa: F811
) -> None:
    old = child_archived(runtime, "OLD", 40, photos.person(0, 0))
    recent = child_archived(runtime, "RECENT", 10, photos.person(1, 0))
    active = child_archived(runtime, "ACTIVE", None, photos.person(2, 0))
    with runtime.db.engine.begin() as connection:  # active for long: its age does not matter
        connection.execute(update(Child).where(Child.id == active).values(created_at=ago(400)))
    merged = child_archived(runtime, "MERGED", None)
    merge_children(db=runtime.db, actor=STAFF, source_id=merged, target_id=active)
    with runtime.db.engine.begin() as connection:
        connection.execute(update(Child).where(Child.id == merged).values(archived_at=ago(40)))
    with runtime.db.session() as session:
        old_photo = session.scalar(select(Image.path).join(Face, Face.image_id == Image.id)
                                   .where(Face.child_id == old))
    stale_review, stale_face, stale_photo = review_item(runtime, photos.person(4, 0), 31)
    fresh_review, fresh_face, fresh_photo = review_item(runtime, photos.person(5, 0), 5)
    stale_crop, stale_crop_path = unknown_crop(runtime, photos, 0, 40)
    fresh_crop, fresh_crop_path = unknown_crop(runtime, photos, 1, 1)

    settings = runtime.settings.model_copy(
        update={"retention_archived_days": 30, "retention_review_days": 30}
    )
    plan = retention.plan_retention(runtime.db, settings)
    assert [c.child_id for c in plan.children] == [old]
    assert plan.children[0].external_id == "OLD"
    assert [(r.review_id, r.face_id) for r in plan.review_items] == [(stale_review, stale_face)]
    assert plan.review_items[0].age_days == pytest.approx(31, abs=0.1)
    assert plan.crops == 1
    assert retention.plan_retention(runtime.db, settings).to_dict()["children"] == plan.to_dict()["children"]

    report = retention.run_retention(db=runtime.db, media=runtime.media, settings=settings)
    assert report.skipped is None and not report.not_erased
    assert report.erased == plan.children  # the dry run listed exactly what the run erased
    assert [r.review_id for r in report.review_items_dropped] == [r.review_id for r in plan.review_items]
    assert report.crops_dropped == 1 and report.photos_deleted == 2  # the review photo and the stale crop

    media = runtime.media
    with runtime.db.session() as session:
        assert set(session.scalars(select(Child.id))) == {recent, active, merged}
        assert session.get(ReviewItem, stale_review) is None and session.get(Face, stale_face) is None
        assert session.get(ReviewItem, fresh_review) is not None and session.get(Face, fresh_face) is not None
        assert session.get(Sighting, stale_crop).best_crop_path is None
        assert session.get(Sighting, fresh_crop).best_crop_path == fresh_crop_path
        events = session.scalars(select(AuditEvent).where(AuditEvent.actor == "system:retention")
                                 .order_by(AuditEvent.seq)).all()
    for gone in (old_photo, stale_photo, stale_crop_path):
        assert not media.absolute(gone).exists(), gone
    for kept in (fresh_photo, fresh_crop_path):
        assert media.absolute(kept).exists(), kept
    assert [e.action for e in events] == ["retention.run", "child.erased"]
    run = events[0]
    assert run.seq == report.audit_seq and run.face_ids == [stale_face]
    assert run.after == {"archived_days": 30, "review_days": 30, "children_due": 1, "review_items_dropped": 1,
                         "photos_deleted": 2, "crops_dropped": 1}
    assert "OLD" not in json.dumps([run.before, run.after]) and "Name of" not in json.dumps(run.after)
    assert events[1].after["child_ids"] == [old]

    # nothing is due any more; a second daily run in the same day does nothing
    assert not retention.plan_retention(runtime.db, settings).children
    again = retention.run_retention(
        db=runtime.db, media=media, settings=settings, once_per_s=retention.DAILY_S
    )
    assert again.skipped is not None and again.skipped.startswith("ran at")


def test_a_child_restored_before_its_erasure_is_not_erased(runtime: Runtime) -> None:  # noqa: F811
    child = child_archived(runtime, "BACK", 40)
    set_child_status(db=runtime.db, actor=STAFF, child_id=child, status=ChildStatus.active)
    settings = runtime.settings.model_copy(update={"retention_archived_days": 30})

    def still_due(row: Child) -> bool:  # asked on the locked row inside the erasure's transaction
        return row.status == ChildStatus.archived

    with pytest.raises(Conflict) as refused:  # decided before the child came back
        erase_child(db=runtime.db, media=runtime.media, actor=retention.RETENTION_ACTOR,
                    child_id=child, confirm=ERASE_CONFIRMATION, still_due=still_due)
    assert refused.value.code == "not_due"
    assert retention.run_retention(db=runtime.db, media=runtime.media, settings=settings).erased == []
    with runtime.db.session() as session:
        assert session.get(Child, child) is not None


def test_housekeeping_runs_retention_once_a_day_and_not_when_off(runtime: Runtime) -> None:  # noqa: F811
    old = child_archived(runtime, "OLD", 40)

    def runs() -> int:
        with runtime.db.session() as session:
            query = select(AuditEvent.seq).where(AuditEvent.action == "retention.run")
            return len(session.scalars(query).all())

    Housekeeper(settings=runtime.settings, db=runtime.db, media=runtime.media).round()
    assert runs() == 0  # off by default
    settings = runtime.settings.model_copy(update={"retention_archived_days": 30})
    keeper = Housekeeper(settings=settings, db=runtime.db, media=runtime.media)
    keeper.round()
    assert runs() == 1
    with runtime.db.session() as session:
        assert session.get(Child, old) is None
    keeper.round()  # within the day: no second run
    assert runs() == 1
    with runtime.db.engine.begin() as connection:  # a day later
        connection.execute(
            update(AuditEvent).where(AuditEvent.action == "retention.run").values(at=ago(1.01))
        )
    keeper.round()
    assert runs() == 2
