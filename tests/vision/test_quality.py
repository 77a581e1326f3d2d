"""Quality gate on real photos and controlled variations of them (blur, downscaling, rotated landmarks)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from childface.vision.alignment import ARCFACE_TEMPLATE_112, align_faces
from childface.vision.quality import QualityReport, assess, face_region, laplacian_variance, pose_proxies

REASONS = {"too_small", "blurred", "profile", "tilted", "low_detector_score", "low_quality"}


def _faces(pipeline, rgb: np.ndarray):
    return pipeline.detect_only([rgb])[0]


def test_real_photos_pass(pipeline_cpu, group_photo, portrait, astronaut):
    for photo, expected in ((group_photo, 6), (portrait, 1), (astronaut, 1)):
        faces = _faces(pipeline_cpu, photo.rgb)
        assert len(faces) == expected, photo.name
        for face in faces:
            q = face.quality
            assert isinstance(q, QualityReport)
            assert q.passed and q.reasons == [], (photo.name, q)
            assert 0.0 <= q.score <= 1.0 and q.score > 0.6
            assert q.sharpness > 0.5 and q.yaw < 0.7 and abs(q.roll_deg) < 30


def test_heavy_blur_is_blurred(pipeline_cpu, group_photo, astronaut):
    for photo in (group_photo, astronaut):
        blurred = cv2.GaussianBlur(photo.rgb, (0, 0), 6)
        faces = _faces(pipeline_cpu, blurred)
        assert faces, f"the detector still finds the blurred faces in {photo.name}"
        for face in faces:
            assert not face.quality.passed
            assert "blurred" in face.quality.reasons
            assert face.quality.sharpness < 0.1


def test_tiny_faces_are_too_small(pipeline_cpu, group_photo, portrait):
    for photo in (group_photo, portrait):
        sides = [min(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in _faces(pipeline_cpu, photo.rgb)]
        factor = 20 / max(sides)  # the largest face becomes ~20 px
        small = cv2.resize(photo.rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        canvas = np.full((max(200, small.shape[0]), max(200, small.shape[1]), 3), 127, np.uint8)
        canvas[: small.shape[0], : small.shape[1]] = small
        faces = _faces(pipeline_cpu, canvas)
        assert faces, photo.name
        for face in faces:
            assert face.quality.size_px < 25
            assert "too_small" in face.quality.reasons and not face.quality.passed


def test_pose_proxies_on_controlled_landmarks():
    frontal = ARCFACE_TEMPLATE_112.astype(np.float64)
    yaw, roll = pose_proxies(frontal[None])
    assert yaw[0] < 0.02 and abs(roll[0]) < 0.5
    # rotating the whole face changes roll only
    angle = np.radians(40)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    yaw_r, roll_r = pose_proxies(((frontal - 56) @ rotation.T + 56)[None])
    assert yaw_r[0] < 0.02 and roll_r[0] == pytest.approx(40, abs=0.5)

    # a head turning about the vertical axis raises yaw only
    proxies = {}
    for degrees in (0, 30, 60, 80):
        yaw_t, roll_t = pose_proxies(_turned_head(degrees)[None])
        assert abs(roll_t[0]) < 0.5
        proxies[degrees] = yaw_t[0]
    assert proxies[0] < 0.01 < proxies[30] < 0.4 < proxies[60] < 0.7 < proxies[80]


def _turned_head(degrees: float, scale: float = 40, origin: tuple[float, float] = (100, 100)) -> np.ndarray:
    """5 landmarks of a rough 3-D face (units of eye distance: eyes at depth 0, mouth corners 0.1 and
    the nose tip 0.5 in front) turned about the vertical axis, projected orthographically."""
    face_3d = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0, 0.55, 0.5], [-0.4, 1.1, 0.1], [0.4, 1.1, 0.1]])
    t = np.radians(degrees)
    x = face_3d[:, 0] * np.cos(t) + face_3d[:, 2] * np.sin(t)
    return np.stack([x, face_3d[:, 1]], axis=1) * scale + np.array(origin)


def _assess_one(settings, chips, landmarks, score=0.999, box_side=120.0):
    box = np.array([[0, 0, box_side, box_side]])
    return assess(chips, ARCFACE_TEMPLATE_112, box, landmarks[None], np.array([score]), settings)[0]


def test_reason_codes_from_settings(settings_cpu, group_photo, pipeline_cpu):
    face = _faces(pipeline_cpu, group_photo.rgb)[0]
    chips, _ = align_faces([group_photo.rgb], [0], face.landmarks[None], ARCFACE_TEMPLATE_112, 112)
    good = _assess_one(settings_cpu, chips, face.landmarks)
    assert good.passed and good.reasons == []

    angle = np.radians(60)
    centre = face.landmarks.mean(axis=0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    tilted = (face.landmarks - centre) @ rotation.T + centre
    assert _assess_one(settings_cpu, chips, tilted).reasons == ["tilted"]

    profile = _turned_head(80, scale=50, origin=tuple(face.landmarks[:2].mean(axis=0)))
    assert _assess_one(settings_cpu, chips, profile).reasons == ["profile"]

    assert _assess_one(settings_cpu, chips, face.landmarks, score=0.5).reasons == ["low_detector_score"]
    assert _assess_one(settings_cpu, chips, face.landmarks, box_side=30).reasons == ["too_small"]

    strict = settings_cpu.model_copy(update={"quality_min_score": 0.99})
    assert _assess_one(strict, chips, face.landmarks).reasons == ["low_quality"]

    for report in (good, _assess_one(settings_cpu, chips, tilted)):
        assert set(report.reasons) <= REASONS
        assert set(report.to_dict()) >= {
            "size_px",
            "sharpness",
            "yaw",
            "roll_deg",
            "score",
            "passed",
            "reasons",
        }


def test_sharpness_is_the_laplacian_variance_of_the_inner_face(group_photo, pipeline_cpu):
    face = _faces(pipeline_cpu, group_photo.rgb)[0]
    chips, _ = align_faces([group_photo.rgb], [0], face.landmarks[None], ARCFACE_TEMPLATE_112, 112)
    rows, cols, factor = face_region(ARCFACE_TEMPLATE_112)
    assert factor == pytest.approx(1.0, abs=0.01)
    chip = chips[0].permute(1, 2, 0).numpy()
    weights = np.array([0.299, 0.587, 0.114])
    grey = (chip[rows, cols].astype(np.float64) * weights).sum(axis=2)
    expected = cv2.Laplacian(grey, cv2.CV_64F).var()  # OpenCV's 3x3 aperture, reflect-101 border
    assert laplacian_variance(chips, ARCFACE_TEMPLATE_112)[0].item() == pytest.approx(expected, rel=1e-4)
    assert laplacian_variance(
        torch.zeros((0, 3, 112, 112), dtype=torch.uint8), ARCFACE_TEMPLATE_112
    ).shape == (0,)
