"""dlib's ResNet descriptor in torch: parity with dlib-bin on real chips, batching, the template.

dlib (`dlib-bin`) is the oracle; it is slow on the CPU (~75 ms a face), so the suite uses ~16
faces: insightface's t1.jpg (6), the Tom Hanks portrait and skimage's astronaut, each mirrored.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from childface.vision.alignment import align_faces
from childface.vision.detector import RetinaFaceDetector
from childface.vision.embedders.dlib_resnet import (
    DLIB_TEMPLATE_150,
    DlibResNetEmbedder,
    _add_zero_padded,
)
from childface.vision.embedders.dlib_template import TemplateMeasurement, derive_dlib_template

dlib = pytest.importorskip("dlib", reason="dlib-bin (test-only oracle) is not installed")
face_recognition_models = pytest.importorskip("face_recognition_models")

#: measured with the hard-coded template on these 16 faces: mean 0.986, min 0.958 (see docs/embedders.md)
TEMPLATE_MEAN_COSINE = 0.98
TEMPLATE_MIN_COSINE = 0.95


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class DlibOracle:
    def __init__(self) -> None:
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(
            face_recognition_models.pose_predictor_five_point_model_location()
        )
        self.model = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

    def chips(self, rgb: np.ndarray) -> list[np.ndarray]:
        """dlib's own 150x150 chips (frontal detector, 5-point predictor, padding 0.25)."""
        return [
            np.asarray(dlib.get_face_chip(rgb, self.predictor(rgb, rect), size=150, padding=0.25))
            for rect in self.detector(rgb, 1)
        ]

    def descriptors(self, chips: np.ndarray) -> np.ndarray:
        return np.array([np.asarray(self.model.compute_face_descriptor(chip)) for chip in chips])


@pytest.fixture(scope="module")
def oracle() -> DlibOracle:
    return DlibOracle()


@pytest.fixture(scope="module")
def embedder() -> DlibResNetEmbedder:
    return DlibResNetEmbedder(device="cpu")


@pytest.fixture(scope="module")
def photos(group_photo, portrait, astronaut) -> list[np.ndarray]:
    return [group_photo.rgb, portrait.rgb, astronaut.rgb]


@pytest.fixture(scope="module")
def dlib_chips(oracle: DlibOracle, photos: list[np.ndarray]) -> np.ndarray:
    chips = [chip for rgb in photos for chip in oracle.chips(rgb)]
    # 9: dlib's HOG detector also fires on the astronaut's suit (still a valid network input)
    assert len(chips) >= 8, "dlib should find t1's 6 faces, the portrait and the astronaut"
    chips += [np.ascontiguousarray(chip[:, ::-1]) for chip in chips]
    return np.stack(chips)


@pytest.fixture(scope="module")
def dlib_descriptors(oracle: DlibOracle, dlib_chips: np.ndarray) -> np.ndarray:
    return oracle.descriptors(dlib_chips)


def test_add_pads_the_smaller_operand_at_the_end() -> None:
    a = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)
    b = torch.ones(1, 4, 4, 4)
    out = _add_zero_padded(a, b)
    expected = b.clone()
    expected[:, :2, :3, :3] += a
    assert torch.equal(out, expected)
    assert torch.equal(_add_zero_padded(b, a), expected)


def test_parity_with_dlib(
    embedder: DlibResNetEmbedder, dlib_chips: np.ndarray, dlib_descriptors: np.ndarray
) -> None:
    chips = torch.from_numpy(dlib_chips).permute(0, 3, 1, 2)
    raw = embedder.raw_descriptors(chips).numpy()
    np.testing.assert_allclose(raw, dlib_descriptors, atol=1e-4)
    ours = embedder.embed_numpy(dlib_chips)
    cosine = (ours * _unit(dlib_descriptors)).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine
    assert ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # dlib's own "same person" scale survives: Euclidean distance of the raw vectors
    assert embedder.distance_threshold == pytest.approx(0.6)


def test_batched_equals_one_by_one(embedder: DlibResNetEmbedder, dlib_chips: np.ndarray) -> None:
    chips = dlib_chips[:5]
    batched = embedder.embed_numpy(chips)
    single = np.concatenate([embedder.embed_numpy(chips[i : i + 1]) for i in range(len(chips))])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    small_batches = DlibResNetEmbedder(device="cpu", batch_size=2).embed_numpy(chips)
    np.testing.assert_allclose(small_batches, batched, atol=1e-5)


def test_input_contract(embedder: DlibResNetEmbedder) -> None:
    assert embedder.name == "dlib-resnet" and embedder.dim == 128 and embedder.chip_size == 150
    assert embedder.model_id == f"dlib-resnet:{embedder.weights_sha256[:16]}"
    assert embedder.embed(torch.zeros((0, 3, 150, 150), dtype=torch.uint8)).shape == (0, 128)
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(torch.zeros((1, 3, 150, 150), dtype=torch.float32))
    with pytest.raises(ValueError, match="150"):
        embedder.embed(torch.zeros((1, 3, 112, 112), dtype=torch.uint8))


@pytest.mark.gpu
def test_cuda_matches_cpu(embedder: DlibResNetEmbedder, dlib_chips: np.ndarray) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reference = embedder.embed_numpy(dlib_chips)
    for half in (True, False):  # float16 is the CUDA default
        gpu = DlibResNetEmbedder(device="cuda", half=half)
        out = gpu.embed(torch.from_numpy(dlib_chips).permute(0, 3, 1, 2).cuda())
        assert out.device.type == "cuda" and out.dtype == torch.float32
        cosine = (out.cpu().numpy() * reference).sum(axis=1)
        assert cosine.min() >= 0.9999, (half, cosine)


# ---- the 150x150 template for RetinaFace landmarks ---------------------------------------------


@pytest.fixture(scope="module")
def measurement(photos: list[np.ndarray], settings_cpu) -> TemplateMeasurement:
    # the detector scale the constant was measured at, whatever the pipeline's default becomes
    detector = RetinaFaceDetector.from_settings(settings_cpu.model_copy(update={"detector_input_size": 640}))
    return derive_dlib_template(photos, detector, mirror=True)


@pytest.fixture(scope="module")
def measured_images(photos: list[np.ndarray]) -> list[np.ndarray]:
    """The images `derive_dlib_template` looked at: the photos, then their mirror images."""
    return photos + [np.ascontiguousarray(im[:, ::-1]) for im in photos]


def test_template_derivation_reproduces_the_constant(measurement: TemplateMeasurement) -> None:
    assert len(measurement.faces) == 16
    np.testing.assert_allclose(measurement.template, DLIB_TEMPLATE_150, atol=0.25)
    # eyes sit where dlib's chips put them: level, symmetric about the centre
    (lx, ly), (rx, ry) = DLIB_TEMPLATE_150[:2]
    assert abs(ly - ry) < 1 and abs((lx + rx) / 2 - 74.5) < 1.5


def test_dlib_chip_transform_is_dlibs(
    measurement: TemplateMeasurement, measured_images: list[np.ndarray]
) -> None:
    for face in measurement.faces[::5]:
        image = measured_images[face.image_index]
        warped = cv2.warpAffine(image, face.image_to_chip, (150, 150), flags=cv2.INTER_LINEAR)
        assert np.abs(warped.astype(np.float32) - face.chip).mean() < 1.5


def test_our_alignment_comes_close_to_dlibs_chips(
    measurement: TemplateMeasurement,
    measured_images: list[np.ndarray],
    oracle: DlibOracle,
    embedder: DlibResNetEmbedder,
) -> None:
    faces = measurement.faces
    landmarks = np.stack([f.retinaface_landmarks for f in faces]).astype(np.float32)
    index = [f.image_index for f in faces]
    chips, _ = align_faces(measured_images, index, landmarks, embedder.template, 150)
    ours = embedder.embed(chips).numpy()
    reference = _unit(oracle.descriptors(np.stack([f.chip for f in faces])))
    cosine = (ours * reference).sum(axis=1)
    assert cosine.mean() >= TEMPLATE_MEAN_COSINE, cosine
    assert cosine.min() >= TEMPLATE_MIN_COSINE, cosine
