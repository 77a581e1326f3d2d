"""Fixtures and helpers for the API and the services behind it: real models, real photos, both DBs.

Imported by tests/api/conftest.py and by the service tests that need real
faces (`from api.support import ...`), so there is one definition of each.

- `pipeline`: the face pipeline, loaded once per test session and injected
  into every test's `Runtime` (loading takes seconds on the CPU).
- `photos`: real photos from installed packages (insightface's group photo and
  Tom Hanks portrait, skimage's astronaut, insightface's fabric-only mask
  images) and variations of them (crop, flip, brightness, shift), JPEG-encoded
  like an upload. Nothing is read from the repository.
- `runtime`, `app`, `client`: one runtime and app per test, bound to the test's
  `settings` (its own database on SQLite or PostgreSQL, media and index folders).
- `auth`: headers for staff users (admin, staff, viewer) and API keys by scope.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient

from childface.api.app import create_app
from childface.config import Settings
from childface.db import Actor
from childface.services import accounts
from childface.services.login_throttle import ThrottlePolicy
from childface.services.runtime import Runtime

TEST_ACTOR = Actor("system", "api-test")
PASSWORD = "correct horse battery"


def jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, data = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return data.tobytes()


def variation(rgb: np.ndarray, n: int) -> np.ndarray:
    """The n-th distinct variation of a photo: crop offset, mirror, brightness (a new photo each)."""
    height, width = rgb.shape[:2]
    dy, dx = (n * 7) % max(1, height // 12), (n * 11) % max(1, width // 12)
    out = rgb[dy : height - (height // 12 - dy), dx : width - (width // 12 - dx)]
    if n % 2:
        out = out[:, ::-1]
    shift = ((n * 13) % 50) - 25
    return np.clip(out.astype(np.int16) + shift, 0, 255).astype(np.uint8)


def on_canvas(
    face: np.ndarray, size: tuple[int, int] = (640, 480), at: tuple[int, int] = (200, 100)
) -> np.ndarray:
    """A photo of `size` (w, h) with `face` pasted at `at` on a soft grey gradient background."""
    width, height = size
    canvas = np.tile(np.linspace(90, 170, width, dtype=np.uint8)[None, :, None], (height, 1, 3))
    x, y = at
    fh, fw = face.shape[:2]
    canvas[y : y + fh, x : x + fw] = face[: height - y, : width - x]
    return canvas


@dataclass(frozen=True)
class Photos:
    group: bytes  # t1.jpg: six faces
    group_rgb: np.ndarray
    hanks: bytes  # one face
    hanks_rgb: np.ndarray
    astronaut: bytes  # one face
    astronaut_rgb: np.ndarray
    masks: list[bytes]  # fabric only: no face
    people: list[np.ndarray]  # one-face crops of eight different people (six from the group photo)

    def person(self, index: int, n: int = 0) -> bytes:
        """A distinct JPEG photo (variation n) of person `index`."""
        return jpeg(variation(self.people[index % len(self.people)], n))


def _insightface_folder() -> Path:
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        pytest.skip("insightface (sample photos) is not installed: `make install-dev`")
    return Path(spec.origin).parent / "data" / "images"


def _read(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    return np.ascontiguousarray(bgr[:, :, ::-1])


@pytest.fixture(scope="session")
def pipeline():  # noqa: ANN201 - FacePipeline, imported late
    from childface.vision.pipeline import FacePipeline

    return FacePipeline.from_settings(Settings(_env_file=None, device="cpu"))


@pytest.fixture(scope="session")
def photos(pipeline) -> Photos:  # noqa: ANN001
    from skimage import data as skdata

    folder = _insightface_folder()
    group = _read(folder / "t1.jpg")
    hanks = _read(folder / "Tom_Hanks_54745.png")
    astronaut = np.ascontiguousarray(skdata.astronaut())
    people: list[np.ndarray] = []
    for face in pipeline.detect_only([group])[0]:
        x1, y1, x2, y2 = face.box
        pad_x, pad_y = (x2 - x1) * 0.6, (y2 - y1) * 0.6
        crop = group[max(0, int(y1 - pad_y)) : int(y2 + pad_y), max(0, int(x1 - pad_x)) : int(x2 + pad_x)]
        people.append(np.ascontiguousarray(crop))
    people += [hanks, astronaut[:300, 100:400]]
    return Photos(
        group=(folder / "t1.jpg").read_bytes(),
        group_rgb=group,
        hanks=jpeg(hanks),
        hanks_rgb=hanks,
        astronaut=jpeg(astronaut),
        astronaut_rgb=astronaut,
        masks=[p.read_bytes() for p in sorted(folder.glob("mask_*.jpg"))],
        people=people,
    )


#: Decision thresholds for these photos, from their measured cosine similarities with the default
#: embedder: variations of one person score >= 0.98, different people 0.80-0.93.
THRESHOLDS = {"accept_threshold": 0.95, "review_threshold": 0.85, "match_margin": 0.02}


@pytest.fixture
def runtime(settings: Settings, pipeline) -> Iterator[Runtime]:  # noqa: ANN001
    rt = Runtime(settings.model_copy(update=THRESHOLDS), pipeline=pipeline)
    rt.start(autosave=False)
    yield rt
    rt.close()


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    return create_app(runtime.settings, runtime)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def auth(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, str]]:
    """auth("admin" | "staff" | "viewer") -> Bearer headers; auth(key="recognize,enroll") -> X-API-Key.

    Real argon2id, with the cheapest parameters: the default cost (~0.2 s per
    hash on two cores) would dominate every test that signs someone in.
    """
    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    cache: dict[str, dict[str, str]] = {}

    def headers(role: str | None = None, *, key: str | None = None) -> dict[str, str]:
        name = f"key:{key}" if key is not None else str(role)
        if name in cache:
            return cache[name]
        if key is not None:
            issued = accounts.create_api_key(
                db=runtime.db, actor=TEST_ACTOR, name=f"test-{key.replace(',', '-')}", scopes=key.split(",")
            )
            cache[name] = {"X-API-Key": issued.key}
        else:
            accounts.create_user(db=runtime.db, actor=TEST_ACTOR, username=name, password=PASSWORD, role=name)
            token, _ = accounts.login(
                db=runtime.db,
                username=name,
                password=PASSWORD,
                ttl=timedelta(hours=1),
                client_address="test-fixture",
                policy=ThrottlePolicy.from_settings(runtime.settings),
            )
            cache[name] = {"Authorization": f"Bearer {token}"}
        return cache[name]

    return headers


def create_child(
    client: TestClient, headers: dict[str, str], external_id: str, name: str | None = None
) -> int:
    response = client.post(
        "/children", json={"external_id": external_id, "name": name or external_id}, headers=headers
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def enroll(
    client: TestClient, headers: dict[str, str], child_id: int, *photos: bytes, **form: object
) -> dict:
    """POST photos to a child; asserts HTTP 200 and returns the per-photo results."""
    files = [("files", (f"photo{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
    response = client.post(f"/children/{child_id}/images", files=files, data=form, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def recognize(client: TestClient, headers: dict[str, str], photo: bytes, **form: object) -> dict:
    response = client.post(
        "/recognize", files={"file": ("probe.jpg", photo, "image/jpeg")}, data=form, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()


def box_text(box: list[float]) -> str:
    return ",".join(f"{v:.1f}" for v in box)
