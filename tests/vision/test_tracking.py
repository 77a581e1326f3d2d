"""The face tracker: boxes that move, cross, vanish for a while and leave; and the real synthetic clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from childface.vision.tracking import FaceTracker, TrackerConfig, iou_matrix
from clips import Clip, build_clip, clip_people, score_tracks


def _box(cx: float, cy: float, size: float = 80.0) -> tuple[float, float, float, float]:
    return (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)


def _run(boxes_per_frame: list[list[tuple[float, float, float, float]]], stride: int = 1,
         frame_size: tuple[int, int] | None = (640, 480), **config: object) -> tuple[list, list[int]]:
    """Track the boxes (detected every `stride`-th frame); per frame the active (id, box), and ended ids."""
    tracker = FaceTracker(TrackerConfig(**config), frame_size=frame_size)  # type: ignore[arg-type]
    seen, ended = [], []
    for n, boxes in enumerate(boxes_per_frame):
        ended += [t.id for t in tracker.predict()]
        if n % stride == 0:
            tracker.update(np.array(boxes, dtype=np.float64).reshape(-1, 4))
        seen.append([(str(t.id), t.box) for t in tracker.active])
    ended += [t.id for t in tracker.end_all()]
    return seen, ended


def test_iou_matrix() -> None:
    a = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], dtype=np.float64)
    b = np.array([[5, 0, 15, 10]], dtype=np.float64)
    assert iou_matrix(a, b) == pytest.approx(np.array([[1 / 3], [0.0]]))
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)


@pytest.mark.parametrize("stride", [1, 3])
def test_two_faces_crossing_keep_their_tracks(stride: int) -> None:
    frames = 60
    truth = [{"left": _box(60 + 9 * n, 150), "right": _box(580 - 9 * n, 260)} for n in range(frames)]
    seen, ended = _run([list(t.values()) for t in truth], stride=stride)
    score = score_tracks(truth, seen)
    assert (score.tracks, score.identity_switches, score.false_tracks) == (2, 0, 0)
    assert sorted(ended) == [1, 2]


def test_a_face_hidden_for_a_while_keeps_its_track() -> None:
    # walks right; hidden (no detection) for 10 frames in the middle, then found where the filter predicted
    path = [_box(80 + 8 * n, 240) for n in range(50)]
    boxes = [[] if 20 <= n < 30 else [path[n]] for n in range(50)]
    seen, ended = _run(boxes)
    assert {track_id for frame in seen for track_id, _ in frame} == {"1"}
    assert ended == [1]
    score = score_tracks([{"p": b} for b in path], seen)
    assert score.identity_switches == 0


def test_a_one_frame_false_detection_never_becomes_a_track() -> None:
    boxes = [[_box(300, 200)] + ([_box(100, 400, 30)] if n == 5 else []) for n in range(20)]
    seen, ended = _run(boxes)
    assert {track_id for frame in seen for track_id, _ in frame} == {"1"}
    assert ended == [1]


def test_tracks_end_when_they_leave_the_frame_or_are_lost_too_long() -> None:
    # leaves at the right edge: ends as soon as its predicted centre is outside, long before max_age
    leaving = [[_box(500 + 20 * n, 240)] if 500 + 20 * n < 640 else [] for n in range(30)]
    tracker = FaceTracker(TrackerConfig(max_age=100), frame_size=(640, 480))
    ended_at = None
    for n, boxes in enumerate(leaving):
        if tracker.predict():
            ended_at = n
            break
        tracker.update(np.array(boxes).reshape(-1, 4))
    assert ended_at is not None and ended_at <= 9
    # standing still, then gone: ends after max_age frames without a detection
    seen, ended = _run([[_box(300, 200)] if n < 5 else [] for n in range(30)], max_age=10)
    assert ended == [1]
    assert len(seen[14]) == 1 and seen[16] == []


# ---- the synthetic clip through the real detector ----------------------------------------------------


@pytest.fixture(scope="module")
def clip(pipeline_cpu, tmp_path_factory: pytest.TempPathFactory) -> Clip:  # noqa: ANN001
    return build_clip(clip_people(pipeline_cpu), Path(tmp_path_factory.mktemp("clip")) / "clip.avi")


def test_the_synthetic_clip_gives_one_track_per_person_and_no_identity_switch(
    pipeline_cpu, clip: Clip  # noqa: ANN001
) -> None:
    import cv2

    capture = cv2.VideoCapture(str(clip.path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    assert len(frames) == clip.frames
    stride = 3
    detected = pipeline_cpu.detect_only(frames[::stride])
    tracker = FaceTracker(frame_size=(clip.width, clip.height))
    seen = []
    for n in range(len(frames)):
        tracker.predict()
        if n % stride == 0:
            tracker.update(np.array([f.box for f in detected[n // stride]]).reshape(-1, 4))
        seen.append([(str(t.id), t.box) for t in tracker.active])
    score = score_tracks(clip.truth, seen)
    assert score.people == len(clip.people) == 5
    assert score.tracks == score.people, score.tracks_of
    assert (score.identity_switches, score.false_tracks) == (0, 0), score.tracks_of
