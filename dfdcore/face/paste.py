"""Paste (restored) aligned faces back into the photograph, optionally upscaled, with a feathered mask."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# The feather is measured in face pixels, i.e. as a fraction of the aligned face side: the seam then covers the
# same part of every face (hair, background around the head) whether it is 40 or 800 pixels wide in the output.
ERODE = 1 / 32
FEATHER = 1 / 16


def face_to_image_matrix(matrix: np.ndarray, upscale: int = 1) -> np.ndarray:
    """Invert a photo → face alignment and compose it with an upscale of the photo.

    Args:
        matrix: (2, 3) affine map from photo pixel coordinates to face pixel coordinates.
        upscale: integer factor s the photo is resized by (see ``upscale_image``).

    Returns:
        (2, 3) float64 map from face pixel coordinates to pixel coordinates of the upscaled photo. Pixel centres
        follow cv2.resize: a photo pixel centre x lands on s·x + (s − 1)/2, not on s·x.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
        raise ValueError(f"expected a finite (2, 3) affine matrix, got shape {matrix.shape}")
    upscale = _check_upscale(upscale)
    linear = matrix[:, :2]
    if abs(np.linalg.det(linear)) < 1e-12:
        raise ValueError(f"the alignment matrix is singular (linear part {linear.tolist()}), it cannot be inverted")
    inverse = np.linalg.inv(linear)
    result = np.empty((2, 3))
    result[:, :2] = upscale * inverse
    result[:, 2] = upscale * (-inverse @ matrix[:, 2]) + (upscale - 1) / 2
    return result


def upscale_image(image: np.ndarray, upscale: int) -> np.ndarray:
    """Resize (H, W) or (H, W, C) by the integer factor s to (H·s, W·s), bicubic; s = 1 returns a copy."""
    image = np.asarray(image)
    upscale = _check_upscale(upscale)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty (H, W) or (H, W, C) image, got shape {image.shape}")
    if upscale == 1:
        return image.copy()
    height, width = image.shape[:2]
    resized = cv2.resize(image, (width * upscale, height * upscale), interpolation=cv2.INTER_CUBIC)
    # cv2 drops a trailing channel axis of length 1; give the caller back the layout it passed.
    return resized.reshape((height * upscale, width * upscale) + image.shape[2:])


def face_mask(face_size: int, face_to_image: np.ndarray, image_size: tuple[int, int], erode: float = ERODE,
              feather: float = FEATHER) -> np.ndarray:
    """Blend weights of one face, on the face: (S, S) float32 in [0, 1].

    Built on the face rather than in the output so that its width follows the face's size there and its cost
    (S² pixels) does not grow with the photograph.

    A face pixel is usable where it lands inside the output image; the weight is 0 within ``erode``·S face
    pixels of an unusable pixel or of the face's edge and rises smoothly to 1 over the next ``feather``·S.

    Args:
        face_size: S, the side of the aligned face.
        face_to_image: (2, 3) face → output image pixel coordinates.
        image_size: (H, W) of the output image.
    """
    if erode < 0 or feather <= 0:
        raise ValueError(f"expected erode >= 0 and feather > 0 (fractions of the face side), got {erode}, {feather}")
    height, width = image_size
    u, v = np.meshgrid(np.arange(face_size, dtype=np.float64), np.arange(face_size, dtype=np.float64))
    x = face_to_image[0, 0] * u + face_to_image[0, 1] * v + face_to_image[0, 2]
    y = face_to_image[1, 0] * u + face_to_image[1, 1] * v + face_to_image[1, 2]
    # Face pixels outside the image were filled with the aligner's constant-0 border; the eroded, feathered
    # weight keeps them out of the blend, and the erosion (16 face pixels on a 512 face) also covers the band
    # under one photo pixel wide where bilinear alignment mixed that border in (an upscaled photo's edge pixels
    # lie up to (s − 1)/2s photo pixels outside it) as long as a photo pixel spans fewer than 16 face pixels:
    # true of the faces dlib's HOG finds with one upsampling step (at most ~11 on shared/data/faces).
    usable = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    padded = np.pad(usable.astype(np.uint8), 1)  # the face's own edge counts as unusable too
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    ramp = np.clip((distance - erode * face_size) / (feather * face_size), 0, 1)
    # Smoothstep rather than a linear ramp: its slope is 0 at both ends, so the seam has no visible crease.
    return (ramp * ramp * (3 - 2 * ramp)).astype(np.float32)


def paste_faces(background: np.ndarray, faces: Sequence[tuple[np.ndarray, np.ndarray]], erode: float = ERODE,
                feather: float = FEATHER, interpolation: int = cv2.INTER_CUBIC, return_mask: bool = False,
                shapes: Sequence[np.ndarray | None] | None = None,
                ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Warp each face into the image and blend it in with a feathered mask, later faces over earlier ones.

    Args:
        background: (H, W, 3) image, any value scale (the photo, upscaled to the output size).
        faces: (face image (S, S, 3) on the background's value scale, (2, 3) face → image matrix) pairs, e.g.
            from ``face_to_image_matrix``.
        erode, feather: mask shape as fractions of the face side (see ``face_mask``).
        interpolation: cv2 flag for warping the faces. INTER_CUBIC by default: pasting the unchanged aligned
            faces of the 81 faces in shared/data/faces back, it reproduces the photo at 51.4 dB median PSNR
            against 47.5 dB for INTER_LINEAR (41.3 against 40.3 dB into a 2× bicubic upscale); INTER_LANCZOS4
            is no better (50.9, 41.2 dB) and slower.
            Faces are not low-pass filtered before they shrink: on the group photos a Gaussian of only
            0.2·sqrt(k² − 1) face pixels (k face pixels per output pixel) cost 14 dB of that fidelity, so
            detail finer than the output pixels of a small face can alias.
        return_mask: also return the combined blend weight.
        shapes: per face, None (the square mask alone) or an (S, S) weight in [0, 1] on the face that the square
            mask is multiplied by, e.g. ``blend.landmark_mask``: the face's own outline, softened.

    Returns:
        (H, W, 3) float32 new image; with ``return_mask``, also the (H, W) float32 weight in [0, 1] that the
        faces got in total. The inputs are not modified.
    """
    background = np.asarray(background)
    if background.ndim != 3 or background.shape[2] != 3 or not np.issubdtype(background.dtype, np.number):
        raise ValueError(f"expected an (H, W, 3) numeric background, got {background.shape} {background.dtype}")
    result = background.astype(np.float32, copy=True)
    total = np.zeros(result.shape[:2], dtype=np.float32)
    faces = list(faces)
    shapes = [None] * len(faces) if shapes is None else list(shapes)
    if len(shapes) != len(faces):
        raise ValueError(f"expected one shape mask (or None) per face, got {len(shapes)} for {len(faces)} faces")
    for index, ((face, matrix), shape) in enumerate(zip(faces, shapes)):
        face, matrix = _check_face(index, face, matrix)
        placed = warp_weight(face.shape[0], matrix, result.shape[:2], shape, erode, feather)
        if placed is None:  # the face lies entirely outside the image
            continue
        (x0, y0, x1, y1), weight = placed
        # Warp only into the face's bounding box: the cost then follows the face, not the photograph.
        local = matrix.copy()
        local[:, 2] -= (x0, y0)
        warped = cv2.warpAffine(face, local, (x1 - x0, y1 - y0), flags=interpolation,
                                borderMode=cv2.BORDER_REPLICATE)
        patch = result[y0:y1, x0:x1]
        patch += weight[..., None] * (warped - patch)
        total[y0:y1, x0:x1] += weight * (1 - total[y0:y1, x0:x1])
    return (result, total) if return_mask else result


def warp_weight(face_size: int, matrix: np.ndarray, image_size: tuple[int, int], shape: np.ndarray | None = None,
                erode: float = ERODE, feather: float = FEATHER
                ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """One face's blend weight in the image: the square ``face_mask`` (times ``shape``, an (S, S) weight on the
    face, when given) warped by the (2, 3) face → image ``matrix``.

    Returns:
        ((x0, y0, x1, y1) end-exclusive box of the image, (y1 − y0, x1 − x0) float32 weight in [0, 1] on it), or
        None when the face lies entirely outside the (H, W) ``image_size``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    region = _warp_region(face_size, matrix, image_size)
    if region is None:
        return None
    x0, y0, x1, y1 = region
    weight = face_mask(face_size, matrix, image_size, erode, feather)
    if shape is not None:
        shape = np.asarray(shape, dtype=np.float32)
        if shape.shape != (face_size, face_size):
            raise ValueError(f"expected a ({face_size}, {face_size}) shape mask for a face of side {face_size}, "
                             f"got {shape.shape}")
        weight = weight * shape  # a product of two smooth weights: no crease where one takes over from the other
    local = matrix.copy()
    local[:, 2] -= (x0, y0)
    weight = cv2.warpAffine(weight, local, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return region, np.clip(weight, 0, 1, out=weight)


def _check_upscale(upscale) -> int:
    if isinstance(upscale, bool) or not float(upscale).is_integer() or upscale < 1:
        raise ValueError(f"expected an integer upscale factor >= 1, got {upscale!r}")
    return int(upscale)


def _check_face(index: int, face, matrix) -> tuple[np.ndarray, np.ndarray]:
    face = np.asarray(face)
    if face.ndim != 3 or face.shape[2] != 3 or face.shape[0] != face.shape[1] or face.shape[0] < 2:
        raise ValueError(f"face {index}: expected an (S, S, 3) image, got shape {face.shape}")
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
        raise ValueError(f"face {index}: expected a finite (2, 3) face → image matrix, got shape {matrix.shape}")
    return np.ascontiguousarray(face, dtype=np.float32), matrix


def _warp_region(face_size: int, matrix: np.ndarray, image_size: tuple[int, int]
                 ) -> tuple[int, int, int, int] | None:
    """Pixel box (x0, y0, x1, y1), end-exclusive and clipped to the image, that the face's square covers."""
    edge = face_size - 0.5
    corners = np.array([[-0.5, -0.5, 1], [edge, -0.5, 1], [-0.5, edge, 1], [edge, edge, 1]]) @ matrix.T
    lo = np.floor(corners.min(0)).astype(int) - 1
    hi = np.ceil(corners.max(0)).astype(int) + 2
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], image_size[1]), min(hi[1], image_size[0])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None
