"""insightface's ArcFace backbones (recognition/arcface_torch) as torch modules, and their weights.

Contract of every model here (arcface_torch's, stated once):
- input: 112x112 RGB chips aligned onto the ArcFace template, as float (x / 255 - 0.5) / 0.5;
- output: 512 features, not normalised (the embedder L2-normalises them).

Module and parameter names follow arcface_torch's `backbones/iresnet.py` and
`backbones/mobilefacenet.py`, so its `backbone.pth` checkpoints load with `strict=True`.
ONNX exports of these networks (e.g. buffalo_l's `w600k_r50.onnx`) load by reading the graph's
initializers in execution order; no ONNX runtime is involved.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

EMBEDDING_DIM = 512
INPUT_SIZE = 112
_BN_EPS = 1e-5

#: IResNet depth -> residual blocks per stage (arcface_torch's iresnet18/34/50/100)
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
}
ARCHS = (*IRESNET_LAYERS, "mbf")


class ArcFaceWeightsError(ValueError):
    """ArcFace weights that cannot be read or do not fit the chosen backbone."""


# ---- IResNet -------------------------------------------------------------------------------


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style block: BN, conv, BN, PReLU, conv (strided), BN, plus shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=_BN_EPS)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=_BN_EPS)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    def __init__(self, layers: tuple[int, int, int, int], num_features: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=_BN_EPS)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
            stage = [IBasicBlock(inplanes, planes, stride=2)]
            stage += [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=_BN_EPS)
        self.fc = nn.Linear(512 * 7 * 7, num_features)  # 112 / 2**4 = 7
        self.features = nn.BatchNorm1d(num_features, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.fc(torch.flatten(self.bn2(x), 1))
        return self.features(x)


# ---- MobileFaceNet ---------------------------------------------------------------------------


class ConvBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """1x1 expand to `groups` channels, depthwise 3x3, 1x1 project; optional identity shortcut."""

    def __init__(self, cin: int, cout: int, groups: int, stride: int, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, groups),
            ConvBlock(groups, groups, 3, stride, 1, groups=groups),
            LinearBlock(groups, cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, channels: int, num_block: int, groups: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(DepthWise(channels, channels, groups, stride=1, residual=True) for _ in range(num_block))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise 7x7 conv, then a bias-free linear layer and BatchNorm1d."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=7, groups=512),
            nn.Flatten(),
            nn.Linear(512, num_features, bias=False),
            nn.BatchNorm1d(num_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """arcface_torch's "mbf": blocks (1, 4, 6, 2), width scale 2."""

    def __init__(self, num_features: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                ConvBlock(3, 128, 3, 2, 1),
                ConvBlock(128, 128, 3, 1, 1, groups=64),
                DepthWise(128, 128, groups=128, stride=2),
                Residual(128, num_block=4, groups=128),
                DepthWise(128, 256, groups=256, stride=2),
                Residual(256, num_block=6, groups=256),
                DepthWise(256, 256, groups=512, stride=2),
                Residual(256, num_block=2, groups=256),
            ]
        )
        self.conv_sep = ConvBlock(256, 512)
        self.features = GDC(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


def get_backbone(name: str, num_features: int = EMBEDDING_DIM) -> nn.Module:
    """A randomly initialised backbone by arcface_torch's short name: r18, r34, r50, r100, mbf."""
    if name in IRESNET_LAYERS:
        return IResNet(IRESNET_LAYERS[name], num_features)
    if name == "mbf":
        return MobileFaceNet(num_features)
    raise ValueError(f"unknown ArcFace backbone '{name}'; choose one of {', '.join(ARCHS)}")


# ---- loading .pth ----------------------------------------------------------------------------


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(key.startswith("module.") for key in state):
        return {key.removeprefix("module."): value for key, value in state.items()}
    return state


def load_checkpoint(path: str | Path, arch: str) -> nn.Module:
    """An arcface_torch `backbone.pth` (state dict, `module.` prefix or not) in backbone `arch`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ArcFace weights not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors all mean the same to the user
        raise ArcFaceWeightsError(f"cannot read ArcFace checkpoint {path}: {exc}") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ArcFaceWeightsError(f"{path} does not hold a state dict of tensors")
    model = get_backbone(arch)
    try:
        model.load_state_dict(_strip_module_prefix(loaded), strict=True)
    except RuntimeError as exc:
        raise ArcFaceWeightsError(f"{path} is not an arcface_torch '{arch}' backbone: {exc}") from exc
    return model.eval()


# ---- loading ONNX ----------------------------------------------------------------------------

_PARAM_OPS = {"Conv", "BatchNormalization", "PRelu", "Gemm", "MatMul"}


@dataclass
class _Op:
    node: object  # onnx.NodeProto
    kind: str
    inputs: list[np.ndarray | None]  # constant inputs (None where the input is an activation)
    output: str  # the tensor this op produces (after a bias Add fused into a MatMul)


def _onnx_ops(path: Path) -> tuple[list[_Op], dict[str, int], set[str]]:
    """Parametric nodes in graph (= execution) order with their constant inputs resolved, how many
    nodes read each tensor, and the graph's image inputs."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ArcFaceWeightsError(f"cannot read ONNX model {path}: {exc}") from exc
    graph = model.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers: dict[str, int] = {}
    ops: list[_Op] = []
    image_inputs = {value.name for value in graph.input if value.name not in consts}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type in {"Identity", "Unsqueeze", "Reshape"} and node.input[0] in consts:
            # exporters store PRelu slopes as (C,) and reshape them to (C, 1, 1) in the graph;
            # only the element order matters to the loader, which reshapes to the module's shape
            consts[node.output[0]] = consts[node.input[0]]
        elif node.op_type == "Add" and ops and ops[-1].kind == "MatMul" and ops[-1].output in node.input:
            # a bias-carrying linear layer can be exported as MatMul then Add(constant)
            other = [name for name in node.input if name != ops[-1].output]
            if len(other) != 1 or other[0] not in consts:
                raise ArcFaceWeightsError(f"{path}: '{node.name}' adds a non-constant to a linear layer")
            ops[-1].inputs.append(consts[other[0]])
            ops[-1].output = node.output[0]
        elif node.op_type in _PARAM_OPS:
            ops.append(_Op(node, node.op_type, [consts.get(name) for name in node.input], node.output[0]))
    return ops, consumers, image_inputs


def _attr(node: object, name: str, default: float | int) -> float | int:
    for attribute in node.attribute:  # type: ignore[attr-defined]
        if attribute.name == name:
            return attribute.f if attribute.type == attribute.FLOAT else attribute.i
    return default


def _ints(node: object, name: str, default: tuple[int, ...]) -> list[int]:
    for attribute in node.attribute:  # type: ignore[attr-defined]
        if attribute.name == name:
            return list(attribute.ints)
    return list(default)


def _onnx_arch(ops: list[_Op]) -> str:
    convs = [op for op in ops if op.kind == "Conv"]
    if any(_attr(op.node, "group", 1) != 1 for op in convs):
        return "mbf"
    by_count = {1 + 2 * sum(layers) + 4: name for name, layers in IRESNET_LAYERS.items()}
    if len(convs) not in by_count:
        raise ArcFaceWeightsError(f"{len(convs)} convolutions match no IResNet (r18/r34/r50/r100)")
    return by_count[len(convs)]


class _OnnxLoader:
    """Walks the backbone's modules in execution order, consuming the graph's parametric nodes."""

    def __init__(self, ops: list[_Op], consumers: dict[str, int], source: str) -> None:
        self.ops = ops
        self.consumers = consumers
        self.pos = 0
        self.source = source

    def _fail(self, message: str) -> ArcFaceWeightsError:
        return ArcFaceWeightsError(f"{self.source}: {message}")

    def _next(self, kind: str, what: str) -> _Op:
        if self.pos >= len(self.ops):
            raise self._fail(f"graph ends before {what}")
        op = self.ops[self.pos]
        if op.kind != kind:
            raise self._fail(f"{what}: expected {kind}, found {op.kind} node '{op.node.name}'")
        self.pos += 1
        return op

    def _const(self, op: _Op, index: int, what: str) -> np.ndarray | None:
        if index >= len(op.inputs):
            return None
        value = op.inputs[index]
        if value is None:
            raise self._fail(f"{what}: input {index} of '{op.node.name}' is not a constant")
        return value

    def _feeds_batchnorm(self, op: _Op) -> bool:
        """Whether the next parametric node is a BatchNormalization reading only this op's output."""
        if self.pos >= len(self.ops):
            return False
        following = self.ops[self.pos]
        out = op.output
        return (
            following.kind == "BatchNormalization"
            and following.node.input[0] == out
            and (self.consumers.get(out, 0) == 1)
        )

    @staticmethod
    def _copy(param: torch.Tensor, value: np.ndarray, what: str, source: str) -> None:
        if tuple(value.shape) != tuple(param.shape):
            raise ArcFaceWeightsError(
                f"{source}: {what} has shape {value.shape}, expected {tuple(param.shape)}"
            )
        param.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))

    def batchnorm(self, bn: nn.modules.batchnorm._BatchNorm, name: str, shift: np.ndarray | None) -> None:
        """Load `bn` from the next BatchNormalization; `shift` is a bias added just before it."""
        op = self._next("BatchNormalization", name)
        scale, bias, mean, var = (self._const(op, i, name) for i in range(1, 5))
        eps = float(_attr(op.node, "epsilon", 1e-5))
        if shift is not None:
            mean = mean - shift  # BN(x + b) with mean m equals BN(x) with mean m - b
        self._copy(bn.weight, scale, f"{name}.weight", self.source)
        self._copy(bn.bias, bias, f"{name}.bias", self.source)
        self._copy(bn.running_mean, mean, f"{name}.running_mean", self.source)
        # keep var + eps, the only thing that matters, exact under our module's eps
        self._copy(bn.running_var, var + eps - bn.eps, f"{name}.running_var", self.source)

    def neutral_batchnorm(self, bn: nn.modules.batchnorm._BatchNorm, name: str, bias: np.ndarray) -> None:
        """A BatchNorm the exporter folded away: identity scale, the folded bias as its shift."""
        ones = np.ones(bn.num_features, np.float32)
        self._copy(bn.bias, bias, f"{name}.bias (folded)", self.source)
        self._copy(bn.weight, ones, f"{name}.weight", self.source)
        self._copy(bn.running_mean, np.zeros_like(ones), f"{name}.running_mean", self.source)
        self._copy(bn.running_var, ones - bn.eps, f"{name}.running_var", self.source)

    def conv(self, conv: nn.Conv2d, name: str, bn: tuple[str, nn.BatchNorm2d] | None) -> None:
        op = self._next("Conv", name)
        group = _attr(op.node, "group", 1)
        strides = tuple(_ints(op.node, "strides", (1, 1)))
        pads = tuple(_ints(op.node, "pads", (0, 0, 0, 0)))
        if (group, strides, pads) != (conv.groups, conv.stride, conv.padding * 2):
            raise self._fail(
                f"{name}: conv group {group} strides {strides} pads {pads}, expected "
                f"{conv.groups}, {conv.stride}, {conv.padding * 2}"
            )
        self._copy(conv.weight, self._const(op, 1, name), f"{name}.weight", self.source)
        bias = self._const(op, 2, name)
        if bn is None:
            if bias is not None:
                raise self._fail(f"{name}: the graph's conv has a bias and no BatchNorm to take it")
            return
        bn_name, bn_module = bn
        if self._feeds_batchnorm(op):
            self.batchnorm(bn_module, bn_name, bias)
        elif bias is not None:
            self.neutral_batchnorm(bn_module, bn_name, bias)
        else:
            raise self._fail(f"{name}: no BatchNormalization after it and no folded bias")

    def prelu(self, prelu: nn.PReLU, name: str) -> None:
        op = self._next("PRelu", name)
        slope = self._const(op, 1, name)
        if slope.size != prelu.num_parameters:
            raise self._fail(f"{name}: PRelu slope has {slope.size} values, expected {prelu.num_parameters}")
        self._copy(prelu.weight, slope.reshape(-1), f"{name}.weight", self.source)

    def linear(self, linear: nn.Linear, name: str, bn: tuple[str, nn.BatchNorm1d]) -> None:
        if self.pos < len(self.ops) and self.ops[self.pos].kind == "MatMul":
            op = self._next("MatMul", name)
            weight = self._const(op, 1, name).T  # MatMul's B is (in, out)
        else:
            op = self._next("Gemm", name)
            weight = self._const(op, 1, name)
            if not _attr(op.node, "transB", 0):
                weight = weight.T
            if (
                _attr(op.node, "transA", 0)
                or _attr(op.node, "alpha", 1.0) != 1.0
                or _attr(op.node, "beta", 1.0) != 1.0
            ):
                raise self._fail(f"{name}: Gemm with transA/alpha/beta is not a plain linear layer")
        self._copy(linear.weight, weight, f"{name}.weight", self.source)
        bias = self._const(op, 2, name)
        bias = np.zeros(linear.out_features, np.float32) if bias is None else bias.reshape(-1)
        bn_name, bn_module = bn
        if linear.bias is not None:  # IResNet's fc has its own bias; mbf's has none
            self._copy(linear.bias, bias, f"{name}.bias", self.source)
            bias = np.zeros_like(bias)
        if self._feeds_batchnorm(op):
            self.batchnorm(bn_module, bn_name, bias)
        else:  # BatchNorm1d folded into the Gemm
            self.neutral_batchnorm(bn_module, bn_name, bias)

    def finish(self) -> None:
        if self.pos != len(self.ops):
            extra = self.ops[self.pos]
            raise self._fail(
                f"graph has more layers than the backbone (next: {extra.kind} '{extra.node.name}')"
            )


def _leaf_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    # Registration order is execution order in both backbones (checked by the ONNX round-trip test).
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.PReLU, nn.Linear)):
            yield name, module


@torch.no_grad()
def load_onnx(path: str | Path) -> tuple[nn.Module, str]:
    """An ArcFace ONNX export (IResNet r18/r34/r50/r100 or mbf) as our module, and its arch name.

    BatchNorm may be folded into the preceding conv or fc (then it becomes a neutral BatchNorm
    carrying the folded bias) or kept as BatchNormalization nodes; both load exactly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ArcFace weights not found: {path}")
    ops, consumers, image_inputs = _onnx_ops(path)
    if not ops or ops[0].kind != "Conv" or ops[0].node.input[0] not in image_inputs:
        # e.g. MXNet conversions normalise pixels inside the graph: our preprocessing would be wrong
        raise ArcFaceWeightsError(
            f"{path}: the graph does not start with a convolution of its input (not an arcface_torch export)"
        )
    arch = _onnx_arch(ops)
    model = get_backbone(arch)
    loader = _OnnxLoader(ops, consumers, str(path))
    leaves = list(_leaf_modules(model))
    i = 0
    while i < len(leaves):
        name, module = leaves[i]
        following = leaves[i + 1] if i + 1 < len(leaves) else None
        pairs_with_bn = following is not None and isinstance(following[1], (nn.BatchNorm2d, nn.BatchNorm1d))
        if isinstance(module, nn.Conv2d):
            loader.conv(module, name, following if pairs_with_bn else None)  # type: ignore[arg-type]
            i += 2 if pairs_with_bn else 1
        elif isinstance(module, nn.Linear):
            if not pairs_with_bn:
                raise ArcFaceWeightsError(
                    f"{name}: a linear layer without BatchNorm1d is not an ArcFace head"
                )
            loader.linear(module, name, following)  # type: ignore[arg-type]
            i += 2
        elif isinstance(module, nn.PReLU):
            loader.prelu(module, name)
            i += 1
        else:
            loader.batchnorm(module, name, None)  # type: ignore[arg-type]
            i += 1
    loader.finish()
    return model.eval(), arch
