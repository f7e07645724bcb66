"""Head pose (yaw, pitch, roll) and expression descriptors from 68 iBUG landmarks.

The dictionary builder clusters component features of many faces; a crawl of photos is dominated by frontal,
neutral faces, so the clusters would follow that skew. This module describes each face by a few numbers
(yaw, pitch, roll, eye and mouth openness); ``dfdcore.dictionary.selection`` picks a subset whose histogram over
those numbers is as flat as the data allows.

Conventions (camera frame: x to the image's right, y down, z away from the camera):

- ``yaw``   > 0: the subject turns towards the image's right (the nose tip moves right), i.e. the subject's left.
- ``pitch`` > 0: the subject looks up (the nose tip moves up in the image).
- ``roll``  > 0: the head tilts counter-clockwise as the image is displayed, the same sense as the ``angle``
  of ``cv2.getRotationMatrix2D``: rotating a photo by +20° with it raises the roll by 20°.

All angles are in degrees. The rotation of the head (model → camera) is ``Rz(roll) @ Rx(pitch) @ Ry(yaw)`` in
those signed senses: yaw about the head's vertical axis first, then pitch, then the in-image roll.
"""
from __future__ import annotations

import cv2
import numpy as np

# A generic head in millimetres, in the camera frame of a frontal face (x right in the image, y down, z away
# from the camera), nose tip at the origin. Rough adult averages, written for this module: inter-ocular outer
# corners ~90 mm apart, eyes ~35 mm above and ~30 mm behind the nose tip, mouth ~30 mm below it. Only points the
# shape predictor places stably in most poses are used (no jaw-line points: they slide along the silhouette).
MODEL_INDEX = np.array([30, 8, 36, 39, 42, 45, 27, 33, 48, 54])
MODEL_POINTS = np.array([
    [0.0, 0.0, 0.0],        # 30 nose tip
    [0.0, 66.0, 22.0],      # 8 chin
    [-44.0, -33.0, 32.0],   # 36 outer corner of the image-left eye (subject's right eye)
    [-15.0, -32.0, 28.0],   # 39 inner corner of the image-left eye
    [15.0, -32.0, 28.0],    # 42 inner corner of the image-right eye
    [44.0, -33.0, 32.0],    # 45 outer corner of the image-right eye
    [0.0, -36.0, 20.0],     # 27 nose bridge between the eyes
    [0.0, 13.0, 14.0],      # 33 base of the nose
    [-25.0, 30.0, 24.0],    # 48 image-left mouth corner
    [25.0, 30.0, 24.0],     # 54 image-right mouth corner
])
POSE_NAMES = ("yaw", "pitch", "roll")
EXPRESSION_NAMES = ("eye_open_left", "eye_open_right", "mouth_open", "mouth_width")
DESCRIPTOR_NAMES = POSE_NAMES + EXPRESSION_NAMES


def _check_landmarks(landmarks: np.ndarray, batched: bool) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    want = "(N, 68, 2)" if batched else "(68, 2)"
    ok = points.shape == (68, 2) if not batched else (points.ndim == 3 and points.shape[1:] == (68, 2))
    if not ok:
        raise ValueError(f"expected landmarks of shape {want}, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("landmarks contain NaN or infinite values")
    return points


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) head rotation (model → camera) for angles in degrees, in this module's sign conventions.

    The plain right-handed rotations in a y-down frame turn the other way from the conventions above (a positive
    ``_ry`` moves the nose left, ``_rx`` moves it down, ``_rz`` turns clockwise on screen), hence the negations.
    """
    y, p, r = np.radians([yaw, pitch, roll])
    return _rz(-r) @ _rx(-p) @ _ry(-y)


def euler_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """(3, 3) rotation → (yaw, pitch, roll) in degrees; the inverse of :func:`rotation_matrix` for |pitch| < 90°.

    With ``a, b, c = -yaw, -pitch, -roll`` the bottom row of ``Rz(c) Rx(b) Ry(a)`` is
    ``(-cos b sin a, sin b, cos b cos a)`` and its middle column's top two entries ``(-sin c cos b, cos c cos b)``.
    """
    rot = np.asarray(rotation, dtype=np.float64)
    if rot.shape != (3, 3):
        raise ValueError(f"expected a (3, 3) rotation matrix, got {rot.shape}")
    b = np.arcsin(np.clip(rot[2, 1], -1.0, 1.0))
    a = np.arctan2(-rot[2, 0], rot[2, 2])
    c = np.arctan2(-rot[0, 1], rot[1, 1])
    return float(-np.degrees(a)), float(-np.degrees(b)), float(-np.degrees(c))


def camera_matrix(image_size: tuple[float, float]) -> np.ndarray:
    """(3, 3) pinhole intrinsics for an image of ``(width, height)`` pixels: focal length = width (a ~53° field of
    view, typical of phone and portrait photos), principal point at the centre. Pose is insensitive to the exact
    focal length at portrait distances, where perspective is weak."""
    width, height = (float(v) for v in image_size)
    if not (width > 0 and height > 0):
        raise ValueError(f"expected a positive (width, height), got {tuple(image_size)}")
    return np.array([[width, 0.0, width / 2], [0.0, width, height / 2], [0.0, 0.0, 1.0]])


def head_pose(landmarks68: np.ndarray, image_size: tuple[float, float]) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of one face from its (68, 2) landmarks in photo pixels.

    ``image_size``: (width, height) of the photo the landmarks are in (sets the pinhole camera). A PnP fit of
    :data:`MODEL_POINTS` to the matching landmarks, started from a frontal head in front of the camera so the
    iterative solver cannot settle on the mirrored solution behind the camera.
    """
    points = _check_landmarks(landmarks68, batched=False)
    image_points = points[MODEL_INDEX]
    cam = camera_matrix(image_size)
    # Start depth: the model's outer eye corners are 88 mm apart; at depth z they span f * 88 / z pixels.
    eye_span = max(float(np.linalg.norm(points[45] - points[36])), 1.0)
    z0 = cam[0, 0] * 88.0 / eye_span
    centre = image_points.mean(0)
    t0 = np.array([(centre[0] - cam[0, 2]) * z0 / cam[0, 0], (centre[1] - cam[1, 2]) * z0 / cam[1, 1], z0])
    ok, rvec, _ = cv2.solvePnP(MODEL_POINTS, image_points, cam, None, rvec=np.zeros((3, 1)),
                               tvec=t0.reshape(3, 1), useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise RuntimeError("cv2.solvePnP found no head pose for these landmarks")
    return euler_angles(cv2.Rodrigues(rvec)[0])


def head_poses(landmarks: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    """(N, 68, 2) landmarks in photo pixels and (N, 2) or (2,) (width, height) → (N, 3) (yaw, pitch, roll) degrees.

    OpenCV's PnP solves one face at a time, so this loops; ~0.1 ms a face."""
    points = _check_landmarks(landmarks, batched=True)
    sizes = np.asarray(image_sizes, dtype=np.float64)
    if sizes.shape == (2,):
        sizes = np.broadcast_to(sizes, (len(points), 2))
    if sizes.shape != (len(points), 2):
        raise ValueError(f"expected image_sizes of shape ({len(points)}, 2) or (2,), got {sizes.shape}")
    out = np.zeros((len(points), 3))
    for i, (lm, size) in enumerate(zip(points, sizes)):
        out[i] = head_pose(lm, tuple(size))
    return out


def project_model(yaw: float, pitch: float, roll: float, image_size: tuple[float, float] = (512, 512),
                  distance: float = 600.0) -> tuple[np.ndarray, np.ndarray]:
    """Project :data:`MODEL_POINTS` rotated by the given angles, ``distance`` mm in front of the image centre.

    → ((K, 2) pixel points, (K,) their landmark indices :data:`MODEL_INDEX`); for tests and sanity checks."""
    rotated = MODEL_POINTS @ rotation_matrix(yaw, pitch, roll).T + np.array([0.0, 0.0, distance])
    pix = rotated @ camera_matrix(image_size).T
    return pix[:, :2] / pix[:, 2:], MODEL_INDEX.copy()


def _dist(points: np.ndarray, i: int, j: int) -> np.ndarray:
    return np.linalg.norm(points[:, i] - points[:, j], axis=-1)


def expressions(landmarks: np.ndarray) -> np.ndarray:
    """(N, 68, 2) landmarks (any similarity frame) → (N, 4) :data:`EXPRESSION_NAMES`, all scale-free ratios:

    - ``eye_open_left``/``_right``: eye aspect ratio of the image-left eye (points 36–41) / image-right eye
      (42–47): mean of the two vertical lid distances over the corner-to-corner width (~0.3 open, < 0.15 closed).
    - ``mouth_open``: mean inner-lip gap (61–67, 62–66, 63–65) over mouth width (48–54); 0 with closed lips.
    - ``mouth_width``: mouth corners distance (48–54) over the distance between the two eye centres (~0.8–1.0
      neutral, larger when smiling).
    """
    p = _check_landmarks(landmarks, batched=True)
    tiny = 1e-9  # degenerate (collapsed) landmark sets give 0 rather than a division error
    left = (_dist(p, 37, 41) + _dist(p, 38, 40)) / (2 * np.maximum(_dist(p, 36, 39), tiny))
    right = (_dist(p, 43, 47) + _dist(p, 44, 46)) / (2 * np.maximum(_dist(p, 42, 45), tiny))
    width = _dist(p, 48, 54)
    gap = (_dist(p, 61, 67) + _dist(p, 62, 66) + _dist(p, 63, 65)) / 3
    eyes = np.linalg.norm(p[:, 36:42].mean(1) - p[:, 42:48].mean(1), axis=-1)
    return np.stack([left, right, gap / np.maximum(width, tiny), width / np.maximum(eyes, tiny)], axis=1)


def expression(landmarks68: np.ndarray) -> dict[str, float]:
    """One face's (68, 2) landmarks → {name: value} for :data:`EXPRESSION_NAMES` (see :func:`expressions`)."""
    values = expressions(_check_landmarks(landmarks68, batched=False)[None])[0]
    return {name: float(v) for name, v in zip(EXPRESSION_NAMES, values)}


def descriptors(landmarks: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    """(N, 68, 2) photo-pixel landmarks, (N, 2) image (width, height) → (N, 7) :data:`DESCRIPTOR_NAMES`."""
    return np.concatenate([head_poses(landmarks, image_sizes), expressions(landmarks)], axis=1)
