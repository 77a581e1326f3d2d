"""dlib's ResNet face descriptor (loss_metric, 128-d) rebuilt in torch, weights read from dlib's file.

Contract (as dlib's `input_rgb_image_sized<150>` and `compute_face_descriptor`):
- input: 150x150 RGB chips, uint8, aligned like dlib's `get_face_chip(..., size=150, padding=0.25)`
  (for RetinaFace landmarks: warp onto `DLIB_TEMPLATE_150`);
- preprocessing: (pixel - per-channel mean) / 256, means read from the file;
- output: dlib's 128-d vector (norm about 1.3-1.6, "same person" when Euclidean distance < 0.6),
  which `DlibResNetEmbedder` L2-normalises (cosine similarity, DESIGN.md invariant 4).

Two places where dlib differs from a textbook ResNet, both reproduced here: strided layers
have no padding, and where a down block's branches differ in size dlib adds them as if the
smaller one were zero-padded at the end of channels, rows and columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from childface.vision import dlib_format as fmt
from childface.vision.embedders.base import Embedder
from childface.vision.weights import sha256_file

CHIP_SIZE = 150

#: Where RetinaFace's five landmarks (image-left eye, image-right eye, nose, image-left and
#: image-right mouth corner) land in dlib's 150x150 chip (padding 0.25), in chip pixels.
#: Measured, not designed (dlib aligns on its own landmarks): `dlib_template.derive_dlib_template`
#: maps RetinaFace's landmarks through dlib's own chip transform (frontal detector, 5-point shape
#: predictor, get_face_chip_details) and averages over the 16 faces that both detectors find in
#: insightface's t1.jpg (6), Tom_Hanks_54745.png and skimage's astronaut, each also mirrored.
#: Spread of the faces around it (RMS, px): eyes 4.1 / 5.2, nose 12.7, mouth 13.2 / 13.9.
#: Chips warped onto it give descriptors with cosine 0.986 mean (0.958 min) to dlib's own.
DLIB_TEMPLATE_150 = np.array(
    [
        [47.2140, 43.7685],
        [100.9913, 43.7378],
        [73.2691, 78.8566],
        [50.2741, 101.0032],
        [97.1311, 101.1615],
    ],
    dtype=np.float32,
)


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger shape, each operand zero-padded at the end."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class _Block(nn.Module):
    """relu(x + affine(conv(relu(affine(conv(x)))))); a down block adds avg_pool(x) instead."""

    def __init__(self, in_channels: int, out_channels: int, down: bool) -> None:
        super().__init__()
        stride, padding = (2, 0) if down else (1, 1)
        # Each conv carries its following affine layer folded in (scale weights, shift bias).
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x), inplace=True))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_zero_padded(y, shortcut), inplace=True)


class DlibResNet(nn.Module):
    """The network of dlib's dnn_face_recognition_ex (anet_type), float input already normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, fmt.STEM_CHANNELS, 7, 2, 0)
        blocks: list[_Block] = []
        channels = fmt.STEM_CHANNELS
        for out_channels, count, down in fmt.STAGES:
            if down:
                blocks.append(_Block(channels, out_channels, down=True))
            blocks += [_Block(out_channels, out_channels, down=False) for _ in range(count)]
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, fmt.EMBEDDING_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x), inplace=True), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    @torch.no_grad()
    def load_dlib(self, net: fmt.DlibResNetFile) -> None:
        """Copy the weights of a parsed dlib file in, checking every layer against this module."""
        layers = iter(net.layers)
        self._load_conv(self.stem, layers)
        _take(layers, fmt.Relu)
        _check_pool(_take(layers, fmt.Pool), "max", (3, 3), (2, 2))
        for block in self.blocks:
            self._load_conv(block.conv1, layers)
            _take(layers, fmt.Relu)
            self._load_conv(block.conv2, layers)
            if block.down:
                _check_pool(_take(layers, fmt.Pool), "avg", (2, 2), (2, 2))
            _take(layers, fmt.AddPrev)
            _take(layers, fmt.Relu)
        _check_pool(_take(layers, fmt.Pool), "avg", (0, 0), (1, 1))
        fc = _take(layers, fmt.Fc)
        if fc.bias is not None or tuple(fc.weight.shape) != tuple(self.fc.weight.shape):
            raise fmt.DlibFormatError(f"fc layer {fc.weight.shape} (bias: {fc.bias is not None}) mismatch")
        self.fc.weight.copy_(torch.from_numpy(fc.weight))
        if next(layers, None) is not None:
            raise fmt.DlibFormatError("more layers in the file than in dlib's ResNet v1")

    @staticmethod
    def _load_conv(conv: nn.Conv2d, layers: Iterator[fmt.Layer]) -> None:
        layer = _take(layers, fmt.Conv)
        affine = _take(layers, fmt.Affine)
        if (
            tuple(layer.weight.shape) != tuple(conv.weight.shape)
            or layer.stride != conv.stride
            or layer.padding != conv.padding
        ):
            raise fmt.DlibFormatError(
                f"conv {layer.weight.shape} stride {layer.stride} pad {layer.padding} does not fit "
                f"{tuple(conv.weight.shape)} stride {conv.stride} pad {conv.padding}"
            )
        gamma = torch.from_numpy(affine.gamma)
        conv.weight.copy_(torch.from_numpy(layer.weight) * gamma[:, None, None, None])
        conv.bias.copy_(torch.from_numpy(layer.bias) * gamma + torch.from_numpy(affine.beta))


def _take(layers: Iterator[fmt.Layer], kind: type) -> fmt.Layer:
    layer = next(layers, None)
    if not isinstance(layer, kind):
        raise fmt.DlibFormatError(f"expected a {kind.__name__} layer, found {type(layer).__name__}")
    return layer


def _check_pool(pool: fmt.Pool, kind: str, size: tuple[int, int], stride: tuple[int, int]) -> None:
    if (pool.kind, pool.size, pool.stride, pool.padding) != (kind, size, stride, (0, 0)):
        raise fmt.DlibFormatError(f"unexpected pooling layer {pool}")


class DlibResNetEmbedder(Embedder):
    """dlib's face descriptor, batched in torch on any device; unit-length float32 output."""

    name = "dlib-resnet"
    dim = fmt.EMBEDDING_DIM
    chip_size = CHIP_SIZE

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        half: bool | None = None,
    ) -> None:
        """`half`: float16 weights and activations; default on CUDA only (CPU float16 is slow).
        Measured on the CPU: float16 moves the unit descriptors by 1 - cosine < 1e-6."""
        path = Path(weights) if weights is not None else fmt.default_descriptor_path()
        net = fmt.load_resnet_v1(path)
        if net.input_size != (CHIP_SIZE, CHIP_SIZE):
            raise fmt.DlibFormatError(f"{path}: input size {net.input_size}, expected 150x150")
        self.weights_path = path
        self.weights_sha256 = sha256_file(path)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.distance_threshold = net.loss_distance_threshold
        model = DlibResNet()
        model.load_dlib(net)
        if half is None:
            half = self.device.type == "cuda"
        self.dtype = torch.float16 if half else torch.float32
        # channels_last: oneDNN and cuDNN both run these convs faster in NHWC
        # (CPU, 2 threads, batch 16: 3.8 vs 4.8 ms a face)
        self.model = model.eval().to(self.device, self.dtype, memory_format=torch.channels_last)
        self._mean = torch.tensor(net.channel_means, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @property
    def template(self) -> np.ndarray:
        return DLIB_TEMPLATE_150.copy()

    def raw_descriptors(self, chips: torch.Tensor) -> torch.Tensor:
        """dlib's own (not normalised) 128-d descriptors of uint8 (N, 3, 150, 150) RGB chips."""
        if chips.dtype != torch.uint8 or chips.ndim != 4 or tuple(chips.shape[1:]) != (3, 150, 150):
            raise ValueError(f"expected uint8 chips (N, 3, 150, 150), got {chips.dtype} {tuple(chips.shape)}")
        outputs = []
        with torch.inference_mode():
            for start in range(0, chips.shape[0], self.batch_size):
                batch = chips[start : start + self.batch_size].to(self.device, non_blocking=True)
                x = ((batch.float() - self._mean) / 256.0).to(self.dtype)
                outputs.append(self.model(x.contiguous(memory_format=torch.channels_last)).float())
        if not outputs:
            return torch.empty((0, self.dim), dtype=torch.float32, device=self.device)
        return torch.cat(outputs)

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return F.normalize(self.raw_descriptors(chips), dim=1)
