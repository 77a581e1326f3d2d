"""ArcFace embedders: insightface's IResNet / MobileFaceNet backbones from user-supplied weights.

Contract (arcface_torch's): 112x112 RGB chips aligned onto `ARCFACE_TEMPLATE_112`, normalised as
(x / 255 - 0.5) / 0.5; 512 features out, L2-normalised here. Weights come by path: an
arcface_torch `backbone.pth` (backbone named by `arch`) or an ONNX export such as buffalo_l's
`w600k_r50.onnx` (backbone read from the graph).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from childface.vision import arcface
from childface.vision.alignment import ARCFACE_TEMPLATE_112
from childface.vision.embedders.base import Embedder
from childface.vision.weights import sha256_file


class ArcFaceEmbedder(Embedder):
    dim = arcface.EMBEDDING_DIM
    chip_size = arcface.INPUT_SIZE

    def __init__(
        self,
        weights: str | Path,
        arch: str = "r50",
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> None:
        """`arch` names the backbone of a .pth checkpoint; an .onnx file says its own."""
        path = Path(weights)
        if path.suffix.lower() == ".onnx":
            model, arch = arcface.load_onnx(path)
        elif path.suffix.lower() in {".pth", ".pt"}:
            model = arcface.load_checkpoint(path, arch)
        else:
            raise ValueError(
                f"ArcFace weights must be an arcface_torch .pth or an .onnx file, not {path.name}"
            )
        self.name = f"arcface-{arch}"
        self.arch = arch
        self.weights_path = path
        self.weights_sha256 = sha256_file(path)
        self.device = torch.device(device)
        self.batch_size = batch_size
        # float32 on every device: no published ArcFace weights here to measure float16 against
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)

    @property
    def template(self) -> np.ndarray:
        return ARCFACE_TEMPLATE_112.copy()

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        size = self.chip_size
        if chips.dtype != torch.uint8 or chips.ndim != 4 or tuple(chips.shape[1:]) != (3, size, size):
            raise ValueError(
                f"expected uint8 chips (N, 3, {size}, {size}), got {chips.dtype} {tuple(chips.shape)}"
            )
        outputs = []
        with torch.inference_mode():
            for start in range(0, chips.shape[0], self.batch_size):
                batch = chips[start : start + self.batch_size].to(self.device, non_blocking=True)
                x = batch.float().div_(127.5).sub_(1.0)  # (x / 255 - 0.5) / 0.5
                outputs.append(self.model(x.contiguous(memory_format=torch.channels_last)))
            if not outputs:
                return torch.empty((0, self.dim), dtype=torch.float32, device=self.device)
            return F.normalize(torch.cat(outputs).float(), dim=1)
