"""Five-point alignment: the similarity fit, both warps, their pixel conventions, real faces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from childface.vision.alignment import (
    ARCFACE_TEMPLATE_112,
    align_faces,
    estimate_similarity,
    transform_points,
)

TEMPLATE_150 = ARCFACE_TEMPLATE_112 * (150 / 112)  # any template works for the warp's own tests


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]], dtype=np.float64)


def test_estimate_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    truths = [
        _similarity(rng.uniform(-90, 90), rng.uniform(0.3, 3), rng.uniform(-50, 200, 2)) for _ in range(8)
    ]
    # image points that the true transform maps exactly onto the template
    points = np.stack(
        [(np.linalg.inv(t[:, :2]) @ (ARCFACE_TEMPLATE_112.T.astype(np.float64) - t[:, 2:])).T for t in truths]
    )
    matrices = estimate_similarity(torch.from_numpy(points), torch.from_numpy(ARCFACE_TEMPLATE_112))
    np.testing.assert_allclose(matrices.numpy(), np.stack(truths), atol=1e-4)
    mapped = transform_points(torch.from_numpy(points).float(), matrices)
    np.testing.assert_allclose(mapped.numpy(), np.broadcast_to(ARCFACE_TEMPLATE_112, mapped.shape), atol=1e-3)


def test_estimate_similarity_never_reflects():
    mirrored = ARCFACE_TEMPLATE_112.copy()
    mirrored[:, 0] = 200 - mirrored[:, 0]  # a reflection of the template
    matrix = estimate_similarity(torch.from_numpy(mirrored)[None], torch.from_numpy(ARCFACE_TEMPLATE_112))[0]
    assert torch.linalg.det(matrix[:, :2]) > 0


def _dots_image(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Dark image with a bright Gaussian dot (sigma 2 px) at each point."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    image = np.zeros(shape, dtype=np.float64)
    for x, y in points:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.0**2))
    grey = np.clip(image * 255, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _centroids(chip: np.ndarray, near: np.ndarray, radius: int = 6) -> np.ndarray:
    grey = chip[:, :, 0].astype(np.float64)
    found = []
    for x, y in near:
        x0, y0 = int(round(x)) - radius, int(round(y)) - radius
        window = grey[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1]
        ys, xs = np.mgrid[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]]
        found.append([(xs * window).sum() / window.sum(), (ys * window).sum() / window.sum()])
    return np.array(found)


@pytest.mark.parametrize("method", ["opencv", "torch"])
@pytest.mark.parametrize(("template", "size"), [(ARCFACE_TEMPLATE_112, 112), (TEMPLATE_150, 150)])
def test_landmarks_land_on_the_template(method, template, size):
    """Dots drawn at the landmarks of a rotated, scaled face end up on the template (< 0.5 px)."""
    truth = _similarity(25, 0.45, (0, 0))  # image -> chip; the face centred at image (180, 210):
    truth[:, 2] = template.mean(axis=0) - truth[:, :2] @ np.array([180.0, 210.0])
    inverse = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2]
    points = (inverse[:, :2] @ template.T.astype(np.float64) + inverse[:, 2:]).T
    image = _dots_image(points, (420, 360))
    chips, matrices = align_faces([image], [0], points[None], template, size, method=method)
    assert chips.dtype == torch.uint8 and chips.shape == (1, 3, size, size)
    np.testing.assert_allclose(matrices[0].numpy(), truth, atol=1e-4)
    found = _centroids(chips[0].permute(1, 2, 0).numpy(), template)
    np.testing.assert_allclose(found, template, atol=0.5)


@pytest.mark.parametrize(("template", "size"), [(ARCFACE_TEMPLATE_112, 112), (TEMPLATE_150, 150)])
def test_opencv_and_torch_warps_agree_on_real_faces(detector_faces, template, size):
    image, landmarks = detector_faces
    index = [0] * len(landmarks)
    a, _ = align_faces([image], index, landmarks, template, size, method="opencv")
    b, _ = align_faces([image], index, landmarks, template, size, method="torch")
    difference = (a.int() - b.int()).abs()
    assert difference.max() <= 1  # OpenCV rounds its bilinear weights to 1/32
    assert difference.float().mean() < 0.01


def test_mirrored_face_gives_mirrored_chip(detector_faces):
    """Mirror photo, landmarks and template: the chip is the mirror image (pixel centres are right)."""
    image, landmarks = detector_faces
    width, size = image.shape[1], 112
    swap = [1, 0, 2, 4, 3]  # image-left and image-right trade places under a mirror
    mirrored_points = landmarks[:, swap].copy()
    mirrored_points[..., 0] = width - 1 - mirrored_points[..., 0]
    mirrored_template = ARCFACE_TEMPLATE_112[swap].copy()
    mirrored_template[:, 0] = size - 1 - mirrored_template[:, 0]
    index = [0] * len(landmarks)
    for method in ("opencv", "torch"):
        chips, _ = align_faces([image], index, landmarks, ARCFACE_TEMPLATE_112, size, method=method)
        flipped, _ = align_faces(
            [np.ascontiguousarray(image[:, ::-1])],
            index,
            mirrored_points,
            mirrored_template,
            size,
            method=method,
        )
        assert (chips.flip(-1).int() - flipped.int()).abs().max() <= 1, method


def test_real_faces_fit_the_arcface_template(detector_faces):
    image, landmarks = detector_faces
    _, matrices = align_faces([image], [0] * len(landmarks), landmarks, ARCFACE_TEMPLATE_112, 112)
    residual = transform_points(torch.from_numpy(landmarks), matrices) - torch.from_numpy(
        ARCFACE_TEMPLATE_112
    )
    eye_distance = float(ARCFACE_TEMPLATE_112[1, 0] - ARCFACE_TEMPLATE_112[0, 0])
    # real faces are not the template: t1's faces fit within 2-9 px (mean 4.5) at 112 px
    assert residual.norm(dim=-1).mean() < 0.25 * eye_distance


def test_faces_from_several_images_in_one_call(group_photo, astronaut, detector_faces):
    _, landmarks = detector_faces
    images = [astronaut.rgb, group_photo.rgb]
    index = [1] * len(landmarks)
    both, _ = align_faces(images, index, landmarks, ARCFACE_TEMPLATE_112, 112, method="torch")
    alone, _ = align_faces([group_photo.rgb], [0] * len(landmarks), landmarks, ARCFACE_TEMPLATE_112, 112)
    assert (both.int() - alone.int()).abs().max() <= 1


def test_no_faces():
    chips, matrices = align_faces([], [], np.zeros((0, 5, 2), np.float32), ARCFACE_TEMPLATE_112, 112)
    assert chips.shape == (0, 3, 112, 112) and matrices.shape == (0, 2, 3)


@pytest.mark.gpu
def test_cuda_warp_matches_cpu(detector_faces):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    image, landmarks = detector_faces
    index = [0] * len(landmarks)
    cpu, _ = align_faces([image], index, landmarks, TEMPLATE_150, 150, "cpu", method="opencv")
    gpu, _ = align_faces([image], index, landmarks, TEMPLATE_150, 150, "cuda")
    assert gpu.device.type == "cuda"
    assert (cpu.int() - gpu.cpu().int()).abs().max() <= 1


@pytest.fixture(scope="module")
def detector_faces(settings_cpu, group_photo) -> tuple[np.ndarray, np.ndarray]:
    from childface.vision.detector import RetinaFaceDetector

    found = RetinaFaceDetector.from_settings(settings_cpu).detect([group_photo.rgb])[0]
    assert len(found) == 6
    return group_photo.rgb, found.landmarks
