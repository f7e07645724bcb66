"""Photograph → aligned faces with their landmarks and component boxes (no restoration, no paste-back); an
already-aligned crop → the same, read against the template."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from dfdcore.components import part_boxes
from dfdcore.face.align import align_face, estimate_similarity
from dfdcore.face.detect import DetectedFace, detect_faces, landmarks


@dataclass(frozen=True)
class AlignedFace:
    """One face of a photograph on the template: ``image`` (S, S, 3) uint8, ``matrix`` (2, 3) photo → face,
    ``landmarks68`` (68, 2) on the face, ``boxes`` (4, 4) component boxes, the detection it came from and its
    5 landmarks ``points5`` (5, 2) in photo pixels; ``landmarks_source``: one of LANDMARK_SOURCES (a photo's faces
    are always "detected"; see ``align_crop``)."""

    image: np.ndarray
    matrix: np.ndarray
    landmarks68: np.ndarray
    boxes: np.ndarray
    detection: DetectedFace
    points5: np.ndarray
    landmarks_source: str = "detected"


def _map_box(matrix: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    corners = np.array([[x1, y1, 1], [x2, y1, 1], [x1, y2, 1], [x2, y2, 1]], dtype=np.float64) @ matrix.T
    lo, hi = corners.min(0), corners.max(0)
    return int(lo[0]), int(lo[1]), int(np.ceil(hi[0])), int(np.ceil(hi[1]))


def to_photo_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points on the aligned face (N, 2) → photo pixels, through the inverse of the (2, 3) photo → face matrix."""
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    return points @ inverse[:, :2].T + inverse[:, 2]


def align_faces(rgb: np.ndarray, face_size: int = 512, upsample: int = 1, min_score: float | None = None,
                max_faces: int | None = None, detector: str = "hog") -> list[AlignedFace]:
    """Detect faces (largest first), align each by its 5 landmarks, then find its 68 landmarks on the aligned
    face inside the detection box carried through the alignment (no second detection). ``min_score`` None: the
    detector's own default (``detect.DEFAULT_MIN_SCORE``)."""
    faces = []
    for detection in detect_faces(rgb, upsample=upsample, min_score=min_score, detector=detector)[:max_faces]:
        points5 = landmarks(rgb, detection.box, points=5)
        crop, matrix = align_face(rgb, points5, face_size)
        lm68 = landmarks(crop, _map_box(matrix, detection.box), points=68)
        boxes = part_boxes(torch.from_numpy(lm68)[None], face_size=face_size)[0].numpy()
        faces.append(AlignedFace(crop, matrix, lm68, boxes, detection, points5))
    return faces


# Where faces lie on the template: the mean 68 landmarks and the mean dlib HOG box of the nine bundled portraits
# (tests/data/SOURCES.md) aligned at 512 by ``align_faces``; its eye corners and nose base lie within 3 px of
# FFHQ_TEMPLATE_512. Aligned crops are read against these: a detection must overlap the box, and the landmarks are
# the fallback for a crop whose face cannot be found at all.
TEMPLATE_68_512 = np.array([
    116, 261, 118, 299, 122, 337, 129, 374, 142, 409, 164, 439, 190, 465, 221, 485, 258, 490, 295, 484, 326, 464,
    352, 436, 373, 405, 386, 370, 394, 333, 398, 296, 399, 259, 144, 232, 158, 211, 183, 203, 209, 203, 235, 211,
    277, 212, 302, 203, 328, 203, 353, 212, 369, 231, 256, 239, 256, 262, 257, 286, 257, 310, 222, 328, 239, 332,
    256, 337, 273, 332, 290, 327, 171, 246, 186, 236, 203, 235, 219, 246, 203, 248, 186, 249, 293, 246, 308, 235,
    326, 237, 341, 247, 326, 249, 309, 249, 194, 379, 215, 366, 239, 361, 256, 365, 274, 361, 299, 365, 320, 377,
    300, 400, 276, 411, 257, 414, 239, 412, 215, 401, 202, 380, 239, 373, 256, 374, 275, 372, 312, 377, 276, 393,
    257, 396, 239, 393], dtype=np.float64).reshape(68, 2)
TEMPLATE_BOX_512 = (86.0, 139.0, 415.0, 464.0)
FIVE_OF_68 = [45, 42, 36, 39, 33]  # dlib's 5 points (align.FFHQ_TEMPLATE_512's order) among the 68
MIN_TEMPLATE_IOU = 0.4  # a detection on an aligned crop overlapping the template box less is another face or none
# How far 68 landmarks on an aligned crop may stray from the template (a similarity fit of the template onto them)
# before they count as unusable. The bundled portraits' own stay within 1.05, 2.5°, 0.014 and 0.14 (open mouths fit
# worst); dlib's predictor seeded in the template box draws a face even on a background (residual 0.06-0.19), so
# these catch broken shapes, not missing faces: that a detection overlaps the template box tells those.
MAX_SCALE_CHANGE, MAX_ROTATION_DEG, MAX_SHIFT, MAX_RESIDUAL = 1.35, 20.0, 0.1, 0.25  # shift: of S; residual: of IOD
LANDMARK_SOURCES = ("detected", "template box", "template")


def template_landmarks(face_size: int = 512) -> np.ndarray:
    return TEMPLATE_68_512 * (face_size / 512)


def _iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else 0.0


def plausible_landmarks(lm68: np.ndarray, face_size: int) -> bool:
    """Whether (68, 2) landmarks on an aligned face of side ``face_size`` are a face near the template: the
    similarity that fits the template onto them changes scale, angle and position little, and the fit is close."""
    if lm68.shape != (68, 2) or not np.isfinite(lm68).all():
        return False
    template = template_landmarks(face_size)
    matrix = estimate_similarity(template, lm68)
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    angle = np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))
    centre = np.array([face_size / 2, face_size / 2])
    shift = np.linalg.norm(matrix[:, :2] @ centre + matrix[:, 2] - centre) / face_size
    fitted = template @ matrix[:, :2].T + matrix[:, 2]
    eyes = np.linalg.norm(template[42:48].mean(0) - template[36:42].mean(0))
    residual = np.linalg.norm(lm68 - fitted, axis=1).mean() / eyes
    return (1 / MAX_SCALE_CHANGE <= scale <= MAX_SCALE_CHANGE and abs(angle) <= MAX_ROTATION_DEG
            and shift <= MAX_SHIFT and residual <= MAX_RESIDUAL)


def resize_matrix(height: int, width: int, size: int) -> np.ndarray:
    """(2, 3) map from an (height, width) image's pixels to those of its cv2.resize to (size, size): pixel
    centres follow cv2 (x → sx·x + (sx − 1)/2)."""
    sx, sy = size / width, size / height
    return np.array([[sx, 0.0, (sx - 1) / 2], [0.0, sy, (sy - 1) / 2]])


def resize_face(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` resized to (height, width): area averaging to shrink (no aliasing), bicubic to enlarge."""
    shrink = width * height < rgb.shape[0] * rgb.shape[1]
    resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return resized.reshape((height, width) + rgb.shape[2:])


def align_crop(rgb: np.ndarray, face_size: int = 512, upsample: int = 1, min_score: float | None = None,
               detector: str = "hog") -> AlignedFace:
    """An already-aligned face crop (FFHQ-like, any size) → its AlignedFace at ``face_size`` (no face box cut out).

    The crop is resized to (S, S); its 68 landmarks come from dlib's shape predictor seeded with the detection on
    the resized crop that overlaps the template's box best ("detected"), else (no such detection, or landmarks
    that stray from the template: ``plausible_landmarks``) seeded with the template's box ("template box"), else
    the template's own landmarks ("template"). ``landmarks_source`` says which. Photo pixels (``matrix``, ``detection``, ``points5``)
    are the crop's; a box without a detection has a NaN score.

    Args:
        rgb: (H, W, 3) uint8 RGB crop.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 2:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB crop of at least 2x2 pixels, got {rgb.shape} {rgb.dtype}")
    matrix = resize_matrix(rgb.shape[0], rgb.shape[1], face_size)
    face = np.ascontiguousarray(resize_face(rgb, face_size, face_size))
    template_box = tuple(round(v * face_size / 512) for v in TEMPLATE_BOX_512)
    seeds = [("detected", d.box, d.score) for d in detect_faces(face, upsample, min_score, detector)
             if _iou(d.box, template_box) >= MIN_TEMPLATE_IOU]
    seeds = sorted(seeds, key=lambda seed: _iou(seed[1], template_box), reverse=True)[:1]
    for source, box, score in seeds + [("template box", template_box, float("nan"))]:
        lm68 = landmarks(face, box, points=68)
        if plausible_landmarks(lm68, face_size):
            break
    else:
        source, box, score, lm68 = "template", template_box, float("nan"), template_landmarks(face_size)
    crop_box = _map_box(np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2], box)
    boxes = part_boxes(torch.from_numpy(lm68)[None], face_size=face_size)[0].numpy()
    points5 = to_photo_points(matrix, lm68[FIVE_OF_68])
    return AlignedFace(face, matrix, lm68, boxes, DetectedFace(crop_box, score), points5, source)
