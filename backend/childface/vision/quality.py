"""Per-face quality gate: size, sharpness, pose (from the 5 landmarks), detector score.

Each measure, and how it becomes a 0..1 component (1 = good):
- size: the shorter side of the detector box in original pixels;
  component min(1, size / (2 * quality_min_face_px)).
- sharpness: variance of the Laplacian (OpenCV's 3x3 aperture) of the grey
  inner face of the aligned chip (template landmarks plus a margin, so neither
  background nor the black border of a face cut by the photo's edge counts),
  resampled to ArcFace 112's eye distance so every embedder's chip reads on one
  scale; mapped to 0..1 as var / (var + SHARPNESS_HALF_VARIANCE).
- yaw proxy: distance d of the nose from the line through the eye midpoint and
  the mouth midpoint; with the nose tip about half an eye distance e in front
  of the eyes, atan(2 d / e) estimates the yaw angle; proxy = angle / 90
  (0 = frontal, 0.5 ~ 45 degrees, 1 = profile); component 1 - yaw.
- roll: angle of the eye line in degrees; component 1 - |roll| / 90.
- detector score: as is.
The combined score is the geometric mean of the five components, so any one
bad measure pulls it down.

Reason codes (stable, machine-readable; the API and enrollment return them):
"too_small", "blurred", "profile", "tilted", "low_detector_score", "low_quality".
Thresholds come from Settings (`quality_*`). Calibration on real photos is in
docs/pipeline.md ("Quality gate").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from childface.config import Settings

#: Laplacian variance (grey levels^2 on a 112x112 chip) that maps to sharpness 0.5
SHARPNESS_HALF_VARIANCE = 100.0
_REFERENCE_EYE_DISTANCE = 35.24  # pixels between the eyes of ARCFACE_TEMPLATE_112
_REGION_MARGIN = 0.3  # inner-face region: template landmarks + this fraction of the eye distance
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).reshape(1, 1, 3, 3)
_GREY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class QualityReport:
    size_px: float
    sharpness: float  # 0..1
    yaw: float  # 0 (frontal) .. 1 (profile)
    roll_deg: float  # signed, degrees, eye line against the horizontal
    detector_score: float
    score: float  # combined, 0..1
    passed: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def face_region(template: np.ndarray) -> tuple[slice, slice, float]:
    """Rows, columns and resampling factor of the inner face in a chip aligned to `template`.

    The region spans the template's landmarks plus a margin, so neither the
    background nor the zero border of a face at the photo's edge enters the
    sharpness; the factor brings the eye distance to ArcFace 112's, so every
    embedder's chip reads on one scale.
    """
    points = np.asarray(template, dtype=np.float64).reshape(5, 2)
    eye_distance = float(np.linalg.norm(points[1] - points[0]))
    margin = _REGION_MARGIN * eye_distance
    (x0, y0), (x1, y1) = points.min(axis=0) - margin, points.max(axis=0) + margin
    rows = slice(max(0, int(round(y0))), int(round(y1)) + 1)
    cols = slice(max(0, int(round(x0))), int(round(x1)) + 1)
    return rows, cols, _REFERENCE_EYE_DISTANCE / eye_distance


def laplacian_variance(chips: torch.Tensor, template: np.ndarray) -> torch.Tensor:
    """uint8 (N, 3, S, S) RGB chips -> (N,) variance of the Laplacian of the grey inner face."""
    if chips.shape[0] == 0:
        return torch.zeros(0, device=chips.device)
    rows, cols, factor = face_region(template)
    weights = torch.tensor(_GREY, device=chips.device).reshape(1, 3, 1, 1)
    grey = (chips[:, :, rows, cols].float() * weights).sum(dim=1, keepdim=True)
    if abs(factor - 1.0) > 0.05:
        size = (max(3, round(grey.shape[-2] * factor)), max(3, round(grey.shape[-1] * factor)))
        grey = F.interpolate(grey, size=size, mode="area" if factor < 1 else "bilinear", align_corners=None)
    padded = F.pad(grey, (1, 1, 1, 1), mode="reflect")  # OpenCV's default border (reflect 101)
    response = F.conv2d(padded, _LAPLACIAN.to(chips.device))
    return response.flatten(1).var(dim=1, unbiased=False)


def pose_proxies(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 5, 2) landmarks -> (yaw proxy 0..1, roll in degrees), each (N,)."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    left_eye, right_eye, nose = points[:, 0], points[:, 1], points[:, 2]
    eye_mid = (left_eye + right_eye) / 2
    mouth_mid = (points[:, 3] + points[:, 4]) / 2
    axis = mouth_mid - eye_mid
    axis_len = np.linalg.norm(axis, axis=1).clip(min=1e-6)
    offset = nose - eye_mid
    # perpendicular distance of the nose from the eye-mouth midline (2-D cross product)
    distance = np.abs(axis[:, 0] * offset[:, 1] - axis[:, 1] * offset[:, 0]) / axis_len
    eye_distance = np.linalg.norm(right_eye - left_eye, axis=1).clip(min=1e-6)
    # nose tip ~ half an eye distance in front of the eye plane: offset = depth * sin(yaw) while the
    # eye distance shrinks with cos(yaw), so offset / (eye_distance / 2) ~ tan(yaw)
    yaw = np.degrees(np.arctan(distance / (eye_distance / 2))) / 90.0
    eye_line = right_eye - left_eye
    roll = np.degrees(np.arctan2(eye_line[:, 1], eye_line[:, 0]))
    return yaw, roll


def assess(
    chips: torch.Tensor,
    template: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    scores: np.ndarray,
    settings: Settings,
) -> list[QualityReport]:
    """One QualityReport per face.

    chips: uint8 (N, 3, S, S) aligned onto `template` (5, 2); boxes (N, 4) and
    landmarks (N, 5, 2) in original pixels; scores (N,) detector scores.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clip(min=0)
    variance = laplacian_variance(chips, template).double().cpu().numpy()
    sharpness = variance / (variance + SHARPNESS_HALF_VARIANCE)
    yaw, roll = pose_proxies(landmarks)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)

    components = np.stack(
        [
            np.minimum(1.0, sizes / (2.0 * settings.quality_min_face_px)),
            sharpness,
            1.0 - yaw,
            1.0 - np.minimum(1.0, np.abs(roll) / 90.0),
            scores,
        ]
    ).clip(1e-6, 1.0)
    combined = np.exp(np.log(components).mean(axis=0))

    reports = []
    for n in range(sizes.shape[0]):
        reasons = []
        if sizes[n] < settings.quality_min_face_px:
            reasons.append("too_small")
        if sharpness[n] < settings.quality_min_sharpness:
            reasons.append("blurred")
        if yaw[n] > settings.quality_max_yaw:
            reasons.append("profile")
        if abs(roll[n]) > settings.quality_max_roll_deg:
            reasons.append("tilted")
        if scores[n] < settings.quality_min_detector_score:
            reasons.append("low_detector_score")
        if combined[n] < settings.quality_min_score:
            reasons.append("low_quality")
        reports.append(
            QualityReport(
                size_px=float(sizes[n]),
                sharpness=float(sharpness[n]),
                yaw=float(yaw[n]),
                roll_deg=float(roll[n]),
                detector_score=float(scores[n]),
                score=float(combined[n]),
                passed=not reasons,
                reasons=reasons,
            )
        )
    return reports
