"""Several photos of one person from one real photo: crops, a mirror image, light, rotation, blur.

The photos come from installed packages (insightface's t1.jpg group photo and
Tom Hanks portrait, skimage's astronaut); nothing is stored in the repo.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

VARIANTS = 6


def insightface_images() -> Path | None:
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "data" / "images"
    return folder if folder.is_dir() else None


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot decode {path}"
    return np.ascontiguousarray(bgr[:, :, ::-1])


def encode_png(rgb: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return png.tobytes()


def _crop(rgb: np.ndarray, box: tuple[float, float, float, float], margin: float, shift: float) -> np.ndarray:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + shift * w, (y1 + y2) / 2
    half = max(w, h) * (0.5 + margin)
    # pad by edge replication so a crop near the border keeps the face centred
    pad = int(half) + 2
    padded = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    a, b = int(cx - half) + pad, int(cy - half) + pad
    size = int(2 * half)
    return np.ascontiguousarray(padded[b : b + size, a : a + size])


def face_variants(
    rgb: np.ndarray, box: tuple[float, float, float, float], n: int = VARIANTS
) -> list[np.ndarray]:
    """Up to six different photos of the face in `box` (original pixels), each at least 160 px."""
    out = []
    for i in range(n):
        crop = _crop(
            rgb, box, margin=(0.8, 1.0, 0.7, 0.9, 0.8, 0.85)[i], shift=(0, 0.05, -0.05, 0, 0.03, 0)[i]
        )
        if crop.shape[0] < 160:
            crop = cv2.resize(crop, (160, 160), interpolation=cv2.INTER_CUBIC)
        if i == 1:
            crop = crop[:, ::-1]
        elif i == 2:
            crop = np.clip(crop.astype(np.float32) * 0.65, 0, 255).astype(np.uint8)
        elif i == 3:
            crop = np.clip(255.0 * (crop / 255.0) ** 0.7 * 1.05, 0, 255).astype(np.uint8)
        elif i == 4:
            size = crop.shape[0]
            turn = cv2.getRotationMatrix2D((size / 2, size / 2), 8.0, 1.0)
            crop = cv2.warpAffine(crop, turn, (size, size), borderMode=cv2.BORDER_REFLECT)
        elif i == 5:
            size = crop.shape[0]
            small = cv2.resize(crop, (int(size * 0.6), int(size * 0.6)), interpolation=cv2.INTER_AREA)
            crop = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
        out.append(np.ascontiguousarray(crop))
    return out
