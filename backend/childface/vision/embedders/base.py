"""The contract every face embedder keeps.

Input: aligned chips as a uint8 tensor (N, 3, S, S), RGB, on the embedder's
device, where S == `chip_size` and the five landmarks of each face were warped
onto `template` (pixel coordinates in the chip, order: image-left eye,
image-right eye, nose, image-left mouth corner, image-right mouth corner).
Output: float32 (N, dim), each row L2-normalised, so cosine similarity is the
inner product (DESIGN.md invariant 4).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch


class Embedder(ABC):
    #: short family name, e.g. "dlib-resnet", "arcface-r50"
    name: str
    #: embedding dimension
    dim: int
    #: side of the square chip the network expects, pixels
    chip_size: int
    #: sha256 of the weights file the network was loaded from
    weights_sha256: str
    device: torch.device

    @property
    def model_id(self) -> str:
        """Identity of the embedding space: name + weights hash, stored with every embedding."""
        return f"{self.name}:{self.weights_sha256[:16]}"

    @property
    @abstractmethod
    def template(self) -> np.ndarray:
        """(5, 2) float32 landmark positions in chip pixels that alignment warps onto."""

    @abstractmethod
    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) RGB chips -> float32 (N, dim) unit vectors (on `device`)."""

    def embed_numpy(self, chips: np.ndarray) -> np.ndarray:
        """Convenience for tests and tools: uint8 (N, S, S, 3) RGB -> float32 (N, dim) on the CPU."""
        tensor = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).to(self.device)
        return self.embed(tensor).float().cpu().numpy()
