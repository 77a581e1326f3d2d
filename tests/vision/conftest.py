"""Shared fixtures for the vision tests: real photos and CPU settings.

Photos come from installed packages (insightface's sample images, skimage's
astronaut), never from the repo. Each fixture is session-scoped: decoding is
done once per test run. A `Photo` carries the encoded bytes (what the API and
CLI receive), the decoded RGB array (what the detector takes) and the path
where the file lives (None for generated images).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from childface.config import Settings


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes
    rgb: np.ndarray  # uint8 (H, W, 3)
    path: Path | None = None


def _insightface_images() -> Path:
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        pytest.skip("insightface (sample photos) is not installed")
    folder = Path(spec.origin).parent / "data" / "images"
    if not folder.is_dir():
        pytest.skip(f"insightface sample images not found at {folder}")
    return folder


def _photo_from_file(path: Path) -> Photo:
    data = path.read_bytes()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot decode {path}"
    return Photo(path.name, data, np.ascontiguousarray(bgr[:, :, ::-1]), path)


def _photo_from_rgb(name: str, rgb: np.ndarray) -> Photo:
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return Photo(name, png.tobytes(), np.ascontiguousarray(rgb))


@pytest.fixture(scope="session")
def insightface_images() -> Path:
    """Folder with insightface's sample photos (t1.jpg, Tom_Hanks_54745.png, mask_*.jpg)."""
    return _insightface_images()


@pytest.fixture(scope="session")
def group_photo(insightface_images: Path) -> Photo:
    """insightface's t1.jpg: 1280x886 group photo with 6 frontal faces."""
    return _photo_from_file(insightface_images / "t1.jpg")


@pytest.fixture(scope="session")
def portrait(insightface_images: Path) -> Photo:
    """insightface's Tom_Hanks_54745.png: one large, sharp, frontal face."""
    return _photo_from_file(insightface_images / "Tom_Hanks_54745.png")


@pytest.fixture(scope="session")
def astronaut() -> Photo:
    """skimage's astronaut (Eileen Collins), 512x512, one face."""
    from skimage import data

    return _photo_from_rgb("astronaut.png", data.astronaut())


@pytest.fixture(scope="session")
def mask_photos(insightface_images: Path) -> list[Photo]:
    """insightface's mask_*.jpg: close-ups of fabric masks without faces (negatives)."""
    paths = sorted(insightface_images.glob("mask_*.jpg"))
    assert paths, "insightface mask_*.jpg images missing"
    return [_photo_from_file(p) for p in paths]


@pytest.fixture(scope="session")
def settings_cpu(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Default model settings on the CPU, storage under a temporary folder."""
    root = tmp_path_factory.mktemp("vision")
    return Settings(
        device="cpu",
        database_url=f"sqlite:///{root / 'childface.db'}",
        media_dir=root / "media",
        _env_file=None,
    )


@pytest.fixture(scope="session")
def pipeline_cpu(settings_cpu: Settings):
    """The default pipeline (RetinaFace MobileNet + dlib ResNet) on the CPU, built once per run."""
    from childface.vision.pipeline import FacePipeline

    return FacePipeline.from_settings(settings_cpu)
