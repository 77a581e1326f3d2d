"""Flip test-time augmentation: a face's embedding averaged with its mirror image's.

`FlipEmbedder(inner)` keeps the `base.Embedder` contract with the inner embedder's chip size,
template, dimension and weights: each aligned chip is embedded together with the same chip
mirrored horizontally (its width axis reversed), in ONE call to the inner embedder on 2N chips,
and the two unit vectors of each face are averaged and L2-normalised again.

It is an embedding space of its own: `name` is "<inner name>+flip", so `model_id` is
"<inner name>+flip:<first 16 hex of the weights' sha256>", and flipped and plain vectors are
never searched together.

The chip, not the photo, is mirrored: the alignment template is left/right symmetric only
approximately, so the mirrored chip's landmarks sit a little off the template (dlib's 150 px
template: eyes 0.8 px, mouth corners 1.6 px, nose tip 2.5 px; ArcFace's 112 px: 0.9 / 1.3 /
1.1 px). That is well within the spread of real faces around the template (4-14 px RMS for
dlib's) and costs no second warp.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from childface.vision.embedders.base import Embedder


class FlipEmbedder(Embedder):
    """`inner`'s embedding of each chip averaged with that of the mirrored chip, unit length."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = f"{inner.name}+flip"
        self.dim = inner.dim
        self.chip_size = inner.chip_size
        self.weights_sha256 = inner.weights_sha256
        self.device = inner.device

    @property
    def template(self) -> np.ndarray:
        return self.inner.template

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        if chips.ndim != 4:
            raise ValueError(f"expected chips (N, 3, S, S), got {tuple(chips.shape)}")
        n = chips.shape[0]
        with torch.inference_mode():
            both = self.inner.embed(torch.cat([chips, chips.flip(-1)]))
            return F.normalize(both[:n].float() + both[n:].float(), dim=1)
