"""dlib's serialisation format: primitive encodings, and the real descriptor file with its checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from childface.vision import dlib_format as fmt


def _int_bytes(value: int) -> bytes:
    """dlib's integer encoding, written independently of the reader under test."""
    magnitude = abs(value)
    body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


@pytest.fixture(scope="module")
def descriptor_bytes() -> bytes:
    return fmt.default_descriptor_path().read_bytes()


@pytest.fixture(scope="module")
def descriptor(descriptor_bytes: bytes) -> fmt.DlibResNetFile:
    return fmt.parse_resnet_v1(descriptor_bytes)


@pytest.mark.parametrize(
    ("encoded", "value"),
    [
        (b"\x01\x00", 0),
        (b"\x02\x00\x01", 256),
        (b"\x81\x04", -4),
        (b"\x01\x96", 150),
        (b"\x02\x80\x12", 4736),
    ],
)
def test_integer_examples(encoded: bytes, value: int) -> None:
    stream = fmt.DlibStream(encoded)
    assert stream.integer() == value
    assert stream.remaining == 0


@pytest.mark.parametrize("value", [1, -1, 127, 128, -255, 65535, -65536, 2**31, -(2**40) - 3, 2**63 - 1])
def test_integer_round_trip(value: int) -> None:
    assert fmt.DlibStream(_int_bytes(value)).integer() == value


def test_bad_integer_control_byte() -> None:
    with pytest.raises(fmt.DlibFormatError, match="control byte"):
        fmt.DlibStream(b"\x09" + bytes(9)).integer()


@pytest.mark.parametrize(
    ("mantissa", "exponent", "value"),
    [(16, -4, 1.0), (0, 11, 0.0), (-3, 2, -12.0), (0xA3D70A, -28, 0.04), (0x99999A, -24, 0.6)],
)
def test_float_is_mantissa_and_exponent(mantissa: int, exponent: int, value: float) -> None:
    stream = fmt.DlibStream(_int_bytes(mantissa) + _int_bytes(exponent))
    assert stream.real() == pytest.approx(value, rel=1e-6)


def test_floats_as_stored_in_the_file() -> None:
    # the loss layer's margin and distance threshold, bytes 0x11..0x1c of the descriptor file
    stream = fmt.DlibStream(bytes.fromhex("030ad7a3811c039a99998118"))
    assert stream.real() == pytest.approx(0.04, rel=1e-7)
    assert stream.real() == pytest.approx(0.6, rel=1e-7)


def test_float_specials() -> None:
    assert fmt.DlibStream(_int_bytes(0) + _int_bytes(32000)).real() == math.inf
    assert math.isnan(fmt.DlibStream(_int_bytes(0) + _int_bytes(32002)).real())


def test_string_bool_tensor_alias() -> None:
    data = np.arange(6, dtype="<f4")
    encoded = (
        _int_bytes(5)
        + b"con_4"
        + b"10"
        + b"".join(_int_bytes(v) for v in (2, 1, 2, 3, 1))
        + data.tobytes()
        + b"".join(_int_bytes(v) for v in (1, 4, 3, 2, 1))
    )
    stream = fmt.DlibStream(encoded)
    assert stream.string() == "con_4"
    assert stream.boolean() is True
    assert stream.boolean() is False
    np.testing.assert_array_equal(stream.tensor(), data.reshape(1, 2, 3, 1))
    assert stream.alias() == (4, 3, 2, 1)
    assert stream.remaining == 0


def test_truncated_data_is_reported() -> None:
    with pytest.raises(fmt.DlibFormatError, match="unexpected end"):
        fmt.DlibStream(_int_bytes(2) + _int_bytes(1) + _int_bytes(4) + _int_bytes(1) + _int_bytes(1)).tensor()


def test_topology_has_130_wrappers() -> None:
    wrappers = fmt.resnet_v1_wrappers()
    assert len(wrappers) == 130
    assert wrappers[:4] == ["con_4", "affine_", "relu_", "max_pool_2"]
    assert wrappers.count("add_prev_") == 14 and wrappers.count("skip1") == 4


def test_real_file(descriptor: fmt.DlibResNetFile) -> None:
    assert descriptor.input_size == (150, 150)
    assert descriptor.channel_means == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    assert descriptor.loss_margin == pytest.approx(0.04)
    assert descriptor.loss_distance_threshold == pytest.approx(0.6)
    convs = [layer for layer in descriptor.layers if isinstance(layer, fmt.Conv)]
    affines = [layer for layer in descriptor.layers if isinstance(layer, fmt.Affine)]
    fc = descriptor.layers[-1]
    assert isinstance(fc, fmt.Fc) and fc.weight.shape == (128, 256) and fc.bias is None
    assert len(convs) == len(affines) == 29
    assert convs[0].weight.shape == (32, 3, 7, 7) and convs[0].stride == (2, 2) and convs[0].padding == (0, 0)
    # strided convs are unpadded, stride-1 convs pad 1
    assert all(c.padding == ((0, 0) if c.stride == (2, 2) else (1, 1)) for c in convs)
    count = sum(c.weight.size + c.bias.size for c in convs) + sum(2 * a.gamma.size for a in affines)
    assert count + fc.weight.size == 5_614_592
    assert all(np.isfinite(c.weight).all() for c in convs)


def test_truncated_file(descriptor_bytes: bytes) -> None:
    with pytest.raises(fmt.DlibFormatError, match="unexpected end"):
        fmt.parse_resnet_v1(descriptor_bytes[: len(descriptor_bytes) // 2])


def test_trailing_bytes(descriptor_bytes: bytes) -> None:
    with pytest.raises(fmt.DlibFormatError, match="bytes left"):
        fmt.parse_resnet_v1(descriptor_bytes + b"\x00")


def test_wrong_wrapper_versions(descriptor_bytes: bytes) -> None:
    # byte 0x28 is the version of the first skip wrapper (1); make it a layer (2)
    assert descriptor_bytes[0x27:0x29] == b"\x01\x01"
    corrupt = descriptor_bytes[:0x28] + b"\x02" + descriptor_bytes[0x29:]
    with pytest.raises(fmt.DlibFormatError, match="wrapper versions"):
        fmt.parse_resnet_v1(corrupt)


def test_wrong_layer_name(descriptor_bytes: bytes) -> None:
    at = descriptor_bytes.index(b"affine_")
    corrupt = descriptor_bytes[:at] + b"bn_con_"[:7] + descriptor_bytes[at + 7 :]
    with pytest.raises(fmt.DlibFormatError, match="expected 'affine_'"):
        fmt.parse_resnet_v1(corrupt)


def test_other_dlib_file_is_refused() -> None:
    other = fmt.default_descriptor_path().with_name("shape_predictor_5_face_landmarks.dat")
    with pytest.raises(fmt.DlibFormatError, match="shape_predictor_5"):
        fmt.load_resnet_v1(other)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        fmt.load_resnet_v1(tmp_path / "nope.dat")
