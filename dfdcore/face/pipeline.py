"""Photograph → aligned faces with their landmarks and component boxes (no restoration, no paste-back)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dfdcore.components import part_boxes
from dfdcore.face.align import align_face
from dfdcore.face.detect import DetectedFace, detect_faces, landmarks


@dataclass(frozen=True)
class AlignedFace:
    """One face of a photograph on the template: ``image`` (S, S, 3) uint8, ``matrix`` (2, 3) photo → face,
    ``landmarks68`` (68, 2) on the face, ``boxes`` (4, 4) component boxes, the detection it came from and its
    5 landmarks ``points5`` (5, 2) in photo pixels."""

    image: np.ndarray
    matrix: np.ndarray
    landmarks68: np.ndarray
    boxes: np.ndarray
    detection: DetectedFace
    points5: np.ndarray


def _map_box(matrix: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    corners = np.array([[x1, y1, 1], [x2, y1, 1], [x1, y2, 1], [x2, y2, 1]], dtype=np.float64) @ matrix.T
    lo, hi = corners.min(0), corners.max(0)
    return int(lo[0]), int(lo[1]), int(np.ceil(hi[0])), int(np.ceil(hi[1]))


def to_photo_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points on the aligned face (N, 2) → photo pixels, through the inverse of the (2, 3) photo → face matrix."""
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    return points @ inverse[:, :2].T + inverse[:, 2]


def align_faces(rgb: np.ndarray, face_size: int = 512, upsample: int = 1, min_score: float = 0.2,
                max_faces: int | None = None, detector: str = "hog") -> list[AlignedFace]:
    """Detect faces (largest first), align each by its 5 landmarks, then find its 68 landmarks on the aligned
    face inside the detection box carried through the alignment (no second detection)."""
    faces = []
    for detection in detect_faces(rgb, upsample=upsample, min_score=min_score, detector=detector)[:max_faces]:
        points5 = landmarks(rgb, detection.box, points=5)
        crop, matrix = align_face(rgb, points5, face_size)
        lm68 = landmarks(crop, _map_box(matrix, detection.box), points=68)
        boxes = part_boxes(torch.from_numpy(lm68)[None], face_size=face_size)[0].numpy()
        faces.append(AlignedFace(crop, matrix, lm68, boxes, detection, points5))
    return faces
