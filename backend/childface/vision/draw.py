"""Drawing what the pipeline sees: boxes, scores and the five landmarks (for `childface detect --draw`)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from childface.vision.pipeline import DetectedFace

# BGR colours: passed / failed quality gate; landmarks in the order eye, eye, nose, mouth, mouth
_PASSED, _FAILED = (80, 200, 60), (40, 40, 230)
_LANDMARK_COLOURS = ((255, 160, 0), (255, 160, 0), (0, 220, 255), (200, 0, 200), (200, 0, 200))


def draw_faces(rgb: np.ndarray, faces: Sequence[DetectedFace]) -> np.ndarray:
    """A BGR copy of `rgb` with each face's box (green: passed the quality gate, red: failed),
    score, quality reasons and landmarks; ready for cv2.imwrite."""
    canvas = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    thickness = max(1, round(max(canvas.shape[:2]) / 500))
    for face in faces:
        colour = _PASSED if face.quality.passed else _FAILED
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        label = f"{face.score:.2f}" + ("" if face.quality.passed else " " + ",".join(face.quality.reasons))
        cv2.putText(
            canvas, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, colour, thickness
        )
        for (x, y), point_colour in zip(face.landmarks, _LANDMARK_COLOURS, strict=True):
            cv2.circle(canvas, (int(round(x)), int(round(y))), thickness + 1, point_colour, -1, cv2.LINE_AA)
    return canvas
