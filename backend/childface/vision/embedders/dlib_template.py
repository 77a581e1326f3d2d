"""Measuring where RetinaFace's landmarks fall in dlib's own 150x150 face chips.

dlib aligns a face with its own 5-point shape predictor (eye corners and the base of the nose)
and `get_face_chip_details(shape, size=150, padding=0.25)`; RetinaFace gives other points (eye
centres, nose tip, mouth corners). So the template that reproduces dlib's chips from RetinaFace
landmarks is measured, not designed: for every face found by both, take dlib's image -> chip
transform, map RetinaFace's five landmarks through it, and average over faces.

dlib's transform is read off dlib itself rather than re-derived from its source: dlib's
`extract_image_chip` is run on two float images holding each pixel's x and y coordinate, so the
chip it returns says, for every chip pixel, which image point dlib sampled there (bilinear
interpolation reproduces a linear ramp exactly), and a least-squares affine fit over the chip
pixels that sample inside the image gives the mapping.

This needs `dlib` (the test-only dependency `dlib-bin`). Re-run it with
`python -m childface.vision.embedders.dlib_template IMAGE...` (mirrored copies are added).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from childface.vision.detector import RetinaFaceDetector

DLIB_CHIP_SIZE = 150
DLIB_CHIP_PADDING = 0.25


@dataclass(frozen=True)
class DlibFace:
    """One face as dlib's face_recognition pipeline sees it, with RetinaFace's landmarks for it."""

    image_index: int
    chip: np.ndarray  # uint8 (150, 150, 3): dlib.get_face_chip
    image_to_chip: np.ndarray  # (2, 3) affine, image pixels -> dlib chip pixels
    retinaface_landmarks: np.ndarray  # (5, 2) image pixels

    @property
    def landmarks_in_chip(self) -> np.ndarray:
        return self.retinaface_landmarks @ self.image_to_chip[:, :2].T + self.image_to_chip[:, 2]


@dataclass(frozen=True)
class TemplateMeasurement:
    template: np.ndarray  # (5, 2) float32, chip pixels
    spread: np.ndarray  # (5,) RMS distance of the faces' points from the template, chip pixels
    faces: list[DlibFace]


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) against boxes (K, 4), x1 y1 x2 y2."""
    lt = np.maximum(a[:2], b[:, :2])
    rb = np.minimum(a[2:], b[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=1)
    return inter / (_area(a) + _area(b) - inter)


def dlib_chip_transform(image: np.ndarray, chip_details: object) -> np.ndarray:
    """(2, 3) affine mapping image pixels to the chip pixels of dlib's `extract_image_chip`."""
    import dlib

    height, width = image.shape[:2]
    xs = np.broadcast_to(np.arange(width, dtype=np.float32), (height, width)).copy()
    ys = np.broadcast_to(np.arange(height, dtype=np.float32)[:, None], (height, width)).copy()
    sampled_x = np.asarray(dlib.extract_image_chip(xs, chip_details), dtype=np.float64)
    sampled_y = np.asarray(dlib.extract_image_chip(ys, chip_details), dtype=np.float64)
    rows, cols = sampled_x.shape
    v, u = np.mgrid[0:rows, 0:cols].astype(np.float64)
    # chip pixels whose bilinear footprint is inside the image sample the ramp exactly
    inside = (sampled_x >= 1) & (sampled_x <= width - 2) & (sampled_y >= 1) & (sampled_y <= height - 2)
    if inside.sum() < 100:
        raise ValueError("dlib's chip lies almost entirely outside the image")
    source = np.stack([sampled_x[inside], sampled_y[inside], np.ones(inside.sum())], axis=1)
    target = np.stack([u[inside], v[inside]], axis=1)
    solution, *_ = np.linalg.lstsq(source, target, rcond=None)
    return solution.T  # (2, 3)


def collect_dlib_faces(
    images: list[np.ndarray], detector: RetinaFaceDetector, upsample: int = 1, min_iou: float = 0.3
) -> list[DlibFace]:
    """Faces that dlib's frontal detector finds, with dlib's chip and the matching RetinaFace face."""
    import dlib
    import face_recognition_models

    dlib_detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    faces: list[DlibFace] = []
    for index, (image, found) in enumerate(zip(images, detector.detect(images), strict=True)):
        for rect in dlib_detector(image, upsample):
            if len(found) == 0:
                break
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64)
            ious = _box_iou(box, found.boxes.astype(np.float64))
            best = int(np.argmax(ious))
            if ious[best] < min_iou:
                continue
            shape = predictor(image, rect)
            details = dlib.get_face_chip_details(shape, size=DLIB_CHIP_SIZE, padding=DLIB_CHIP_PADDING)
            chip = dlib.get_face_chip(image, shape, size=DLIB_CHIP_SIZE, padding=DLIB_CHIP_PADDING)
            faces.append(
                DlibFace(
                    image_index=index,
                    chip=np.asarray(chip),
                    image_to_chip=dlib_chip_transform(image, details),
                    retinaface_landmarks=found.landmarks[best].astype(np.float64),
                )
            )
    return faces


def derive_dlib_template(
    images: list[np.ndarray], detector: RetinaFaceDetector, *, mirror: bool = True
) -> TemplateMeasurement:
    """Mean position of RetinaFace's landmarks in dlib's chips over all faces of `images`.

    With `mirror`, each image is also used flipped left-right (both detectors run again on it),
    which cancels any left/right bias of either landmark set.
    """
    inputs = [np.ascontiguousarray(im) for im in images]
    if mirror:
        inputs += [np.ascontiguousarray(im[:, ::-1]) for im in images]
    faces = collect_dlib_faces(inputs, detector)
    if not faces:
        raise ValueError("no face was found by both dlib and RetinaFace")
    points = np.stack([face.landmarks_in_chip for face in faces])  # (F, 5, 2)
    template = points.mean(axis=0)
    spread = np.sqrt(((points - template) ** 2).sum(axis=2).mean(axis=0))
    return TemplateMeasurement(template.astype(np.float32), spread.astype(np.float32), faces)


def main(paths: list[str]) -> None:
    import cv2

    from childface.config import Settings

    images = []
    for path in paths:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"cannot read image {path}")
        images.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    # RetinaFace MobileNet-0.25 at 640 px, the settings `DLIB_TEMPLATE_150` was measured with
    detector = RetinaFaceDetector.from_settings(
        Settings(device="cpu", detector_input_size=640, _env_file=None)
    )
    result = derive_dlib_template(images, detector)
    print(f"faces: {len(result.faces)}")
    print("template (chip pixels):")
    for (x, y), spread in zip(result.template, result.spread, strict=True):
        print(f"    [{x:.4f}, {y:.4f}],  # RMS spread {spread:.2f} px")


if __name__ == "__main__":
    main(sys.argv[1:])
