"""Fixtures for the gallery, recognition and evaluation tests.

`database` and `settings` come from tests/conftest.py (every DB test runs on
SQLite and PostgreSQL). The face pipeline and the photo-derived embeddings are
session-scoped: models load once per run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from childface.config import Settings
from childface.db import Database
from childface.services.gallery import Gallery, ensure_embedding_model

from .faces import DIM
from .photos import face_variants, insightface_images, read_rgb

MODEL_KEY = "test-embedder:0123456789abcdef"


@pytest.fixture
def model_row(database: Database) -> int:
    return ensure_embedding_model(
        database, key=MODEL_KEY, name="test-embedder", weights_sha256="0" * 64, dim=DIM
    )


@pytest.fixture
def make_gallery(database: Database, settings: Settings) -> Callable[..., Gallery]:
    """Build galleries on the test's DB and index folder."""

    def make(*, key: str = MODEL_KEY, dim: int = DIM, **options: object) -> Gallery:
        return Gallery(db=database, settings=settings, model_key=key, dim=dim, **options)

    return make


# ---- real photos through the real pipeline (session-scoped: models load once) ----


@pytest.fixture(scope="session")
def pipeline():  # noqa: ANN201 - FacePipeline is imported late (torch)
    from childface.vision.pipeline import FacePipeline

    return FacePipeline.from_settings(Settings(_env_file=None, device="cpu"))


@pytest.fixture(scope="session")
def people(pipeline) -> dict[str, list[np.ndarray]]:  # noqa: ANN001
    """Eight people, six photos each: t1.jpg's six faces, skimage's astronaut, the Tom Hanks portrait."""
    from skimage import data

    folder = insightface_images()
    if folder is None:
        pytest.skip("insightface (sample photos) is not installed")
    group = read_rgb(folder / "t1.jpg")
    sources = [
        (f"t1_{i}", group, f.box)
        for i, f in enumerate(sorted(pipeline.process([group])[0], key=lambda f: f.box[0]))
    ]
    assert len(sources) == 6, "t1.jpg should show six faces"
    for name, rgb in (
        ("astronaut", data.astronaut()),
        ("tom_hanks", read_rgb(folder / "Tom_Hanks_54745.png")),
    ):
        faces = pipeline.process([rgb])[0]
        assert len(faces) == 1
        sources.append((name, rgb, faces[0].box))
    return {name: face_variants(rgb, box) for name, rgb, box in sources}


@pytest.fixture(scope="session")
def embeddings(pipeline, people: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Each person's photos' largest-face embeddings, (6, dim) per person."""
    out = {}
    for name, photos in people.items():
        faces = pipeline.process(photos)
        assert all(faces), f"{name}: a variant lost its face"
        out[name] = np.stack([max(f, key=lambda x: x.box[2] - x.box[0]).embedding for f in faces])
    return out
