"""Alignment of a face to the FFHQ 5-point template by a least-squares similarity transform."""
from __future__ import annotations

import cv2
import numpy as np

# FFHQ template on a 512 face (the 1024 values / 2), in dlib 5-point order: image-right eye outer and inner
# corners, image-left eye outer and inner corners, nose base.
FFHQ_TEMPLATE_512 = np.array([
    [343.38614, 244.31188], [293.38614, 246.79703], [168.95545, 244.19307], [218.97525, 246.75743],
    [256.79208, 339.25248],
])


def template_points(face_size: int = 512) -> np.ndarray:
    return FFHQ_TEMPLATE_512 * (face_size / 512)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src → dst.

    Args:
        src, dst: (N, 2) corresponding points.

    Returns:
        (2, 3) matrix M with dst ≈ M @ [x, y, 1].
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two (N, 2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    scale = (singular * sign).sum() / src_c.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def align_face(rgb: np.ndarray, points5: np.ndarray, face_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Warp the face with 5 landmarks onto the template → (face_size², 3) crop and the (2, 3) image→face matrix.

    A face smaller than the template is enlarged bicubically — as the degradation model enlarges training inputs,
    and sharper than bilinear (a crop → paste round trip of an unchanged small face then loses less against a plain
    bicubic upscale); a larger face is reduced bilinearly."""
    matrix = estimate_similarity(points5, template_points(face_size))
    interpolation = cv2.INTER_CUBIC if abs(np.linalg.det(matrix[:, :2])) > 1.0 else cv2.INTER_LINEAR
    crop = cv2.warpAffine(rgb, matrix, (face_size, face_size), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return crop, matrix


def photo_to_face_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) photo pixels → aligned-face pixels through the (2, 3) photo → face matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def aligned_from_landmarks(rgb: np.ndarray, lm5: np.ndarray, lm68: np.ndarray, face_size: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """A face of a photo whose landmarks are known (photo pixels) → (S, S, 3) crop, (68, 2) landmarks on it."""
    crop, matrix = align_face(rgb, np.asarray(lm5, np.float64).reshape(5, 2), face_size)
    return crop, photo_to_face_points(matrix, np.asarray(lm68, np.float64).reshape(68, 2))
