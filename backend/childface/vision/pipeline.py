"""The face pipeline: image bytes in, faces out (box, score, landmarks, quality, embedding, chip).

    pipeline = FacePipeline.from_settings(settings)     # models load once per process
    faces_per_image = pipeline.process([jpeg_bytes, rgb_array, ...])
    faces_per_image[0][0].embedding                     # float32 unit vector (dim,)

Steps for a list of images: decode (bytes; arrays are taken as uint8 RGB) ->
detect all images in batches of `DETECT_BATCH` -> align every face of the
batch onto the embedder's template with one similarity transform each -> quality
report per face -> embed all faces, `settings.batch_size` chips per forward pass.
Every face is embedded whatever its quality: callers decide (enrollment refuses
faces that fail the gate, recognition reports them).

Threads: batch work (import, eval, enrollment) calls `process` with its own
lists; those calls are serialised by one lock per set of models. The API's
request threads call `process_concurrent` with one photo each: a micro-batcher
(vision/batching.py) runs the photos of concurrent requests through the models
together, gathered within `settings.batch_window_ms`, with up to
`settings.batch_workers` such calls side by side (the models keep no state
between calls; with one worker it takes the lock too). Decoding always runs in
the caller's thread, outside all of it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from childface.config import Settings
from childface.vision.alignment import align_faces
from childface.vision.batching import MicroBatcher
from childface.vision.decode import decode_image
from childface.vision.detector import RetinaFaceDetector
from childface.vision.embedders.base import Embedder
from childface.vision.quality import QualityReport, assess

DETECT_BATCH = 8  # images per detector forward pass (bounds the padded input's memory)

ImageInput = bytes | np.ndarray


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2, original pixels
    score: float
    landmarks: np.ndarray  # (5, 2) float32, original pixels
    quality: QualityReport
    embedding: np.ndarray | None  # (dim,) float32 unit vector; None from detect_only
    chip: np.ndarray  # (S, S, 3) uint8 RGB, aligned onto the embedder's template

    def to_dict(self, *, embedding: bool = False) -> dict[str, object]:
        """JSON-ready: box, score, landmarks, quality (and the embedding when asked)."""
        out: dict[str, object] = {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(self.score, 5),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "quality": self.quality.to_dict(),
        }
        if embedding and self.embedding is not None:
            out["embedding"] = [float(v) for v in self.embedding]
        return out


class FacePipeline:
    def __init__(
        self,
        settings: Settings,
        detector: RetinaFaceDetector,
        embedder: Embedder,
        lock: threading.Lock | None = None,
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.embedder = embedder
        self.device = torch.device(embedder.device)
        self._lock = lock or threading.Lock()
        # several batch workers run forward passes side by side (the models keep no state between
        # calls); with one, batches take the models' lock like any other caller
        workers = settings.resolved_batch_workers
        self.batcher: MicroBatcher[list[DetectedFace]] = MicroBatcher(
            lambda images: self._run(images, embed=True, exclusive=workers == 1),
            window_s=settings.batch_window_ms / 1000,
            max_images=settings.batch_max_images,
            workers=workers,
            name="face-pipeline-batcher",
            # the detector pads a batch to its largest image: only same-sized images share a call
            group_by=lambda image: detector.resized_shape(*image.shape[:2]),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> FacePipeline:
        """A pipeline for these settings; the models (and their lock) are built once per process."""
        return cls(settings, *_cached_models(settings))

    @property
    def model_id(self) -> str:
        """Identity of the embedding space (stored with every embedding)."""
        return self.embedder.model_id

    @property
    def detector_id(self) -> str:
        return self.detector.model_id

    def decode(self, image: ImageInput) -> np.ndarray:
        """bytes (any format Pillow reads) or a uint8 RGB array -> uint8 RGB (H, W, 3)."""
        if isinstance(image, bytes | bytearray | memoryview):
            return decode_image(bytes(image), self.settings.max_image_pixels)
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"arrays must be uint8 RGB (H, W, 3), got {array.dtype} {array.shape}")
        return array

    def process(self, images: Sequence[ImageInput]) -> list[list[DetectedFace]]:
        """Faces of every image, with quality and embeddings."""
        return self._run([self.decode(image) for image in images], embed=True)

    def process_concurrent(self, image: ImageInput) -> list[DetectedFace]:
        """Faces of one image, like `process([image])[0]`, through the micro-batcher: call it from
        concurrent request threads (inside `self.batcher.expecting()` when the image is still being
        decoded, so a batch being gathered waits for it)."""
        return self.batcher.submit(self.decode(image))

    def detect_only(self, images: Sequence[ImageInput]) -> list[list[DetectedFace]]:
        """Faces of every image with quality and chips, without embeddings."""
        return self._run([self.decode(image) for image in images], embed=False)

    def embed_at(
        self, images: Sequence[ImageInput], image_index: Sequence[int], landmarks: np.ndarray
    ) -> np.ndarray:
        """Embeddings of faces at known landmarks, without detection: (N, dim) float32 unit vectors.

        Face n is in `images[image_index[n]]` with `landmarks[n]` ((N, 5, 2), that image's pixels, as
        stored with a face): the same align + embed as `process`, so a stored face's embedding can be
        computed again from its photo (`childface verify`) or with another model.
        """
        decoded = [self.decode(image) for image in images]
        points = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)
        if len(image_index) != len(points):
            raise ValueError(f"{len(image_index)} image indexes for {len(points)} faces")
        if not len(points):
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        template = self.embedder.template
        with self._lock, torch.inference_mode():
            chips, _ = align_faces(
                decoded, list(image_index), points, template, self.embedder.chip_size, self.device
            )
            return self._embed(chips)

    def _run(
        self, images: list[np.ndarray], *, embed: bool, exclusive: bool = True
    ) -> list[list[DetectedFace]]:
        if not images:
            return []
        with self._lock if exclusive else contextlib.nullcontext(), torch.inference_mode():
            detections = []
            for start in range(0, len(images), DETECT_BATCH):
                detections += self.detector.detect(images[start : start + DETECT_BATCH])
            image_index = np.concatenate(
                [np.full(len(d), i, dtype=np.int64) for i, d in enumerate(detections)]
            )
            boxes = np.concatenate([d.boxes for d in detections])
            scores = np.concatenate([d.scores for d in detections])
            landmarks = np.concatenate([d.landmarks for d in detections])

            template = self.embedder.template
            chips, _ = align_faces(
                images, image_index, landmarks, template, self.embedder.chip_size, self.device
            )
            reports = assess(chips, template, boxes, landmarks, scores, self.settings)
            vectors = self._embed(chips) if embed else None
            chips_hwc = chips.permute(0, 2, 3, 1).cpu().numpy()

        faces: list[list[DetectedFace]] = [[] for _ in images]
        for n, i in enumerate(image_index):
            faces[i].append(
                DetectedFace(
                    box=tuple(float(v) for v in boxes[n]),
                    score=float(scores[n]),
                    landmarks=landmarks[n],
                    quality=reports[n],
                    embedding=None if vectors is None else vectors[n],
                    chip=chips_hwc[n],
                )
            )
        return faces

    def _embed(self, chips: torch.Tensor) -> np.ndarray:
        size = self.settings.batch_size
        parts = [self.embedder.embed(chips[i : i + size]).float() for i in range(0, chips.shape[0], size)]
        if not parts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return torch.cat(parts).cpu().numpy()


def _model_key(settings: Settings) -> tuple[object, ...]:
    """The settings that decide which models a pipeline holds."""
    return (
        settings.resolved_device,
        settings.detector,
        settings.detector_weights,
        settings.detector_input_size,
        settings.detector_score_threshold,
        settings.detector_nms_threshold,
        settings.embedder,
        settings.embedder_weights,
        settings.embedder_arch,
        settings.embedder_flip_tta,
    )


_MODELS: dict[tuple[object, ...], tuple[RetinaFaceDetector, Embedder, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()


def _cached_models(settings: Settings) -> tuple[RetinaFaceDetector, Embedder, threading.Lock]:
    from childface.vision.embedders import load_embedder  # the embedder registry

    key = _model_key(settings)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = (
                RetinaFaceDetector.from_settings(settings),
                load_embedder(settings),
                threading.Lock(),
            )
        return _MODELS[key]
