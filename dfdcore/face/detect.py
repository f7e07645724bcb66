"""Face detection (dlib HOG, scores exposed) and landmarks."""
from __future__ import annotations

from dataclasses import dataclass

import dlib
import numpy as np

from dfdcore.face.models import cnn_detector, frontal_detector, shape_predictor


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in image pixels
    score: float

    @property
    def area(self) -> int:
        return max(0, self.box[2] - self.box[0]) * max(0, self.box[3] - self.box[1])


def _rgb_uint8(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    return np.ascontiguousarray(rgb)


DETECTORS = ("hog", "cnn")


def detect_faces(rgb: np.ndarray, upsample: int = 1, min_score: float = 0.2, detector: str = "hog"
                 ) -> list[DetectedFace]:
    """Face detections with score ≥ ``min_score``, largest first. ``rgb``: (H, W, 3) uint8.

    ``detector``: "hog" (dlib's frontal HOG detector, its SVM score) or "cnn" (dlib's MMOD CNN, its confidence).
    """
    image = _rgb_uint8(rgb)
    if detector == "hog":
        rects, scores, _ = frontal_detector().run(image, upsample, -1.0)
        found = zip(rects, scores)
    elif detector == "cnn":
        found = [(d.rect, d.confidence) for d in cnn_detector()(image, upsample)]
    else:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    faces = [DetectedFace((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in found if s >= min_score]
    return sorted(faces, key=lambda f: f.area, reverse=True)


def landmarks(rgb: np.ndarray, box: tuple[int, int, int, int], points: int = 68) -> np.ndarray:
    """dlib shape predictor in ``box`` → (points, 2) float64 (x, y) in image pixels."""
    shape = shape_predictor(points)(_rgb_uint8(rgb), dlib.rectangle(*(int(v) for v in box)))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
