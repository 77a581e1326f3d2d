"""Limits hold per request, not only per file (DESIGN.md invariant 5).

A request is checked from its photos' headers before anything is decoded:
each photo against `max_image_pixels`, all of them together against
`max_request_pixels` (413 `too_many_pixels`). Photos are then decoded and
processed a group at a time, so a request never holds all its decoded photos.

Memory is measured as the growth of this process's resident set (the server
runs in-process under TestClient): a sampler thread reads /proc/self/statm
every 2 ms while the request runs, which sees every allocator (numpy, OpenCV,
Pillow, torch), not only Python's.
"""

from __future__ import annotations

import io
import os
import threading
import time
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from .support import Photos, create_child, jpeg

MiB = 2**20
_PAGE = os.sysconf("SC_PAGE_SIZE")

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/statm").exists(), reason="measures memory through Linux's /proc/self/statm"
)


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


class PeakGrowth:
    """Peak resident-set growth of this process over a `with` block, in bytes."""

    def __enter__(self) -> PeakGrowth:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


@cache
def _bilevel_png() -> bytes:
    """The issue's file: a single-colour 1-bit PNG of 6000 x 6600 (39.6 MP, under the per-photo limit)."""
    buffer = io.BytesIO()
    Image.new("1", (6000, 6600), 1).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _files(*photos: bytes, suffix: str = "png") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"p{i}.{suffix}", data, f"image/{suffix}")) for i, data in enumerate(photos)]


def test_twelve_bilevel_pngs_are_refused_from_their_headers(client: TestClient, auth, runtime) -> None:  # noqa: ANN001
    """12 x 39.6 MP in 12 x ~17 KB: today 1.5 GB of decoded pixels; refused before any decoding."""
    staff = auth("staff")
    child_id = create_child(client, staff, "PNG-12")
    png = _bilevel_png()
    assert len(png) < 20_000
    with PeakGrowth() as memory:
        response = client.post(f"/children/{child_id}/images", files=_files(*[png] * 12), headers=staff)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "too_many_pixels"
    assert "max_request_pixels" in error["message"]
    assert f"{runtime.settings.max_request_pixels:,}" in error["message"]
    assert memory.growth < 100 * MiB, f"grew by {memory.growth / MiB:.0f} MiB"
    assert client.get(f"/children/{child_id}/faces", headers=staff).json() == []


def test_many_tiny_photos_count_at_least_the_detectors_size(client: TestClient, auth, runtime) -> None:  # noqa: ANN001
    """Each photo costs the detector a full-size pass however small it is: 300 8x8 photos are 300 passes."""
    staff = auth("staff")
    child_id = create_child(client, staff, "TINY")
    tiny = [cv2.imencode(".png", np.full((8, 8, 3), i % 256, np.uint8))[1].tobytes() for i in range(300)]
    floor = runtime.settings.detector_input_size**2
    assert 300 * 64 < runtime.settings.max_request_pixels < 300 * floor
    response = client.post(f"/children/{child_id}/images", files=_files(*tiny), headers=staff)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_pixels"


def test_large_photos_within_the_budget_are_processed_one_at_a_time(
    client: TestClient, auth, photos: Photos, runtime  # noqa: ANN001
) -> None:
    """4 photos of 24 MP (96 MP, within the 100 MP budget): today all four are held decoded (>= 288 MB)."""
    staff = auth("staff")
    child_id = create_child(client, staff, "BIG")
    face = cv2.resize(photos.astronaut_rgb, (3072, 3072), interpolation=cv2.INTER_CUBIC)
    big = []
    for n in range(4):
        canvas = np.full((6000, 4000, 3), 60 + 40 * n, np.uint8)
        if n == 0:
            canvas[1000:4072, 400:3472] = face
        big.append(jpeg(canvas, quality=80))
    assert runtime.settings.max_request_pixels >= 4 * 6000 * 4000
    # warm-up: the pipeline's first run allocates its own working memory once
    url = f"/children/{child_id}/images"
    assert client.post(url, files=_files(photos.masks[0], suffix="jpeg"), headers=staff).status_code == 200
    with PeakGrowth() as memory:
        response = client.post(url, files=_files(*big, suffix="jpeg"), headers=staff)
    assert response.status_code == 200, response.text
    results = response.json()["photos"]
    assert [r["status"] for r in results] == ["enrolled", "refused", "refused", "refused"], results
    assert all(r["reasons"] == ["no_face"] for r in results[1:])
    assert all((r["width"], r["height"]) == (4000, 6000) for r in results)
    # one photo decoded is 72 MB, and OpenCV's decoder briefly holds a second copy: about 2x at peak
    # for a request processed one photo at a time; holding all four decoded is 4x, plus that 1x more
    one_photo = 6000 * 4000 * 3
    assert memory.growth < 3 * one_photo, f"grew by {memory.growth / MiB:.0f} MiB"


def test_recognition_routes_check_the_request_budget(
    client: TestClient, auth, photos: Photos, runtime  # noqa: ANN001
) -> None:
    """/detect, /recognize and /verify refuse from the headers too (the budget lowered for the test)."""
    runtime.settings = runtime.settings.model_copy(update={"max_request_pixels": 800_000})
    key = auth(key="recognize")
    group = {"file": ("t1.jpg", photos.group, "image/jpeg")}  # 1280 x 886 = 1.13 MP
    for route in ("/detect", "/recognize"):
        response = client.post(route, files=group, headers=key)
        assert response.status_code == 413, (route, response.text)
        assert response.json()["error"]["code"] == "too_many_pixels"
    small = ("a.jpg", photos.astronaut, "image/jpeg")  # 512 x 512, counted as 640 x 640 each
    two = client.post("/verify", files={"file": small, "file2": small}, headers=key)
    assert two.status_code == 413 and two.json()["error"]["code"] == "too_many_pixels"
    assert client.post("/detect", files={"file": small}, headers=key).status_code == 200


def test_pixel_groups_bound_what_is_decoded_at_once() -> None:
    """Small photos share a detector batch; a group never passes the budget unless one photo alone does."""
    from childface.services.enrollment import GROUP_PIXELS, Photo, pixel_groups
    from childface.vision.pipeline import DETECT_BATCH

    def sizes(*megapixels: float) -> list[list[int]]:
        photos = [Photo(data=b"", pixels=int(mp * 1_000_000)) for mp in megapixels]
        return [[(p.pixels or 0) // 1_000_000 for p in group] for group in pixel_groups(photos)]

    assert GROUP_PIXELS == 16_000_000
    assert sizes(*[1] * 10) == [[1] * DETECT_BATCH, [1] * (10 - DETECT_BATCH)]
    assert sizes(10, 10, 30, 1, 2, 3) == [[10], [10], [30], [1, 2, 3]]
