"""Batched RetinaFace face detection: resize, pad, network, priors, decoding, NMS.

API (stable; other modules rely on it)::

    detector = RetinaFaceDetector.from_settings(settings)
    results = detector.detect([rgb_uint8_array, ...])   # list[Detections], one per image
    results[0].boxes      # (K, 4) float32, x1, y1, x2, y2 in the original image's pixels
    results[0].scores     # (K,)   float32, face probability, descending
    results[0].landmarks  # (K, 5, 2) float32, original pixels; order: image-left eye,
                          # image-right eye, nose, image-left mouth corner, image-right mouth corner

Input images are uint8 RGB (H, W, 3) numpy arrays of any sizes. Each image is
resized (aspect kept) so its longest side is `input_size` (up or down: a face
then has the same detector-pixel size whatever the photo's resolution), the
conversion to float happens after resizing, the batch is padded to one size (a
multiple of 32) after mean subtraction so the padding reads as zero, and the
network runs BatchNorm-folded in channels_last memory format (CPU, one thread,
t1.jpg at 640x448: 24.5 ms against 30.5 ms in contiguous NCHW).

Default `input_size` (Settings.detector_input_size = 640), chosen by
measurement (docs/pipeline.md, "Detector input scale"): t1.jpg keeps its six
faces at every size down to 352 (detect: 27 ms at 640, 15 ms at 352, one
thread), but below 576 faces of 48 px in a 1280 px photo start to be missed;
640 is the smallest size that keeps them all.

Post-processing is vectorised over the whole batch: scores are thresholded
before anything is decoded (decoding all anchors would cost more than the rest
together), at most `PRE_NMS_TOP_K` candidates per image go on, and one NMS pass
runs over many images at once, in blocks of whole images of at most
`NMS_BLOCK` candidates (Cluster-NMS: matrix iterations that give exactly greedy
NMS's result, IoU without biubug6's legacy "+1" pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch

from childface.config import Settings
from childface.vision.retinaface import RetinaFace, fuse_batchnorm
from childface.vision.weights import DetectorWeights, load_detector_weights

#: (stride, anchor sizes) per pyramid level, biubug6's cfg `steps` / `min_sizes`
PRIOR_LEVELS: tuple[tuple[int, tuple[int, int]], ...] = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))
VARIANCE = (0.1, 0.2)  # centre / size variances of the box encoding
PAD_MULTIPLE = 32  # coarsest stride: padded sizes keep every pyramid level aligned
PRE_NMS_TOP_K = 2000  # candidates per image that enter NMS
NMS_BLOCK = max(2048, PRE_NMS_TOP_K)  # candidates per NMS call (bounds its IoU matrix)


@dataclass(frozen=True)
class Detections:
    """Faces found in one image, sorted by descending score (numpy, original pixels)."""

    boxes: np.ndarray  # (K, 4) float32
    scores: np.ndarray  # (K,) float32
    landmarks: np.ndarray  # (K, 5, 2) float32

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass(frozen=True)
class PreparedBatch:
    """Network input for a batch plus what maps its coordinates back to each original image."""

    tensor: torch.Tensor  # float32 (B, 3, Hp, Wp), BGR minus mean, zero padding, channels_last
    scales: torch.Tensor  # (B, 2) detector pixels per original pixel, (x, y)


def priors(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(P, 3) anchors (cx, cy, size) in input pixels for an input of height x width.

    Order matches the heads' output: level by level, row-major over the feature
    map, the two anchor sizes of a location next to each other.
    """
    return _priors_cached(height, width, str(device))


@lru_cache(maxsize=32)
def _priors_cached(height: int, width: int, device: str) -> torch.Tensor:
    levels = []
    for step, sizes in PRIOR_LEVELS:
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy = (torch.arange(rows, dtype=torch.float32) + 0.5) * step
        cx = (torch.arange(cols, dtype=torch.float32) + 0.5) * step
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        size = torch.tensor(sizes, dtype=torch.float32).reshape(1, -1, 1).expand(centres.shape[0], -1, 1)
        levels.append(torch.cat([centres, size], dim=-1).reshape(-1, 3))
    return torch.cat(levels).to(device)


def decode_boxes(loc: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(N, 4) regressions + (N, 3) anchors -> (N, 4) x1, y1, x2, y2 in input pixels."""
    centre = anchors[:, :2] + loc[:, :2] * VARIANCE[0] * anchors[:, 2:]
    half = anchors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCE[1]) / 2
    return torch.cat([centre - half, centre + half], dim=1)


def decode_landmarks(landm: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(N, 10) regressions + (N, 3) anchors -> (N, 5, 2) points in input pixels."""
    return anchors[:, None, :2] + landm.reshape(-1, 5, 2) * VARIANCE[0] * anchors[:, None, 2:]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) x (M, 4) boxes (x1, y1, x2, y2) -> (N, M) intersection over union."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Greedy NMS within each group (image); returns kept indices by descending score.

    Cluster-NMS (Zheng et al., 2020): iterate "a box survives when no surviving
    higher-scored box overlaps it by more than `threshold`" as matrix operations
    until it stops changing; the fixed point is exactly greedy NMS's result.
    """
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    order = torch.argsort(scores, descending=True)
    boxes, groups = boxes[order], groups[order]
    iou = box_iou(boxes, boxes)
    iou = iou * (groups[:, None] == groups[None, :])  # boxes of different images never suppress
    iou = iou.triu_(diagonal=1)  # only higher-scored boxes (rows) suppress lower ones (columns)
    suppressing = iou
    for _ in range(order.numel()):
        keep = suppressing.max(dim=0).values <= threshold
        updated = iou * keep[:, None]
        if torch.equal(updated, suppressing):
            break
        suppressing = updated
    return order[keep]


class RetinaFaceDetector:
    def __init__(
        self,
        weights: DetectorWeights,
        *,
        device: str | torch.device = "cpu",
        input_size: int = 640,
        score_threshold: float = 0.8,
        nms_threshold: float = 0.4,
    ) -> None:
        self.weights = weights
        self.device = torch.device(device)
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.model_id = weights.model_id
        self.network = _build_network(weights, self.device)
        self._mean_bgr = torch.tensor(weights.mean_bgr, dtype=torch.float32, device=self.device)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetinaFaceDetector:
        weights = load_detector_weights(settings.detector_weights)
        expected = "resnet50" if settings.detector == "retinaface-resnet50" else "mobilenet0.25"
        if weights.backbone != expected:
            raise ValueError(
                f"detector {settings.detector!r} needs a {expected} checkpoint, "
                f"but {weights.source} is {weights.backbone}"
            )
        return cls(
            weights,
            device=settings.resolved_device,
            input_size=settings.detector_input_size,
            score_threshold=settings.detector_score_threshold,
            nms_threshold=settings.detector_nms_threshold,
        )

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """Size (h, w) an image of height x width is resized to before detection."""
        scale = self.input_size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def prepare(self, images: list[np.ndarray]) -> PreparedBatch:
        """Resize (uint8, on the CPU), pad to one size, subtract the mean: the network's input."""
        resized = []
        for image in images:
            _check_image(image)
            h, w = self.resized_shape(*image.shape[:2])
            if (h, w) == image.shape[:2]:
                resized.append(image)
            else:
                shrink = h < image.shape[0]
                resized.append(
                    cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
                )
        pad_h = _round_up(max(r.shape[0] for r in resized), PAD_MULTIPLE)
        pad_w = _round_up(max(r.shape[1] for r in resized), PAD_MULTIPLE)
        # NHWC buffer: its NCHW permutation is channels_last without another copy
        batch = torch.zeros((len(images), pad_h, pad_w, 3), dtype=torch.float32, device=self.device)
        for i, image in enumerate(resized):
            h, w = image.shape[:2]
            pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.device, non_blocking=True)
            region = batch[i, :h, :w]
            region.copy_(pixels.flip(-1))  # RGB -> BGR
            region.sub_(self._mean_bgr)
        scales = torch.tensor(
            [
                [r.shape[1] / im.shape[1], r.shape[0] / im.shape[0]]
                for r, im in zip(resized, images, strict=True)
            ],
            dtype=torch.float32,
            device=self.device,
        )
        return PreparedBatch(batch.permute(0, 3, 1, 2), scales)

    @torch.inference_mode()
    def forward(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw head outputs (loc, conf, landmarks) for a prepared input.

        float32 on every device: with float16 activations (measured by running the
        network in half precision) t1.jpg's landmarks moved by up to 2.8 px and the
        dlib descriptors of those faces fell to cosine 0.993 against float32, while
        this small network gains little from half precision on a GPU. For the same
        reason cuDNN's TF32 convolutions (same 10-bit mantissa) are switched off here.
        """
        if self.device.type != "cuda":
            return self.network(tensor)
        cudnn = torch.backends.cudnn
        with cudnn.flags(
            enabled=cudnn.enabled,
            benchmark=cudnn.benchmark,
            deterministic=cudnn.deterministic,
            allow_tf32=False,
        ):
            return self.network(tensor)

    @torch.inference_mode()
    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        """Faces in each image (see the module docstring for the contract)."""
        if not images:
            return []
        return [
            Detections(b.cpu().numpy(), s.cpu().numpy(), lm.cpu().numpy())
            for b, s, lm in self.detect_tensors(images)
        ]

    @torch.inference_mode()
    def detect_tensors(
        self, images: list[np.ndarray]
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Like `detect`, but (boxes, scores, landmarks) stay torch tensors on the detector's device."""
        batch = self.prepare(images)
        loc, conf, landm = self.forward(batch.tensor)
        return self.postprocess(loc, conf, landm, batch)

    def postprocess(
        self, loc: torch.Tensor, conf: torch.Tensor, landm: torch.Tensor, batch: PreparedBatch
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Threshold, decode the survivors, NMS, map back to original pixels; per image."""
        size, num_priors = conf.shape[:2]
        anchors = priors(batch.tensor.shape[2], batch.tensor.shape[3], conf.device)
        scores = conf[..., 1]
        top_scores, top_index = scores.topk(min(PRE_NMS_TOP_K, num_priors), dim=1)
        image_index, rank = torch.nonzero(top_scores > self.score_threshold, as_tuple=True)
        prior_index = top_index[image_index, rank]

        boxes = decode_boxes(loc[image_index, prior_index], anchors[prior_index])
        points = decode_landmarks(landm[image_index, prior_index], anchors[prior_index])
        kept_scores = top_scores[image_index, rank]
        # candidates come grouped by image; NMS runs over blocks of whole images
        keep = torch.cat(
            [
                start
                + batched_nms(
                    boxes[start:end], kept_scores[start:end], image_index[start:end], self.nms_threshold
                )
                for start, end in _nms_blocks(torch.bincount(image_index, minlength=size).tolist())
            ]
            or [torch.zeros(0, dtype=torch.long, device=conf.device)]
        )
        # stable sort by image keeps each image's faces in descending score order
        keep = keep[torch.sort(image_index[keep], stable=True).indices]

        image_index = image_index[keep]
        scale = batch.scales[image_index]
        boxes = boxes[keep] / scale.repeat(1, 2)
        points = points[keep] / scale[:, None, :]
        counts = torch.bincount(image_index, minlength=size).tolist()
        return list(
            zip(boxes.split(counts), kept_scores[keep].split(counts), points.split(counts), strict=True)
        )


def _nms_blocks(counts: list[int]) -> list[tuple[int, int]]:
    """Split candidates (grouped by image, `counts` per image) into runs of whole images of at
    most NMS_BLOCK candidates, so one NMS call's IoU matrix stays small (2048^2 floats = 16 MB)."""
    blocks: list[tuple[int, int]] = []
    start = end = 0
    for count in counts:
        if end > start and end - start + count > NMS_BLOCK:
            blocks.append((start, end))
            start = end
        end += count
    if end > start:
        blocks.append((start, end))
    return blocks


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("the detector takes uint8 RGB images of shape (H, W, 3)")
    if min(image.shape[:2]) < 1:
        raise ValueError("empty image")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


_NETWORKS: dict[tuple[str, str], torch.nn.Module] = {}


def _build_network(weights: DetectorWeights, device: torch.device) -> torch.nn.Module:
    """RetinaFace with `weights`, BatchNorm folded, eval mode, channels_last; one per weights and device."""
    key = (weights.sha256, str(device))
    if key not in _NETWORKS:
        network = RetinaFace(weights.backbone)
        network.load_state_dict(weights.state_dict, strict=True)
        network = fuse_batchnorm(network.eval()).to(device, memory_format=torch.channels_last)
        _NETWORKS[key] = network
    return _NETWORKS[key]
