"""Five-point face alignment: similarity transform onto an embedder's template, then warp.

Conventions
- Landmarks are used as the detector gives them (continuous pixel coordinates,
  order: image-left eye, image-right eye, nose, image-left mouth corner,
  image-right mouth corner), the way insightface feeds its RetinaFace
  landmarks to `norm_crop`; templates are in the same convention.
- A transform is a (2, 3) matrix mapping image pixels to chip pixels; both warps
  sample with pixel centres at integer coordinates (OpenCV's convention; for
  grid_sample that is align_corners=False), bilinear, zero outside the image.
- Chips are uint8 RGB, (N, 3, S, S), on the embedder's device.

Two warps compute the same chips (within one grey level, OpenCV rounds its
bilinear weights to 1/32):
- `warp_opencv`: cv2.warpAffine per face on the CPU;
- `warp_torch`: one grid_sample per source image over all its faces, on any device.
`align_faces` picks OpenCV on the CPU and grid_sample on CUDA, by measurement:
t1.jpg's 6 faces, similarity fit included, best of 30 runs on the 2-core EPYC
development VM (docs/pipeline.md):

    chip 112: OpenCV 0.91 ms, grid_sample 1.95 ms (2 threads; 1 thread: 0.94 / 3.35 ms)
    chip 150: OpenCV 1.42 ms, grid_sample 2.79 ms (2 threads; 1 thread: 1.50 / 5.02 ms)

grid_sample first turns the whole image into float; OpenCV reads uint8 pixels.
On CUDA the warp runs on the GPU and the chips stay there for the embedder.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

#: insightface's ArcFace 112x112 template (arcface_torch / insightface.utils.face_align), chip pixels
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def estimate_similarity(landmarks: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, shift; no reflection) per face.

    landmarks (N, K, 2) image points, template (K, 2) chip points -> (N, 2, 3)
    matrices M with template ~ M @ [x, y, 1]. In 2-D, Umeyama's solution is the
    complex least-squares fit d = a * s + t with a = sum(conj(s_c) d_c) / sum(|s_c|^2)
    over centred points, which vectorises over the batch.
    """
    src = landmarks.to(torch.float64)
    dst = template.to(src.device, torch.float64).expand_as(src)
    src_mean, dst_mean = src.mean(dim=1, keepdim=True), dst.mean(dim=1, keepdim=True)
    s, d = src - src_mean, dst - dst_mean
    norm = (s * s).sum(dim=(1, 2)).clamp(min=1e-12)
    a_re = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(dim=1) / norm
    a_im = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(dim=1) / norm
    rot = torch.stack([torch.stack([a_re, -a_im], dim=-1), torch.stack([a_im, a_re], dim=-1)], dim=1)
    shift = dst_mean[:, 0, :, None] - rot @ src_mean[:, 0, :, None]
    return torch.cat([rot, shift], dim=2).to(torch.float32)


def transform_points(points: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Apply (N, 2, 3) matrices to (N, K, 2) points."""
    return points @ matrices[:, :, :2].transpose(1, 2) + matrices[:, None, :, 2]


def warp_opencv(
    images: Sequence[np.ndarray], image_index: Sequence[int], matrices: np.ndarray, size: int
) -> np.ndarray:
    """cv2.warpAffine per face: uint8 (H, W, 3) images -> uint8 (N, size, size, 3) chips."""
    chips = np.empty((len(image_index), size, size, 3), dtype=np.uint8)
    for n, (i, matrix) in enumerate(zip(image_index, matrices, strict=True)):
        cv2.warpAffine(
            images[i],
            matrix.astype(np.float64),
            (size, size),
            dst=chips[n],
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        )
    return chips


def warp_torch(
    images: Sequence[torch.Tensor], image_index: torch.Tensor, matrices: torch.Tensor, size: int
) -> torch.Tensor:
    """grid_sample over all faces of each image: uint8 (H, W, 3) tensors -> uint8 (N, 3, size, size)."""
    device = matrices.device
    chips = torch.empty((matrices.shape[0], 3, size, size), dtype=torch.uint8, device=device)
    coords = torch.arange(size, dtype=torch.float32, device=device)
    grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
    chip_points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).reshape(-1, 3)
    for i, image in enumerate(images):
        faces = torch.nonzero(image_index == i, as_tuple=True)[0]
        if faces.numel() == 0:
            continue
        height, width = image.shape[:2]
        inverse = _invert_affine(matrices[faces])  # chip -> image
        source = chip_points @ inverse.transpose(1, 2)  # (k, size*size, 2) image pixels
        scale = torch.tensor([2.0 / width, 2.0 / height], device=device)
        grid = ((source + 0.5) * scale - 1.0).reshape(-1, size, size, 2)
        pixels = image.permute(2, 0, 1)[None].float().expand(faces.numel(), -1, -1, -1)
        sampled = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        chips[faces] = sampled.round_().clamp_(0, 255).to(torch.uint8)
    return chips


def _invert_affine(matrices: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) affine maps -> their inverses (closed-form 2x2 inverse: no solver library on CUDA)."""
    a, b, c, d = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 1, 0], matrices[:, 1, 1]
    det = a * d - b * c
    rot_inv = (
        torch.stack([torch.stack([d, -b], dim=-1), torch.stack([-c, a], dim=-1)], dim=1) / det[:, None, None]
    )
    return torch.cat([rot_inv, -rot_inv @ matrices[:, :, 2:]], dim=2)


def align_faces(
    images: Sequence[np.ndarray],
    image_index: Sequence[int] | np.ndarray,
    landmarks: np.ndarray | torch.Tensor,
    template: np.ndarray,
    size: int,
    device: torch.device | str = "cpu",
    *,
    method: str | None = None,
    device_images: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp every face of a batch onto `template`: returns (chips uint8 (N, 3, S, S), matrices (N, 2, 3)).

    images: uint8 RGB (H, W, 3) arrays; image_index: which image each face is in;
    landmarks: (N, 5, 2) in that image's pixels. `method` is "opencv" or "torch";
    None picks the faster one for `device`. `device_images` are the same images as
    uint8 tensors already on `device` (the torch warp reuses them instead of uploading).
    """
    device = torch.device(device)
    points = torch.as_tensor(landmarks, dtype=torch.float32, device=device).reshape(-1, 5, 2)
    matrices = estimate_similarity(points, torch.as_tensor(template, device=device))
    method = method or ("torch" if device.type == "cuda" else "opencv")
    if points.shape[0] == 0:
        return torch.empty((0, 3, size, size), dtype=torch.uint8, device=device), matrices
    if method == "opencv":
        chips = warp_opencv(images, [int(i) for i in image_index], matrices.cpu().numpy(), size)
        return torch.from_numpy(chips).permute(0, 3, 1, 2).contiguous().to(device), matrices
    if method == "torch":
        if device_images is None:
            device_images = [torch.from_numpy(np.ascontiguousarray(im)).to(device) for im in images]
        index = torch.as_tensor(np.asarray(image_index), dtype=torch.long, device=device)
        return warp_torch(device_images, index, matrices, size), matrices
    raise ValueError(f"unknown warp method {method!r}; expected 'opencv' or 'torch'")
