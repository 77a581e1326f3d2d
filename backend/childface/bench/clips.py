"""Synthetic video clips built from packaged photos, with the true face box of every person per frame.

No real video of children is used anywhere: the clips are made from photos that
ship inside installed packages (insightface's t1.jpg group photo and Tom Hanks
portrait, scikit-image's astronaut). Each person is a head cut out of a photo
(an elliptical, feathered cut-out, so neighbours in the group photo stay out)
that slides, zooms or rises across a drawn background, so faces enter, cross
and leave the frame; the whole frame's light changes over time and one person
is blurred for a while. Clips are written with OpenCV (MJPG in AVI) and are
short, so tests stay fast.

    people = clip_people(pipeline)                      # the heads, found with the real detector
    clip = build_clip(people, tmp_path / "clip.avi")    # 640x480, 15 fps, five people
    clip.truth[frame]["t1_0"]                           # that person's face box in that frame
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from childface.vision.pipeline import FacePipeline

Box = tuple[float, float, float, float]

#: the group photo's faces used, by left-to-right position, and the portraits
GROUP_FACES = (0, 2, 4)
#: who appears in the default clip; the first three are the ones tests enroll
DEFAULT_CAST = ("t1_0", "tom_hanks", "t1_2", "astronaut", "t1_4")
#: a person is counted as visible when this share of the face box is inside the frame
VISIBLE_SHARE = 0.6


@dataclass(frozen=True)
class Person:
    """A head to paste: RGB pixels, a soft mask, and where the face box sits in it."""

    name: str
    rgb: np.ndarray  # (S, S, 3) uint8
    alpha: np.ndarray  # (S, S) float32, 0..1
    face: Box  # face box inside the sprite, pixels
    photo: np.ndarray  # the whole source photo (for enrollment)
    photo_box: Box  # the face box in the source photo


@dataclass
class Clip:
    path: Path
    width: int
    height: int
    fps: float
    frames: int
    #: per frame: person name -> face box (x1, y1, x2, y2) in frame pixels, for visible faces
    truth: list[dict[str, Box]] = field(default_factory=list)

    @property
    def people(self) -> list[str]:
        """Everyone visible in at least one frame, in order of first appearance."""
        seen: dict[str, None] = {}
        for boxes in self.truth:
            seen.update(dict.fromkeys(boxes))
        return list(seen)


def insightface_images() -> Path:
    """The folder of sample photos inside the installed insightface package."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        raise RuntimeError("the clip needs insightface's sample photos: pip install insightface --no-deps")
    return Path(spec.origin).parent / "data" / "images"


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise RuntimeError(f"cannot read {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _sprite(name: str, photo: np.ndarray, box: Box, side_px: int = 200) -> Person:
    """A square head cut-out around `box`, resized to `side_px`, with an elliptical feathered mask."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = 0.9 * max(w, h)
    pad = int(half) + 2
    padded = cv2.copyMakeBorder(photo, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    a, b, size = int(cx - half) + pad, int(cy - half) + pad, int(2 * half)
    crop = padded[b : b + size, a : a + size]
    scale = side_px / size
    rgb = cv2.resize(crop, (side_px, side_px), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    left, top = cx - half, cy - half
    face = ((x1 - left) * scale, (y1 - top) * scale, (x2 - left) * scale, (y2 - top) * scale)
    mask = np.zeros((side_px, side_px), np.float32)
    centre = (int(round((face[0] + face[2]) / 2)), int(round((face[1] + face[3]) / 2)))
    axes = (int(0.8 * (face[2] - face[0])), int(0.8 * (face[3] - face[1])))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), side_px / 40)
    return Person(name, np.ascontiguousarray(rgb), mask, face, photo, box)


def clip_people(pipeline: FacePipeline) -> dict[str, Person]:
    """The heads the clips use, located in their photos by the real detector."""
    from skimage import data

    folder = insightface_images()
    group = _read_rgb(folder / "t1.jpg")
    faces = sorted(pipeline.detect_only([group])[0], key=lambda f: f.box[0])
    if len(faces) != 6:
        raise RuntimeError(f"t1.jpg should show six faces, the detector found {len(faces)}")
    people = {f"t1_{i}": _sprite(f"t1_{i}", group, faces[i].box) for i in GROUP_FACES}
    portraits = (("astronaut", data.astronaut()), ("tom_hanks", _read_rgb(folder / "Tom_Hanks_54745.png")))
    for name, photo in portraits:
        found = pipeline.detect_only([photo])[0]
        if len(found) != 1:
            raise RuntimeError(f"{name}: expected one face, the detector found {len(found)}")
        people[name] = _sprite(name, photo, found[0].box)
    return people


def _background(width: int, height: int) -> np.ndarray:
    """A faceless hallway: a vertical gradient, a floor, a door and a few panels (deterministic)."""
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = np.array([150, 160, 175], np.float32), np.array([95, 85, 70], np.float32)
    frame = np.broadcast_to(top + (bottom - top) * rows, (height, width, 3)).copy()
    cv2.rectangle(frame, (0, int(height * 0.78)), (width, height), (120, 105, 90), -1)
    cv2.rectangle(frame, (int(width * 0.42), int(height * 0.12)), (int(width * 0.58), int(height * 0.78)),
                  (110, 80, 60), -1)
    rng = np.random.default_rng(12)
    for _ in range(6):
        x, y = int(rng.integers(0, width - 60)), int(rng.integers(0, height // 2))
        colour = tuple(float(c) for c in rng.integers(60, 220, 3))
        cv2.rectangle(frame, (x, y), (x + 50, y + 30), colour, -1)
    noise = rng.normal(0.0, 3.0, frame.shape).astype(np.float32)
    return np.clip(frame + noise, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Path:
    """Where a person's face centre is (fractions of the frame) and how tall it is, from frame a to b."""

    who: str
    start: int
    end: int
    begin: tuple[float, float]
    finish: tuple[float, float]
    face_h: tuple[float, float] = (0.2, 0.2)  # face height as a share of the frame height, begin -> finish
    blur: tuple[int, int] | None = None  # frames (from, to) during which the face is blurred


def _paths(cast: Sequence[str]) -> list[_Path]:
    """Five people in 75 frames: two cross the hall in opposite directions, one walks up to the camera
    (growing, blurred for a while), one rises from below, one enters late and leaves at the left."""
    if len(cast) > 5:
        raise ValueError("the clip has parts for five people at most")
    plan = [
        (0, 48, (-0.12, 0.17), (1.12, 0.15), (0.2, 0.2), None),
        (8, 62, (1.12, 0.72), (-0.12, 0.70), (0.2, 0.2), None),
        (18, 75, (0.55, 0.42), (0.50, 0.45), (0.14, 0.30), (40, 48)),
        (34, 75, (0.18, 1.15), (0.20, 0.60), (0.2, 0.2), None),
        (50, 75, (0.85, 0.30), (0.80, 0.25), (0.2, 0.2), None),
    ]
    return [_Path(who, *part) for who, part in zip(cast, plan, strict=False)]


def _paste(frame: np.ndarray, person: Person, centre: tuple[float, float], face_h: float, blur: bool) -> Box:
    """Paste the head so its face box is `face_h` pixels tall and centred on `centre`; the face's box."""
    fx1, fy1, fx2, fy2 = person.face
    scale = face_h / (fy2 - fy1)
    side = max(8, int(round(person.rgb.shape[0] * scale)))
    scale = side / person.rgb.shape[0]
    rgb = cv2.resize(person.rgb, (side, side), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(person.alpha, (side, side), interpolation=cv2.INTER_LINEAR)
    if blur:
        rgb = cv2.GaussianBlur(rgb, (0, 0), max(1.0, side / 90))
    left = int(round(centre[0] - (fx1 + fx2) / 2 * scale))
    top = int(round(centre[1] - (fy1 + fy2) / 2 * scale))
    h, w = frame.shape[:2]
    a0, b0 = max(0, left), max(0, top)
    a1, b1 = min(w, left + side), min(h, top + side)
    if a1 > a0 and b1 > b0:
        part = alpha[b0 - top : b1 - top, a0 - left : a1 - left, None]
        region = frame[b0:b1, a0:a1].astype(np.float32)
        sprite = rgb[b0 - top : b1 - top, a0 - left : a1 - left].astype(np.float32)
        frame[b0:b1, a0:a1] = (region * (1 - part) + sprite * part).astype(np.uint8)
    return (left + fx1 * scale, top + fy1 * scale, left + fx2 * scale, top + fy2 * scale)


def _visible(box: Box, width: int, height: int) -> bool:
    x1, y1, x2, y2 = box
    inside = max(0.0, min(x2, width) - max(x1, 0)) * max(0.0, min(y2, height) - max(y1, 0))
    return inside >= VISIBLE_SHARE * (x2 - x1) * (y2 - y1)


def render_frames(
    people: dict[str, Person],
    *,
    width: int = 640,
    height: int = 480,
    cast: Sequence[str] = DEFAULT_CAST,
    frames: int = 75,
) -> tuple[list[np.ndarray], list[dict[str, Box]]]:
    """The clip's RGB frames and, per frame, the visible people's face boxes."""
    missing = [name for name in cast if name not in people]
    if missing:
        raise ValueError(f"unknown people in the cast: {missing}")
    background = _background(width, height)
    plans = _paths(cast)
    images, truth = [], []
    for n in range(frames):
        frame = background.copy()
        boxes: dict[str, Box] = {}
        for plan in plans:
            if not plan.start <= n < plan.end:
                continue
            t = (n - plan.start) / max(1, plan.end - plan.start - 1)
            cx = (plan.begin[0] + (plan.finish[0] - plan.begin[0]) * t) * width
            cy = (plan.begin[1] + (plan.finish[1] - plan.begin[1]) * t) * height
            face_h = (plan.face_h[0] + (plan.face_h[1] - plan.face_h[0]) * t) * height
            blur = plan.blur is not None and plan.blur[0] <= n < plan.blur[1]
            box = _paste(frame, people[plan.who], (cx, cy), face_h, blur)
            if _visible(box, width, height):
                boxes[plan.who] = box
        # the light changes: a slow brightness swing of +-25 %
        gain = 1.0 + 0.25 * np.sin(2 * np.pi * n / max(frames, 1))
        images.append(np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8))
        truth.append(boxes)
    return images, truth


def write_clip(frames: Sequence[np.ndarray], path: Path, fps: float) -> None:
    """Write RGB frames to `path` as MJPG in AVI (OpenCV's FFmpeg reads it back everywhere)."""
    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    finally:
        writer.release()


def build_clip(
    people: dict[str, Person],
    path: Path,
    *,
    width: int = 640,
    height: int = 480,
    fps: float = 15.0,
    cast: Sequence[str] = DEFAULT_CAST,
    frames: int = 75,
) -> Clip:
    """Render and write a clip; its ground truth comes back with it."""
    images, truth = render_frames(people, width=width, height=height, cast=cast, frames=frames)
    write_clip(images, path, fps)
    return Clip(path=path, width=width, height=height, fps=fps, frames=frames, truth=truth)


@dataclass
class TrackScore:
    people: int  # people visible in the clip
    tracks: int  # distinct track ids seen
    identity_switches: int  # times a person's matched track id changed
    false_tracks: int  # tracks never matched to a person
    tracks_of: dict[str, list[str]]  # person -> the track ids matched to them, in order


def score_tracks(
    truth: Sequence[dict[str, Box]], observed: Sequence[Sequence[tuple[str, Box]]], min_iou: float = 0.3
) -> TrackScore:
    """Compare the tracks seen on each frame with the clip's truth (the usual multi-object count).

    Per frame, people and tracks are paired by IoU (Hungarian, at least `min_iou`); an identity
    switch is a person paired with a different track than the last time they were paired.
    """
    from scipy.optimize import linear_sum_assignment

    from childface.vision.tracking import iou_matrix

    last: dict[str, str] = {}
    tracks_of: dict[str, list[str]] = {}
    matched: set[str] = set()
    seen: set[str] = set()
    switches = 0
    for people, tracks in zip(truth, observed, strict=True):
        seen.update(track_id for track_id, _ in tracks)
        if not people or not tracks:
            continue
        names = list(people)
        overlap = iou_matrix(np.array([people[n] for n in names]), np.array([box for _, box in tracks]))
        for row, col in zip(*linear_sum_assignment(-overlap), strict=True):
            if overlap[row, col] < min_iou:
                continue
            name, track_id = names[row], tracks[col][0]
            matched.add(track_id)
            if name in last and last[name] != track_id:
                switches += 1
            last[name] = track_id
            if track_id not in tracks_of.setdefault(name, []):
                tracks_of[name].append(track_id)
    people_seen = {name for frame in truth for name in frame}
    return TrackScore(len(people_seen), len(seen), switches, len(seen - matched), tracks_of)
