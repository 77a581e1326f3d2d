"""Video events on the real pipeline, gallery and database (both back ends).

Tracks are built from real faces (`tracks.track`): a photo of a person goes
through the face pipeline, the runtime's gallery and the API's decision rule.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, update

from api.support import (  # noqa: F401 - the API tests' fixtures: real models, both databases
    Photos,
    photos,
    pipeline,
    runtime,
)
from childface.config import Settings
from childface.db import Actor
from childface.db.models import (
    Arrival,
    AuditEvent,
    CameraStatus,
    Face,
    Image,
    ReviewItem,
    ReviewState,
    Sighting,
    WebhookDelivery,
)
from childface.services import attendance, cameras, sightings
from childface.services.children import create_child
from childface.services.enrollment import Photo, enroll_photos
from childface.services.erasure import erase_child
from childface.services.errors import NotFound
from childface.services.runtime import Runtime
from childface.services.sightings import TrackReport, record_track

from .tracks import T0, track

STAFF = Actor("user", "teacher")
#: different people score at most 0.93 with these photos, variations of one person 0.98 or more
STRANGERS_UNKNOWN = {"accept_threshold": 0.97, "review_threshold": 0.96}
#: a real face of an enrolled child that the rule cannot accept: review
TOO_STRICT = {"accept_threshold": 0.9999, "review_threshold": 0.5}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # a webhook configured (never delivered here): the outbox rows show which events were emitted
    return settings.model_copy(
        update={"webhook_urls": ["http://127.0.0.1:9/hook"], "webhook_secret": SecretStr("s3cret")}
    )


@pytest.fixture
def children(runtime: Runtime, photos: Photos) -> dict[str, int]:  # noqa: F811
    """Two enrolled children (people 0 and 1 of the photos), one photo each."""
    ids = {}
    for name, person, group in (("ann", 0, "Bears"), ("ben", 1, "Owls")):
        child = create_child(db=runtime.db, actor=STAFF, external_id=name.upper(), name=name, group=group)
        outcomes = enroll_photos(
            runtime=runtime, actor=STAFF, child_id=child.id,
            photos=[Photo(data=photos.person(person, 0))],
        )
        assert [o.status for o in outcomes] == ["enrolled"]
        ids[name] = child.id
    runtime.catch_up()
    return ids


def _count(rt: Runtime, model: type, *where: object) -> int:
    with rt.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_a_match_upserts_one_sighting_and_one_arrival(runtime: Runtime, photos: Photos,  # noqa: F811
                                                      children: dict[str, int]) -> None:
    live = track(runtime, photos.person(0, 5), track_id="run1-1", final=False)
    assert live.decision == "match" and live.child_id == children["ann"]
    assert record_track(runtime, live) == ["arrival"]
    assert record_track(runtime, live) == []  # the same report again: nothing new
    later = replace(live, last_seen=live.last_seen + timedelta(seconds=5), frames=90, final=True)
    assert record_track(runtime, later) == ["sighting"]
    assert record_track(runtime, later) == []

    with runtime.db.session() as session:
        (row,) = session.scalars(select(Sighting)).all()
        assert (row.child_id, row.decision, row.frames, row.final) == (children["ann"], "match", 90, True)
        assert row.last_seen == later.last_seen and row.first_seen == T0
        assert row.best_crop_path is not None
        assert session.scalar(select(Image.source).where(Image.path == row.best_crop_path)) == "recognition"
        (arrival,) = session.scalars(select(Arrival)).all()
        assert (arrival.child_id, arrival.day, arrival.sighting_id) == (children["ann"], T0.date(), row.id)
        events = session.execute(select(WebhookDelivery.event, WebhookDelivery.payload)).all()
    assert sorted(e for e, _ in events) == ["arrival", "sighting"]
    arrival_payload = next(p for e, p in events if e == "arrival")
    assert arrival_payload["child"]["external_id"] == "ANN"
    assert sightings.read_crop(runtime.db, runtime.media, row.id)[:3] == b"\xff\xd8\xff"
    # a second track of the same child the same day, at another source: no second arrival
    other = track(runtime, photos.person(0, 6), track_id="run1-2", source="hall", at=T0 + timedelta(hours=2))
    assert record_track(runtime, other) == ["sighting"]
    assert _count(runtime, Arrival) == 1


def test_arrival_is_per_local_day(runtime: Runtime, photos: Photos, children: dict[str, int]) -> None:  # noqa: F811
    runtime.settings = runtime.settings.model_copy(update={"attendance_timezone": "America/New_York"})
    # 03:00 UTC on the 27th is still the 26th in New York; 14:00 UTC is the 27th there
    moments = (datetime(2026, 11, 27, 3, 0, tzinfo=UTC), datetime(2026, 11, 27, 14, 0, tzinfo=UTC))
    for n, at in enumerate(moments):
        record_track(runtime, track(runtime, photos.person(0, n + 3), track_id=f"r-{n}", at=at))
    with runtime.db.session() as session:
        assert sorted(session.scalars(select(Arrival.day))) == [date(2026, 11, 26), date(2026, 11, 27)]


def test_racing_writers_record_one_arrival(runtime: Runtime, photos: Photos,  # noqa: F811
                                           children: dict[str, int]) -> None:
    reports = [track(runtime, photos.person(1, n), track_id=f"race-{n}", final=False) for n in range(4)]
    assert all(r.decision == "match" for r in reports)
    barrier = threading.Barrier(len(reports))
    results: list[list[str]] = []

    def report(r: TrackReport) -> None:
        barrier.wait()
        results.append(record_track(runtime, r))

    threads = [threading.Thread(target=report, args=(r,)) for r in reports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e for events in results for e in events) == ["arrival"]
    assert _count(runtime, Arrival) == 1
    assert _count(runtime, WebhookDelivery, WebhookDelivery.event == "arrival") == 1


def test_a_review_track_goes_to_the_review_queue_with_its_crop(runtime: Runtime, photos: Photos,  # noqa: F811
                                                              children: dict[str, int]) -> None:
    # a real face of Ann that the stricter rule cannot accept: review, with Ann the leading candidate
    runtime.settings = runtime.settings.model_copy(update=TOO_STRICT)
    report = track(runtime, photos.person(0, 7), track_id="rv-1")
    assert report.decision == "review" and report.candidates[0][0] == children["ann"]
    assert record_track(runtime, replace(report, final=False)) == []
    assert record_track(runtime, report) == ["review"]
    assert record_track(runtime, report) == []

    with runtime.db.session() as session:
        row = session.scalars(select(Sighting)).one()
        item = session.scalars(select(ReviewItem)).one()
        face = session.get(Face, item.face_id)
        image_path = session.scalar(select(Image.path).where(Image.id == face.image_id))
        queued = session.scalars(select(AuditEvent).where(AuditEvent.action == "review.queued")).all()
        payload = session.scalar(select(WebhookDelivery.payload).where(WebhookDelivery.event == "review"))
    assert (row.decision, row.child_id, row.face_id) == ("review", children["ann"], face.id)
    assert face.review_state == ReviewState.pending_review and face.child_id is None
    assert row.best_crop_path == image_path
    assert item.candidates[0]["child_id"] == children["ann"] and item.candidates[0]["face_id"] is not None
    assert len(queued) == 1 and queued[0].actor == "system:watch"
    assert payload["review_id"] == item.id and payload["candidates"][0]["child_id"] == children["ann"]
    assert face.quality_details["passed"] == report.best_quality.passed


def test_an_unknown_person_leaves_only_the_event(runtime: Runtime, photos: Photos,  # noqa: F811
                                                 children: dict[str, int]) -> None:
    runtime.settings = runtime.settings.model_copy(update=STRANGERS_UNKNOWN)
    report = track(runtime, photos.hanks, track_id="u-1")
    assert report.decision == "unknown"
    # even a caller that names a candidate child cannot attach a stranger to a child
    report = replace(report, child_id=children["ann"])
    assert record_track(runtime, report) == ["unknown_person"]
    with runtime.db.session() as session:
        row = session.scalars(select(Sighting)).one()
        payload = session.scalar(select(WebhookDelivery.payload))
    assert (row.decision, row.child_id, row.best_crop_path, row.face_id) == ("unknown", None, None, None)
    assert "child" not in payload and payload["sighting"]["decision"] == "unknown"
    assert _count(runtime, Image) == 2  # the enrollment photos only
    assert _count(runtime, Arrival) == _count(runtime, ReviewItem) == 0


def test_unknown_crops_are_kept_only_when_configured_and_expire(runtime: Runtime, photos: Photos,  # noqa: F811
                                                                children: dict[str, int]) -> None:
    keep = {**STRANGERS_UNKNOWN, "video_keep_unknown_crops_days": 2}
    runtime.settings = runtime.settings.model_copy(update=keep)
    report = track(runtime, photos.hanks, track_id="u-2")
    assert report.decision == "unknown"
    record_track(runtime, report)
    with runtime.db.session() as session:
        path = session.scalar(select(Sighting.best_crop_path))
    assert path is not None and runtime.media.absolute(path).exists()
    assert sightings.expire_unknown_crops(runtime.db, runtime.media, runtime.settings) == 0
    later = datetime.now(UTC) + timedelta(days=3)
    assert sightings.expire_unknown_crops(runtime.db, runtime.media, runtime.settings, now=later) == 1
    assert not runtime.media.absolute(path).exists()
    assert _count(runtime, Image, Image.path == path) == 0
    assert _count(runtime, Sighting, Sighting.best_crop_path.is_not(None)) == 0


def test_erasure_keeps_counts_and_removes_crops_scores_arrivals_and_events(
    runtime: Runtime, photos: Photos, children: dict[str, int]  # noqa: F811
) -> None:
    ann, ben = children["ann"], children["ben"]
    record_track(runtime, track(runtime, photos.person(0, 4), track_id="e-1"))
    record_track(runtime, track(runtime, photos.person(1, 4), track_id="e-2"))
    runtime.settings = runtime.settings.model_copy(update=TOO_STRICT)
    record_track(runtime, track(runtime, photos.person(0, 8), track_id="e-3"))  # review, Ann proposed
    with runtime.db.session() as session:
        crops = dict(session.execute(select(Sighting.track_id, Sighting.best_crop_path)).all())
    assert all(crops.values())
    day = attendance.day_bounds(T0.date(), runtime.settings)

    erase_child(db=runtime.db, media=runtime.media, actor=STAFF, child_id=ann, confirm="ERASE")

    with runtime.db.session() as session:
        rows = {s.track_id: s for s in session.scalars(select(Sighting))}
        assert _count(runtime, Arrival, Arrival.child_id == ann) == 0
        assert _count(runtime, WebhookDelivery, WebhookDelivery.child_id == ann) == 0
    assert set(rows) == {"e-1", "e-2", "e-3"}  # the counts stay
    for gone in ("e-1", "e-3"):
        row = rows[gone]
        assert (row.child_id, row.score, row.best_crop_path, row.face_id) == (None, None, None, None)
        assert not runtime.media.absolute(crops[gone]).exists()
    assert (rows["e-1"].decision, rows["e-3"].decision) == ("match", "review")
    assert rows["e-2"].child_id == ben and runtime.media.absolute(crops["e-2"]).exists()
    assert _count(runtime, Arrival, Arrival.child_id == ben) == 1
    counts = attendance.count_sightings(runtime.db, day_start=day[0], day_end=day[1])
    assert counts == {"match": 2, "review": 1}


def test_a_child_erased_before_the_report_is_not_linked(runtime: Runtime, photos: Photos,  # noqa: F811
                                                        children: dict[str, int]) -> None:
    report = track(runtime, photos.person(0, 2), track_id="late-1")
    erase_child(db=runtime.db, media=runtime.media, actor=STAFF, child_id=children["ann"], confirm="ERASE")
    assert record_track(runtime, report) == ["sighting"]
    with runtime.db.session() as session:
        row = session.scalars(select(Sighting)).one()
    assert (row.child_id, row.score, row.best_crop_path) == (None, None, None)
    assert _count(runtime, Arrival) == 0


def _review_of_ann_proposing(runtime: Runtime, photos: Photos, children: dict[str, int],  # noqa: F811
                             first: str, track_id: str) -> TrackReport:
    """A real review track of Ann's face whose candidates are both children, `first` leading."""
    runtime.settings = runtime.settings.model_copy(update=TOO_STRICT)
    report = track(runtime, photos.person(0, 7), track_id=track_id)
    assert report.decision == "review"
    scores = {c: s for c, s in report.candidates}
    scores.setdefault(children["ben"], 0.55)  # the watcher's vote may name a weaker second child
    order = [children[first], *(children[n] for n in ("ann", "ben") if n != first)]
    return replace(report, candidates=[(c, scores[c]) for c in order])


def test_review_events_never_name_an_erased_candidate(runtime: Runtime, photos: Photos,  # noqa: F811
                                                      children: dict[str, int]) -> None:
    ann, ben = children["ann"], children["ben"]
    # Ben, the second candidate, is erased between the search and the write: not in the event
    report = _review_of_ann_proposing(runtime, photos, children, "ann", "rv-late")
    erase_child(db=runtime.db, media=runtime.media, actor=STAFF, child_id=ben, confirm="ERASE")
    assert record_track(runtime, report) == ["review"]
    with runtime.db.session() as session:
        payload = session.scalar(select(WebhookDelivery.payload).where(WebhookDelivery.event == "review"))
        row = session.scalars(select(Sighting)).one()
    assert [c["child_id"] for c in payload["candidates"]] == [ann]
    assert row.child_id == ann and row.score == pytest.approx(report.score, abs=1e-6)


def test_an_erased_leading_candidate_leaves_no_score(runtime: Runtime, photos: Photos,  # noqa: F811
                                                     children: dict[str, int]) -> None:
    ann, ben = children["ann"], children["ben"]
    report = _review_of_ann_proposing(runtime, photos, children, "ann", "rv-lead")
    erase_child(db=runtime.db, media=runtime.media, actor=STAFF, child_id=ann, confirm="ERASE")
    assert record_track(runtime, report) == ["review"]
    with runtime.db.session() as session:
        payload = session.scalar(select(WebhookDelivery.payload).where(WebhookDelivery.event == "review"))
        row = session.scalars(select(Sighting)).one()
    assert (row.child_id, row.score) == (None, None)
    assert [c["child_id"] for c in payload["candidates"]] == [ben]
    assert payload["sighting"]["score"] is None


def test_erasure_removes_a_child_from_other_childrens_review_events(runtime: Runtime, photos: Photos,  # noqa: F811
                                                                   children: dict[str, int]) -> None:
    ann, ben = children["ann"], children["ben"]
    report = _review_of_ann_proposing(runtime, photos, children, "ben", "rv-kept")
    assert record_track(runtime, report) == ["review"]
    with runtime.db.transaction() as session:  # delivered already: kept for webhook_keep_days
        session.execute(update(WebhookDelivery).values(status="delivered"))
    erase_child(db=runtime.db, media=runtime.media, actor=STAFF, child_id=ann, confirm="ERASE")
    with runtime.db.session() as session:
        (kept,) = session.scalars(select(WebhookDelivery)).all()  # tied to Ben, the leading candidate
    assert kept.child_id == ben and kept.status == "delivered"
    assert [c["child_id"] for c in kept.payload["candidates"]] == [ben]
    assert str(ann) not in json.dumps(kept.payload["candidates"])


def test_a_review_face_erased_before_the_write_is_not_linked(runtime: Runtime, photos: Photos,  # noqa: F811
                                                             children: dict[str, int]) -> None:
    """The review face is queued, then erased (it proposes Ann) before the sighting is written."""
    ann, ben = children["ann"], children["ben"]
    report = _review_of_ann_proposing(runtime, photos, children, "ben", "rv-face")
    queued = sightings._queue_review(runtime, report)
    assert queued[1] is not None
    erase_child(db=runtime.db, media=runtime.media, actor=STAFF, child_id=ann, confirm="ERASE")
    assert _count(runtime, Face, Face.id == queued[1]) == 0
    assert sightings._write(runtime, report, queued, None) == ["review"]
    with runtime.db.session() as session:
        row = session.scalars(select(Sighting)).one()
    assert (row.child_id, row.face_id, row.best_crop_path) == (ben, None, None)


def test_bad_reports_are_refused(runtime: Runtime) -> None:  # noqa: F811
    from childface.services.errors import InvalidInput

    base = TrackReport("door", "t", "match", None, 0.99, [], T0, T0, 1, None, None, False)
    for bad in (base, replace(base, decision="maybe", child_id=1), replace(base, source="", child_id=1),
                replace(base, track_id="x" * 65, child_id=1)):
        with pytest.raises(InvalidInput):
            record_track(runtime, bad)


def test_camera_status_and_frames(runtime: Runtime) -> None:  # noqa: F811
    db = runtime.db
    beat = {"uri_kind": "stream", "state": "running", "fps": 24.5, "faces_per_s": 3.0, "error": None}
    assert cameras.update_camera_status(db, "front-door", **beat) is False
    with pytest.raises(NotFound):
        cameras.take_frame(db, "front-door")
    cameras.request_frame(db, "front-door")
    assert cameras.update_camera_status(db, "front-door", **beat) is True
    cameras.store_frame(db, "front-door", b"\xff\xd8\xffjpeg")
    assert cameras.update_camera_status(db, "front-door", **beat) is False  # served the request
    assert cameras.take_frame(db, "front-door") == b"\xff\xd8\xffjpeg"
    with pytest.raises(NotFound):
        cameras.take_frame(db, "front-door")  # dropped once served
    cameras.update_camera_status(db, "front-door", **{**beat, "state": "reconnecting", "error": "EOF"})
    (view,) = cameras.list_cameras(db)
    assert (view.status.state, view.status.last_error, view.status.fps) == ("reconnecting", "EOF", 24.5)
    with pytest.raises(NotFound):
        cameras.request_frame(db, "nowhere")
    # a frame nobody fetched (its watcher may have stopped) is dropped after a minute
    cameras.store_frame(db, "front-door", b"\xff\xd8\xffold")
    with db.transaction() as session:
        session.get(CameraStatus, "front-door").frame_at = datetime.now(UTC) - timedelta(minutes=2)
    cameras.list_cameras(db)
    with db.session() as session:
        assert session.get(CameraStatus, "front-door").frame_jpeg is None


def test_a_stale_frame_is_dropped_when_asked_for(database) -> None:  # noqa: ANN001
    """take_frame refuses a stale frame and drops it for good (not rolled back with the refusal)."""
    beat = {"uri_kind": "stream", "state": "running", "fps": 1.0, "faces_per_s": 0.0, "error": None}
    cameras.update_camera_status(database, "hall", **beat)
    cameras.store_frame(database, "hall", b"\xff\xd8\xffold")
    with database.transaction() as session:
        session.get(CameraStatus, "hall").frame_at = datetime.now(UTC) - timedelta(minutes=2)
    with pytest.raises(NotFound) as refused:
        cameras.take_frame(database, "hall")
    assert refused.value.code == "no_frame"
    with database.session() as session:
        row = session.get(CameraStatus, "hall")
        assert (row.frame_jpeg, row.frame_at) == (None, None)


def test_attendance_lists_arrived_and_absent_children_per_group(runtime: Runtime, photos: Photos,  # noqa: F811
                                                                children: dict[str, int]) -> None:
    create_child(db=runtime.db, actor=STAFF, external_id="CAL", name="cal")  # no group, no photos
    record_track(runtime, track(runtime, photos.person(0, 4), track_id="a-1"))
    day, groups = attendance.attendance(runtime.db, runtime.settings, day=T0.date())
    summary = {g.group: ([a.name for a in g.arrived], [a.name for a in g.absent]) for g in groups}
    assert summary == {"Bears": (["ann"], []), "Owls": ([], ["ben"]), "(no group)": ([], ["cal"])}
    assert [g.group for g in groups] == ["Bears", "Owls", "(no group)"]
    _, owls = attendance.attendance(runtime.db, runtime.settings, day=T0.date(), group="Owls")
    assert [g.group for g in owls] == ["Owls"]
    _, next_day = attendance.attendance(runtime.db, runtime.settings, day=T0.date() + timedelta(days=1))
    assert all(not g.arrived for g in next_day)
    assert np.isfinite(groups[0].arrived[0].arrived_at.timestamp())



_RACER = """
import json, sys
from datetime import datetime
from childface.config import Settings
from childface.services.runtime import Runtime
from childface.services.sightings import TrackReport, record_track

url, media, child_id, track_id, at = sys.argv[1:]
runtime = Runtime(Settings(_env_file=None, database_url=url, media_dir=media, device="cpu"))
seen = datetime.fromisoformat(at)
report = TrackReport("front-door", track_id, "match", int(child_id), 0.97, [(int(child_id), 0.97)],
                     seen, seen, 10, None, None, False)
print("ready", flush=True)
sys.stdin.readline()  # go: both processes are loaded and write at the same moment
print(json.dumps(record_track(runtime, report)), flush=True)
"""


@pytest.mark.slow  # about 5 s unloaded: two Python processes import the package
def test_two_processes_racing_record_one_arrival(settings: Settings, database) -> None:  # noqa: ANN001
    import json
    import subprocess
    import sys

    child = create_child(db=database, actor=STAFF, external_id="RACE", name="racer")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, settings.database_url, str(settings.media_dir), str(child.id),
             f"proc-{n}", T0.isoformat()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for n in range(2)
    ]
    try:
        assert [r.stdout.readline().strip() for r in racers] == ["ready", "ready"]
        for r in racers:
            r.stdin.write("go\n")
            r.stdin.flush()
        outputs = [json.loads(r.stdout.readline()) for r in racers]
        assert [r.wait(timeout=60) for r in racers] == [0, 0]
    finally:
        for r in racers:
            r.kill()
    assert sorted(e for events in outputs for e in events) == ["arrival"]
    with database.session() as session:
        assert session.scalar(select(func.count(Arrival.id))) == 1
        assert session.scalar(select(func.count(Sighting.id))) == 2
