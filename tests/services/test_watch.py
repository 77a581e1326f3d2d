"""`childface watch` end to end on the synthetic clip: real models, real database (both back ends).

Three of the clip's five people are enrolled from their photos through the
enrollment service; the clip shows each of them once, plus two strangers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from childface.config import Settings
from childface.db import Actor
from childface.db.models import Arrival, CameraStatus, ReviewItem, Sighting, WebhookDelivery
from childface.index import create_index
from childface.services.cameras import request_frame, take_frame
from childface.services.children import create_child
from childface.services.enrollment import Photo, enroll_photos
from childface.services.gallery import ChildIndex
from childface.services.runtime import Runtime
from childface.services.watch import Watcher, WatchOptions, vote
from childface.vision.video import Backoff, SourceSpec, VideoSource
from clips import Clip, MjpegServer, Person, build_clip, clip_people, score_tracks, write_clip

STAFF = Actor("user", "teacher")
ENROLLED = ("t1_0", "tom_hanks", "t1_2")
STRANGERS = ("astronaut", "t1_4")
#: with these photos other people score at most ~0.90 and the same person ~0.98 or more
THRESHOLDS = {"accept_threshold": 0.96, "review_threshold": 0.95}
CHILDFACE = str(Path(sys.executable).with_name("childface"))


@pytest.fixture(scope="module")
def people(pipeline) -> dict[str, Person]:  # noqa: ANN001
    return clip_people(pipeline)


@pytest.fixture(scope="module")
def clip(people: dict[str, Person], tmp_path_factory: pytest.TempPathFactory) -> Clip:
    return build_clip(people, Path(tmp_path_factory.mktemp("watch")) / "door.avi")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # a webhook configured (never delivered here): the outbox rows show which events were emitted
    return settings.model_copy(
        update={**THRESHOLDS, "webhook_urls": ["http://127.0.0.1:9/hook"], "webhook_secret": "s3cret"}
    )


@pytest.fixture
def runtime(settings: Settings, pipeline) -> Iterator[Runtime]:  # noqa: ANN001
    rt = Runtime(settings, pipeline=pipeline)
    rt.start(autosave=False)
    yield rt
    rt.close()


@pytest.fixture
def children(runtime: Runtime, people: dict[str, Person]) -> dict[str, int]:
    """The enrolled people: one photo each (the one the clip's head was cut from)."""
    ids = {}
    for name in ENROLLED:
        person = people[name]
        child = create_child(db=runtime.db, actor=STAFF, external_id=name, name=name)
        jpeg = cv2.imencode(".jpg", np.ascontiguousarray(person.photo[:, :, ::-1]))[1].tobytes()
        photo = Photo(data=jpeg, hint_box=person.photo_box)
        (outcome,) = enroll_photos(runtime=runtime, actor=STAFF, child_id=child.id, photos=[photo])
        assert outcome.status == "enrolled", outcome.message
        ids[name] = child.id
    return ids


def _rows(runtime: Runtime, statement):  # noqa: ANN001, ANN202
    with runtime.db.session() as session:
        return list(session.execute(statement))


def _events(runtime: Runtime) -> dict[str, int]:
    rows = _rows(runtime, select(WebhookDelivery.event, func.count()).group_by(WebhookDelivery.event))
    return {event: n for event, n in rows}


def test_each_enrolled_person_arrives_once_and_strangers_stay_unknown(
    runtime: Runtime, children: dict[str, int], clip: Clip, tmp_path: Path
) -> None:
    seen: list[list] = []
    empty_hall = tmp_path / "hall.avi"  # a second camera in the same process, nobody passing
    write_clip([np.full((120, 160, 3), 90, np.uint8)] * 12, empty_hall, fps=15)
    watcher = Watcher(
        runtime,
        [SourceSpec.parse(str(clip.path), name="front-door"), SourceSpec.parse(str(empty_hall), name="hall")],
        WatchOptions(health_file=tmp_path / "alive"),
        observer=lambda name, _frame, tracks: seen.append(tracks) if name == "front-door" else None,
    )
    summary = watcher.run()
    assert (tmp_path / "alive").is_file()
    assert summary.frames == clip.frames + 12
    score = score_tracks(clip.truth, seen)
    assert score.tracks == score.people == len(clip.people) == 5, score.tracks_of
    assert (score.identity_switches, score.false_tracks) == (0, 0), score.tracks_of
    assert summary.tracks == 5

    arrivals = _rows(runtime, select(Arrival.child_id, Arrival.source))
    assert sorted(arrivals) == sorted((children[name], "front-door") for name in ENROLLED)
    columns = (Sighting.decision, Sighting.child_id, Sighting.final, Sighting.track_id)
    sightings = _rows(runtime, select(*columns))
    assert all(final for _, _, final, _ in sightings) and len(sightings) == 5
    assert all(track_id.startswith(watcher.run_id + "-") for *_, track_id in sightings)
    decided = sorted((d.value, c) for d, c, _, _ in sightings)
    assert decided == sorted([("match", children[n]) for n in ENROLLED] + [("unknown", None)] * 2)
    assert _events(runtime) == {"arrival": 3, "sighting": 3, "unknown_person": 2}
    assert summary.events == {"arrival": 3, "sighting": 3, "unknown_person": 2}
    # matched tracks keep their best crop; strangers nothing
    crops = _rows(runtime, select(Sighting.decision, Sighting.best_crop_path))
    assert all((path is not None) == (decision.value == "match") for decision, path in crops)
    cameras = _rows(runtime, select(CameraStatus.name, CameraStatus.state, CameraStatus.uri_kind))
    assert sorted((n, s.value, k) for n, s, k in cameras) == [
        ("front-door", "stopped", "file"), ("hall", "stopped", "file")
    ]


@pytest.mark.slow  # ~7 s per back end: a `childface watch` process loads the models, then is killed
def test_kill_9_mid_stream_and_restart_records_no_second_arrival(
    settings: Settings, runtime: Runtime, children: dict[str, int], clip: Clip, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env.update(
        CHILDFACE_DATABASE_URL=settings.database_url, CHILDFACE_MEDIA_DIR=str(settings.media_dir),
        CHILDFACE_INDEX_DIR=str(settings.index_dir), CHILDFACE_DEVICE="cpu",
        CHILDFACE_ACCEPT_THRESHOLD=str(THRESHOLDS["accept_threshold"]),
        CHILDFACE_REVIEW_THRESHOLD=str(THRESHOLDS["review_threshold"]),
        CHILDFACE_WEBHOOK_URLS=json.dumps(settings.webhook_urls), CHILDFACE_WEBHOOK_SECRET="s3cret",
    )
    log = tmp_path / "watch.log"
    with log.open("wb") as out:
        killed = subprocess.Popen(
            [CHILDFACE, "watch", "--source", f"door={clip.path}", "--loop", "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and killed.poll() is None:
                if _rows(runtime, select(Arrival.id)):
                    break
                time.sleep(0.05)
            assert killed.poll() is None, log.read_text()
            os.kill(killed.pid, signal.SIGKILL)  # mid-stream: tracks open, an arrival recorded
        finally:
            killed.kill()
            killed.wait()
    before = _rows(runtime, select(Arrival.child_id, Arrival.sighting_id))
    assert before
    open_tracks = _rows(runtime, select(Sighting.track_id).where(Sighting.final.is_(False)))
    # the restart (the same loop as the command) sees everyone again, the ones who arrived included
    restarted = Watcher(runtime, [SourceSpec.parse(str(clip.path), name="door")])
    summary = restarted.run()
    assert summary.events["sighting"] == 3
    assert summary.events.get("arrival", 0) == 3 - len(before)
    after = _rows(runtime, select(Arrival.child_id, Arrival.sighting_id))
    assert sorted(c for c, _ in after) == sorted(children.values())
    assert set(before) <= set(after)  # the killed run's arrivals stand, none added for those children
    assert _events(runtime)["arrival"] == 3
    # the killed run's tracks stay as they were (not final); the restart's are new rows
    runs = {track_id.rsplit("-", 1)[0] for (track_id,) in _rows(runtime, select(Sighting.track_id))}
    assert len(runs) == 2 and restarted.run_id in runs
    assert all(not t.startswith(restarted.run_id) for (t,) in open_tracks)


def test_a_dropped_stream_reports_reconnecting_then_running(runtime: Runtime, clip: Clip) -> None:
    background = np.full((120, 160, 3), 90, np.uint8)  # no faces: the stream's state is what is tested
    states: list[str] = []
    frame: bytes | None = None
    with MjpegServer([background] * 5, fps=30, per_connection=12, refuse=3) as server:
        spec = SourceSpec.parse(server.url, name="gate")
        source = VideoSource(spec, backoff=Backoff(0.2, 0.4))
        watcher = Watcher(runtime, [spec], WatchOptions(heartbeat_s=0.2), sources=[source])
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                rows = _rows(runtime, select(CameraStatus.state))
                if rows and (not states or states[-1] != rows[0][0].value):
                    states.append(rows[0][0].value)
                    if states[-1] == "running" and states.count("running") == 1:
                        # no frame is kept unless staff ask for one; then the next heartbeat stores it
                        assert _rows(runtime, select(CameraStatus.frame_jpeg))[0][0] is None
                        request_frame(runtime.db, "gate")
                if frame is None and states and _rows(runtime, select(CameraStatus.frame_jpeg))[0][0]:
                    frame = take_frame(runtime.db, "gate")
                if "reconnecting" in states and states[-1] == "running" and server.connections >= 2:
                    break
                time.sleep(0.02)
        finally:
            watcher.stop()
            thread.join(30)
    assert "reconnecting" in states, states
    assert "running" in states[: states.index("reconnecting")] and states[-1] == "running", states
    (row,) = _rows(runtime, select(CameraStatus.state, CameraStatus.uri_kind, CameraStatus.last_error))
    assert (row[0].value, row[1]) == ("stopped", "stream")
    assert frame is not None
    assert cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)


@pytest.fixture(scope="module")
def one_person_clip(people: dict[str, Person], tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """Only the first enrolled person crossing the hall (48 frames)."""
    path = Path(tmp_path_factory.mktemp("watch-review")) / "one.avi"
    return build_clip(people, path, cast=ENROLLED[:1], frames=48)


def test_an_uncertain_track_goes_to_the_review_queue_with_its_crop(
    runtime: Runtime, children: dict[str, int], one_person_clip: Clip
) -> None:
    # a rule too strict for any real face to match: the enrolled person is someone to look at
    runtime.settings = runtime.configured_settings.model_copy(
        update={"accept_threshold": 0.9999, "review_threshold": 0.9}
    )
    summary = Watcher(runtime, [SourceSpec.parse(str(one_person_clip.path), name="door")]).run()
    assert summary.tracks == 1 and summary.events == {"review": 1}
    ((decision, child_id, face_id, crop, final),) = _rows(runtime, select(
        Sighting.decision, Sighting.child_id, Sighting.face_id, Sighting.best_crop_path, Sighting.final
    ))
    assert (decision.value, child_id, final) == ("review", children[ENROLLED[0]], True)
    assert face_id is not None and crop is not None
    ((candidates,),) = _rows(runtime, select(ReviewItem.candidates).where(ReviewItem.face_id == face_id))
    assert candidates[0]["child_id"] == children[ENROLLED[0]]
    assert _rows(runtime, select(Arrival.id)) == []


def _unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_the_vote_is_the_mean_of_the_best_faces_scores_under_the_api_rule() -> None:
    rule = Settings(
        _env_file=None, device="cpu", accept_threshold=0.9, review_threshold=0.8, match_margin=0.05
    )
    children = ChildIndex(create_index(rule, "m", 4))
    children.upsert([1, 2], [10, 20], np.stack([_unit(1, 0, 0, 0), _unit(0, 1, 0, 0)]))
    near_10 = [_unit(1, 0.2, 0, 0), _unit(1, 0.3, 0.1, 0)]
    result = vote(children, np.stack(near_10), rule)
    expected = np.mean([v[0] for v in near_10])  # cosine to child 10's only template
    assert (result.decision, result.child_id) == ("match", 10)
    assert result.score == pytest.approx(expected, abs=1e-5)
    assert [c for c, _ in result.candidates] == [10, 20]
    # one clear face and one between the two children: the mean falls below accept -> review, 10 leads
    torn = vote(children, np.stack([_unit(1, 0.2, 0, 0), _unit(1, 1, 0, 0)]), rule)
    assert (torn.decision, torn.child_id) == ("review", 10)
    # nobody near: unknown, no child, the best score still reported
    stranger = vote(children, _unit(0, 0, 1, 0.3)[None], rule)
    assert (stranger.decision, stranger.child_id) == ("unknown", None) and stranger.score is not None
    empty = ChildIndex(create_index(rule, "m", 4))
    assert vote(empty, _unit(1, 0, 0, 0)[None], rule) == vote(empty, _unit(0, 1, 0, 0)[None], rule)
    assert vote(empty, _unit(1, 0, 0, 0)[None], rule).decision == "unknown"


def test_a_track_embeds_only_good_faces_not_too_often_and_then_only_better_ones() -> None:
    from datetime import UTC, datetime

    from childface.services.watch import Evidence, TrackIdentity
    from childface.vision.pipeline import DetectedFace
    from childface.vision.quality import QualityReport

    def face(score: float, passed: bool = True) -> DetectedFace:
        quality = QualityReport(100.0, 0.5, 0.1, 0.0, 0.99, score, passed, [] if passed else ["blurry"])
        return DetectedFace((0, 0, 100, 100), 0.99, np.zeros((5, 2), np.float32), quality, None,
                            np.zeros((150, 150, 3), np.uint8))

    options = WatchOptions(embed_every=5, votes=2)
    now = datetime.now(UTC)
    track = TrackIdentity("run-1", now, now)
    assert not track.wants(face(0.9, passed=False), 0, options)  # failed the quality gate
    for frame, score in ((0, 0.5), (5, 0.4)):  # the first `votes` faces: any that pass
        assert track.wants(face(score), frame, options)
        track.last_embedded = frame
        track.add(Evidence(face(score).quality, _unit(1, 0, 0, 0), face(score).chip), options)
    assert not track.wants(face(0.9), 7, options)  # too soon after the last one
    assert not track.wants(face(0.45), 10, options)  # not better than the best so far (0.5)
    assert track.wants(face(0.6), 10, options)
    track.add(Evidence(face(0.6).quality, _unit(1, 0, 0, 0), face(0.6).chip), options)
    assert [e.quality.score for e in track.evidence] == [0.6, 0.5]  # the worst dropped
