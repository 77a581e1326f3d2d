"""`image_header`: a photo's format and size from its header alone, refused as `decode_image` refuses."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from childface.vision.decode import ImageDecodeError, ImageHeader, decode_image, image_header

from .test_decode import LIMIT, _png_header_only


def test_header_gives_format_and_size(group_photo) -> None:  # noqa: ANN001
    assert image_header(group_photo.data, LIMIT) == ImageHeader("JPEG", 1280, 886)
    assert image_header(group_photo.data, LIMIT).pixels == 1280 * 886


def test_header_decodes_no_pixel() -> None:
    """A header claiming 6000 x 6000 over 16 bytes of pixel data: read at once, though it cannot decode."""
    data = _png_header_only(6000, 6000)
    assert image_header(data, LIMIT) == ImageHeader("PNG", 6000, 6000)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, LIMIT)
    assert caught.value.code == "not_an_image"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty"),
        (b"not an image at all" * 10, "not_an_image"),
        (_png_header_only(10_000, 5_000), "too_many_pixels"),
        (_png_header_only(100_000, 100_000), "too_many_pixels"),  # past Pillow's own bomb limit too
    ],
)
def test_header_refuses_with_the_decoders_codes(data: bytes, code: str) -> None:
    for read in (image_header, decode_image):
        with pytest.raises(ImageDecodeError) as caught:
            read(data, LIMIT)
        assert caught.value.code == code


def test_only_the_first_frame_counts(astronaut) -> None:  # noqa: ANN001
    """An animated GIF decodes to its first frame, so its header's size is what decoding costs."""
    frames = [Image.fromarray(astronaut.rgb), Image.fromarray(astronaut.rgb[::-1].copy())]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert image_header(data, LIMIT) == ImageHeader("GIF", 512, 512)
    assert decode_image(data, LIMIT).shape == (512, 512, 3)


def test_header_size_is_upright_as_decoded(astronaut) -> None:  # noqa: ANN001
    """EXIF orientation 6 (a quarter turn): the header reports the size the decoded array will have."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(astronaut.rgb[:, :384]).save(buffer, "JPEG", exif=exif)
    data = buffer.getvalue()
    header = image_header(data, LIMIT)
    assert (header.height, header.width) == decode_image(data, LIMIT).shape[:2] == (384, 512)
