"""Face tracking: one person walking past a camera is one track, not one recognition per frame.

The tracker is SORT (a constant-velocity Kalman filter per face box, Hungarian
assignment of detections to predicted boxes), with the Kalman filter from
`filterpy` and the assignment from `scipy.optimize.linear_sum_assignment`.

Why SORT on filterpy + scipy, and not ByteTrack (`supervision`) or `norfair`:

- dependencies: scipy (and matplotlib, which filterpy needs) are already installed; filterpy is
  one small pure-Python package (MIT, maintained: 2.0 in 2026). `supervision` is a large
  toolkit (annotators, dataset formats) that pulls in OpenCV's GUI build beside our headless
  one and several more packages, for a tracker of a few hundred lines; `norfair` is itself a
  layer over filterpy with a general distance framework that face boxes do not need.
- licence: filterpy MIT, scipy BSD; nothing copyleft.
- short occlusions: a track lives on its Kalman prediction for `max_age` frames without a
  detection and picks the face up again where the prediction put it, so a face hidden for a
  second (or blurred out of the detector's reach) keeps its track and its identity.
  ByteTrack's extra pass over low-score detections buys little here: the detector's threshold
  and the quality gate already decide which faces count.
- speed on 2 cores: a few faces per frame cost microseconds (a 7x7 filter per track and a
  tiny assignment); the detector is what costs. The filter's `predict` also carries the boxes
  through the frames the detection stride skips.
- detection stride: call `predict()` on every frame and `update()` only with the detections of
  the frames that were detected; the association uses the predicted boxes, so faces that moved
  a lot between two detections still match.

Association: IoU between detections and predicted boxes first; detections left over are then
matched on centre distance relative to the box size (fast-moving faces at a large stride).
A track is confirmed after `min_hits` detections (one-frame false detections never become
tracks) and ends `max_age` frames after its last detection, or as soon as its predicted box
has left the frame.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from filterpy.kalman import KalmanFilter
from scipy.optimize import linear_sum_assignment

Box = tuple[float, float, float, float]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (n, 4) with every box in `b` (m, 4), boxes as x1, y1, x2, y2."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _to_z(box: np.ndarray) -> np.ndarray:
    """x1, y1, x2, y2 -> the filter's measurement: centre x, centre y, area, aspect (w / h)."""
    w, h = max(box[2] - box[0], 1.0), max(box[3] - box[1], 1.0)
    return np.array([[box[0] + w / 2], [box[1] + h / 2], [w * h], [w / h]])


def _to_box(x: np.ndarray) -> np.ndarray:
    area, aspect = max(float(x[2, 0]), 1.0), max(float(x[3, 0]), 1e-3)
    w = np.sqrt(area * aspect)
    h = area / w
    return np.array([x[0, 0] - w / 2, x[1, 0] - h / 2, x[0, 0] + w / 2, x[1, 0] + h / 2])


@dataclass
class Track:
    """One face over time. `detection` is the index of this frame's detection it matched, or None."""

    id: int
    filter: KalmanFilter = field(repr=False)
    hits: int = 1
    age: int = 0  # frames since the track began
    since_update: int = 0  # frames since the last matched detection
    detection: int | None = None
    confirmed: bool = False

    @property
    def box(self) -> Box:
        """The current box: the filter's estimate (corrected on a detected frame, predicted between)."""
        x1, y1, x2, y2 = _to_box(self.filter.x)
        return float(x1), float(y1), float(x2), float(y2)


@dataclass(frozen=True)
class TrackerConfig:
    #: frames a track survives without a detection (short occlusions, blur, the detection stride)
    max_age: int = 20
    #: detections before a track counts (filters one-off false detections)
    min_hits: int = 2
    #: IoU a detection needs with a predicted box to continue that track
    iou_threshold: float = 0.2
    #: second pass: centre distance at most this many box sizes (sqrt of the area)
    max_centre_distance: float = 0.8


class FaceTracker:
    """SORT over face boxes for one video source. Not thread-safe: one per source.

    Per frame: `predict()`, which returns the confirmed tracks that ended (the caller finalises
    them), then `update(boxes)` when the frame was detected.
    """

    def __init__(
        self, config: TrackerConfig | None = None, frame_size: tuple[int, int] | None = None
    ) -> None:
        self.config = config or TrackerConfig()
        self.frame_size = frame_size  # (width, height): tracks whose prediction leaves it end early
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)

    @property
    def active(self) -> list[Track]:
        """Confirmed tracks that are alive now."""
        return [t for t in self.tracks if t.confirmed]

    def predict(self) -> list[Track]:
        """Advance every track one frame; returns the confirmed tracks that ended (too old, or gone out
        of the frame). Unconfirmed ones just vanish."""
        ended: list[Track] = []
        kept: list[Track] = []
        for track in self.tracks:
            if track.filter.x[6, 0] + track.filter.x[2, 0] <= 0:  # the area would turn negative
                track.filter.x[6, 0] = 0.0
            track.filter.predict()
            track.age += 1
            track.since_update += 1
            track.detection = None
            gone = track.since_update > self.config.max_age or self._outside(track.box)
            if gone:
                if track.confirmed:
                    ended.append(track)
            else:
                kept.append(track)
        self.tracks = kept
        return ended

    def update(self, boxes: np.ndarray) -> None:
        """Correct the tracks with this frame's detections (n, 4); unmatched detections start tracks.

        After this, `track.detection` says which detection each track took (tracks end in `predict`).
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        predicted = np.array([t.box for t in self.tracks], dtype=np.float64).reshape(-1, 4)
        pairs, free_dets, _ = self._associate(boxes, predicted)  # unmatched tracks coast until max_age
        for d, t in pairs:
            track = self.tracks[t]
            track.filter.update(_to_z(boxes[d]))
            track.hits += 1
            track.since_update = 0
            track.detection = d
            track.confirmed = track.confirmed or track.hits >= self.config.min_hits
        for d in free_dets:
            self.tracks.append(self._start(boxes[d], d))

    def end_all(self) -> list[Track]:
        """End every track (end of a file, a dropped stream); the confirmed ones come back."""
        ended = [t for t in self.tracks if t.confirmed]
        self.tracks = []
        return ended

    def _associate(
        self, boxes: np.ndarray, predicted: np.ndarray
    ) -> tuple[list[tuple[int, int]], list[int], list[int]]:
        pairs: list[tuple[int, int]] = []
        free_dets, free_tracks = list(range(len(boxes))), list(range(len(predicted)))
        if len(boxes) and len(predicted):
            overlap = iou_matrix(boxes, predicted)
            rows, cols = linear_sum_assignment(-overlap)
            for d, t in zip(rows, cols, strict=True):
                if overlap[d, t] >= self.config.iou_threshold:
                    pairs.append((int(d), int(t)))
            free_dets = [d for d in free_dets if d not in {p[0] for p in pairs}]
            free_tracks = [t for t in free_tracks if t not in {p[1] for p in pairs}]
        if free_dets and free_tracks:
            det_c = (boxes[free_dets, :2] + boxes[free_dets, 2:]) / 2
            trk = predicted[free_tracks]
            trk_c = (trk[:, :2] + trk[:, 2:]) / 2
            size = np.sqrt(np.maximum((trk[:, 2] - trk[:, 0]) * (trk[:, 3] - trk[:, 1]), 1.0))
            distance = np.linalg.norm(det_c[:, None, :] - trk_c[None, :, :], axis=2) / size[None, :]
            rows, cols = linear_sum_assignment(distance)
            extra = [
                (free_dets[r], free_tracks[c])
                for r, c in zip(rows, cols, strict=True)
                if distance[r, c] <= self.config.max_centre_distance
            ]
            pairs += extra
            free_dets = [d for d in free_dets if d not in {p[0] for p in extra}]
            free_tracks = [t for t in free_tracks if t not in {p[1] for p in extra}]
        return pairs, free_dets, free_tracks

    def _start(self, box: np.ndarray, detection: int) -> Track:
        kf = KalmanFilter(dim_x=7, dim_z=4)
        # state: centre x, centre y, area, aspect, and the velocities of the first three
        kf.F = np.eye(7)
        kf.F[0, 4] = kf.F[1, 5] = kf.F[2, 6] = 1.0
        kf.H = np.zeros((4, 7))
        kf.H[0, 0] = kf.H[1, 1] = kf.H[2, 2] = kf.H[3, 3] = 1.0
        kf.R[2:, 2:] *= 10.0
        kf.P[4:, 4:] *= 1000.0  # the velocities are unknown at the start
        kf.P *= 10.0
        kf.Q[-1, -1] *= 0.01
        kf.Q[4:, 4:] *= 0.01
        kf.x[:4] = _to_z(box)
        confirmed = self.config.min_hits <= 1
        return Track(id=next(self._ids), filter=kf, detection=detection, confirmed=confirmed)

    def _outside(self, box: Box) -> bool:
        if self.frame_size is None:
            return False
        width, height = self.frame_size
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        return not (0 <= cx < width and 0 <= cy < height)
