"""Bad input gets a clear 4xx JSON error and changes nothing (DESIGN.md invariant 5)."""

from __future__ import annotations

import cv2
import numpy as np
from fastapi.testclient import TestClient

from .support import Photos, create_child


def _huge_png() -> bytes:
    """A small file that claims more pixels than the limit (7000 x 6000 = 42 MP, one flat colour)."""
    ok, data = cv2.imencode(".png", np.zeros((6000, 7000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return data.tobytes()


def test_recognize_rejects_what_is_not_a_photo(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    key = auth(key="recognize")
    cases = {
        "garbage": (b"\x00\x01garbage" * 100, "invalid_image"),
        "empty": (b"", "invalid_image"),
        "truncated jpeg": (photos.astronaut[:500], "invalid_image"),
        "text": (b"hello, I am a text file", "invalid_image"),
        "huge": (_huge_png(), "too_many_pixels"),
    }
    for name, (data, code) in cases.items():
        for route in ("/recognize", "/detect"):
            response = client.post(route, files={"file": ("x.jpg", data, "image/jpeg")}, headers=key)
            assert response.status_code == 400, (name, route, response.text)
            error = response.json()["error"]
            assert error["code"] == code and error["message"], (name, error)
    missing = client.post("/recognize", headers=key)
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "invalid_input"
    wrong_type = client.post("/recognize", data={"file": "not a file"}, headers=key)
    assert wrong_type.status_code == 422
    assert client.get("/review/queue", headers=auth("staff")).json()["total"] == 0


def test_enrollment_reports_bad_photos_and_keeps_good_ones(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff = auth("staff")
    child_id = create_child(client, staff, "K")
    files = [
        ("files", ("huge.png", _huge_png(), "image/png")),
        ("files", ("ok.jpg", photos.astronaut, "image/jpeg")),
    ]
    response = client.post(f"/children/{child_id}/images", files=files, headers=staff)
    assert response.status_code == 200
    huge, good = response.json()["photos"]
    assert (
        huge["status"] == "refused" and huge["reasons"] == ["too_many_pixels"] and "limit" in huge["message"]
    )
    assert good["status"] == "enrolled"
    bad_meta = client.post(
        f"/children/{child_id}/images", files=files[1:], data={"arousal": "7"}, headers=staff
    )
    assert bad_meta.status_code == 422
