"""HEIC/HEIF photos (iPhones' default) are read wherever photos are: decode, header, store, import, API.

The HEIC files are made here with pillow-heif from a packaged photo (skimage's
astronaut), stored the way a phone held upright stores them: pixels turned a
quarter, and an orientation saying how to turn them back.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from api.support import (  # noqa: F401 - the API tests' fixtures: real models, both databases
    app,
    auth,
    client,
    create_child,
    enroll,
    photos,
    pipeline,
    recognize,
    runtime,
)
from childface.db.models import Image as ImageRow
from childface.services.importing import photo_header
from childface.services.media import image_extension
from childface.vision.decode import ImageDecodeError, ImageHeader, decode_image, image_header

LIMIT = 40_000_000


def heic(rgb: np.ndarray, orientation: int = 1) -> bytes:
    """`rgb` as a HEIC file (pillow-heif's encoder) with this EXIF orientation."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="HEIF", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def upright() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, 40:440])  # 512 high, 400 wide: the face upright


def test_heic_decodes_upright_and_its_header_gives_the_upright_size(upright: np.ndarray) -> None:
    # as a phone stores a portrait photo: the sensor's pixels (turned left) and "turn right to view"
    data = heic(np.ascontiguousarray(np.rot90(upright)), orientation=6)
    assert data[4:12] == b"ftypheic"
    assert image_header(data, LIMIT) == ImageHeader("HEIF", 400, 512)
    rgb = decode_image(data, LIMIT)
    assert rgb.shape == upright.shape and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - upright).mean() < 6  # lossy, but the same picture the same way up
    assert photo_header(data, LIMIT) == (400, 512)  # the import's check reads it alike
    assert image_extension(data) == "heic"


def test_heic_over_the_pixel_limit_is_refused_from_the_header(upright: np.ndarray) -> None:
    data = heic(upright)
    for read in (image_header, decode_image):
        with pytest.raises(ImageDecodeError) as caught:
            read(data, 400 * 512 - 1)
        assert caught.value.code == "too_many_pixels"
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data[: len(data) // 2], LIMIT)  # cut off: refused, never half a photo
    assert caught.value.code == "not_an_image"


def test_heic_photos_enroll_and_recognise_over_the_api(
    client: TestClient, auth, runtime, upright: np.ndarray  # noqa: ANN001, F811
) -> None:
    staff = auth("staff")
    child = create_child(client, staff, "H-1", "Heic")
    result = enroll(client, staff, child, heic(np.ascontiguousarray(np.rot90(upright)), orientation=6))
    assert result["enrolled"] == 1, result
    with runtime.db.session() as session:
        (path,) = session.scalars(select(ImageRow.path)).all()
    assert path.endswith(".heic") and (runtime.media.root / path).is_file()
    probe = heic(np.ascontiguousarray(upright[:, ::-1]))  # mirrored: another photo of the same face
    (face,) = recognize(client, auth(key="recognize"), probe)["faces"]
    assert face["candidates"][0]["child_id"] == child and face["candidates"][0]["score"] > 0.9
    thumbnail = client.get(f"/faces/{face['candidates'][0]['face_id']}/thumbnail", headers=staff)
    assert thumbnail.status_code == 200 and thumbnail.content[:3] == b"\xff\xd8\xff"
