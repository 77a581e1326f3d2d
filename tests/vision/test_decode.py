"""Decoding uploads: real formats, EXIF orientation, and refusals with stable codes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from childface.vision.decode import ImageDecodeError, decode_image

LIMIT = 40_000_000


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _encode(rgb: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt, **options)
    return buffer.getvalue()


def test_jpeg_decodes_like_pillow(group_photo):
    rgb = decode_image(group_photo.data, LIMIT)
    assert rgb.dtype == np.uint8 and rgb.shape == (886, 1280, 3)
    reference = np.asarray(Image.open(io.BytesIO(group_photo.data)).convert("RGB"))
    assert np.abs(rgb.astype(int) - reference).max() <= 1


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_other_formats(astronaut, fmt):
    rgb = decode_image(_encode(astronaut.rgb, fmt), LIMIT)
    assert rgb.shape == astronaut.rgb.shape and rgb.dtype == np.uint8
    if fmt in {"PNG", "BMP", "TIFF"}:  # lossless
        assert np.array_equal(rgb, astronaut.rgb)


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA", "EPS"])
def test_formats_no_camera_makes_are_refused_unprobed(astronaut, fmt):
    """Pillow reads these (EPS through Ghostscript): uploads in them are not parsed at all."""
    if fmt == "EPS":
        data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n"
    else:
        data = _encode(astronaut.rgb[:64, :64], fmt)
        assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would open it
    with pytest.raises(ImageDecodeError) as refused:
        decode_image(data, LIMIT)
    assert refused.value.code == "not_an_image" and "JPEG" in str(refused.value)


def test_grey_and_alpha_become_rgb(astronaut):
    grey = np.asarray(Image.fromarray(astronaut.rgb).convert("L"))
    assert decode_image(_encode(grey, "PNG"), LIMIT).shape == (512, 512, 3)
    rgba = np.dstack([astronaut.rgb, np.full((512, 512), 200, np.uint8)])
    assert decode_image(_encode(rgba, "PNG"), LIMIT).shape == (512, 512, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(astronaut, fmt, orientation):
    image = astronaut.rgb[:, :384]  # not square, so rotations change the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(image, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    decoded = decode_image(data, LIMIT)
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected).mean() < 0.5


def test_refusals_have_stable_codes(group_photo):
    cases = {
        b"": "empty",
        b"definitely not an image" * 10: "not_an_image",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40: "not_an_image",
        group_photo.data[: len(group_photo.data) // 2]: "not_an_image",  # truncated JPEG
        _png_header_only(10_000, 5_000): "too_many_pixels",  # 50 MP, above our 40 MP limit
        _png_header_only(100_000, 100_000): "too_many_pixels",  # above Pillow's own bomb limit too
    }
    for data, code in cases.items():
        with pytest.raises(ImageDecodeError) as caught:
            decode_image(data, LIMIT)
        assert caught.value.code == code, (code, caught.value.message)
        assert caught.value.message and "BytesIO" not in caught.value.message


def test_pixel_limit_is_the_setting(astronaut):
    data = _encode(astronaut.rgb, "PNG")
    assert decode_image(data, 512 * 512).shape == (512, 512, 3)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, 512 * 512 - 1)
    assert caught.value.code == "too_many_pixels"
