"""Paste-back masks shaped by a face's 68 landmarks, and the face regions that colour matching and the seam
measurements read (skin without eyes and mouth).

Everything here is on the aligned face (S, S), in the coordinates of its ``landmarks68`` (dlib's 68-point scheme,
iBUG 300-W order: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67). ``paste.paste_faces`` warps these
masks into the photograph with the face, and multiplies them by its own square mask, which keeps parts of the face
square that fall outside the photograph (and the square's own edge) out of the blend.
"""
from __future__ import annotations

import cv2
import numpy as np

MASKS = ("square", "landmarks")
DEFAULT_MASK = "landmarks"  # bench/RESULTS.md, "Seams and colour shift (issue 27)"
# Measured in face pixels as fractions of the face side S, like paste.ERODE / FEATHER, so the mask covers the same
# part of every face whatever its size in the photograph.
FOREHEAD = 0.25  # the brows are raised by this fraction of the brow → chin distance: covers the lower forehead
GROW = 1 / 16    # the hull is grown outward by this much (cheeks' edge, the ears' root, under the chin) ...
FEATHER = 1 / 16  # ... and the weight rises from 0 on the grown outline to 1 over this much, inward
JAW, BROWS = slice(0, 17), slice(17, 27)
EYES = (slice(36, 42), slice(42, 48))
MOUTH = slice(48, 60)  # the outer lip line


def check_landmarks(landmarks68: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks68, dtype=np.float64)
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise ValueError(f"expected finite (68, 2) landmarks on the aligned face, got shape {points.shape}")
    return points


def face_outline(landmarks68: np.ndarray, forehead: float = FOREHEAD) -> np.ndarray:
    """(N, 2) convex outline of the face on the aligned face: the jaw line, the brows, and the brows again raised
    by ``forehead`` × the brow → chin distance along the face's own up direction (so a tilted face is covered
    along its own axis, not the crop's)."""
    points = check_landmarks(landmarks68)
    brows, chin = points[BROWS], points[8]
    up = brows.mean(0) - chin
    raised = brows + forehead * up  # up has the brow → chin length: the offset is forehead × that distance
    hull = cv2.convexHull(np.concatenate([points[JAW], brows, raised]).astype(np.float32))
    return hull.reshape(-1, 2).astype(np.float64)


def _fill(size: int, polygons: list[np.ndarray], pad: int = 0) -> np.ndarray:
    """(size + 2·pad)² uint8 canvas with the polygons (face pixel coordinates) filled with 1, vertices to 1/16 px."""
    canvas = np.zeros((size + 2 * pad, size + 2 * pad), np.uint8)
    shift = 4  # cv2 fixed-point: 1/16 px vertex precision
    for polygon in polygons:
        vertices = np.round((np.asarray(polygon) + pad) * (1 << shift)).astype(np.int32)
        cv2.fillPoly(canvas, [vertices], 1, lineType=cv2.LINE_8, shift=shift)
    return canvas


def landmark_mask(landmarks68: np.ndarray, face_size: int, forehead: float = FOREHEAD, grow: float = GROW,
                  feather: float = FEATHER) -> np.ndarray:
    """Soft blend weight of the face itself, on the aligned face: (S, S) float32 in [0, 1].

    0 beyond ``grow``·S outside ``face_outline`` (jaw, brows, lower forehead), rising with a smoothstep over
    ``feather``·S inward from there, so with ``feather`` <= ``grow`` the whole outline is at 1. The mask is built on a
    canvas padded past the crop, so a face whose outline leaves the crop is not cut square by the crop's edge here
    (``paste.face_mask`` fades the crop's edge separately).
    """
    if forehead < 0 or grow < 0 or feather <= 0:
        raise ValueError(f"expected forehead >= 0, grow >= 0 and feather > 0 (fractions), got {forehead}, {grow}, "
                         f"{feather}")
    pad = int(np.ceil((grow + feather) * face_size)) + 2
    outside = 1 - _fill(face_size, [face_outline(landmarks68, forehead)], pad)
    to_outline = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    grown = (to_outline <= grow * face_size).astype(np.uint8)
    # Distance to the grown outline from inside: a second transform rather than grow − to_outline, which would
    # keep the hull's corners (the chin, the brows' ends) as corners of the weight's level lines.
    depth = cv2.distanceTransform(grown, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[pad:-pad, pad:-pad]
    ramp = np.clip(depth / (feather * face_size), 0, 1)
    return (ramp * ramp * (3 - 2 * ramp)).astype(np.float32)


def feature_polygons(landmarks68: np.ndarray) -> list[np.ndarray]:
    """The two eyes and the outer lip line, (N, 2) each, on the aligned face."""
    points = check_landmarks(landmarks68)
    return [points[EYES[0]], points[EYES[1]], points[MOUTH]]


def skin_region(landmarks68: np.ndarray, face_size: int, margin: float = 1 / 64) -> np.ndarray:
    """(S, S) bool: inside the jaw-and-brows hull (no forehead), outside the eyes and the mouth grown by
    ``margin``·S (eyelids, lip edges): where a face's colour is its skin's."""
    points = check_landmarks(landmarks68)
    hull = cv2.convexHull(np.concatenate([points[JAW], points[BROWS]]).astype(np.float32)).reshape(-1, 2)
    face = _fill(face_size, [hull]).astype(bool)
    features = _fill(face_size, feature_polygons(points))
    radius = max(1, int(round(margin * face_size)))
    features = cv2.dilate(features, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    return face & ~features.astype(bool)


def usable_region(face_size: int, face_to_image: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """(S, S) bool: face pixels at full square-mask weight, i.e. well inside the crop and the photograph (not the
    aligner's black border where a face leaves the photo): the only pixels whose input colour is the photo's."""
    from dfdcore.face.paste import face_mask

    return face_mask(face_size, face_to_image, image_size) >= 1 - 1e-6


def prepare_faces(faces, restored: list[np.ndarray], scale: int, image_size: tuple[int, int], mask: str,
                  color_match: str) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray | None]]:
    """What ``paste.paste_faces`` needs to paste restored faces back with ``mask`` and ``color_match``.

    Args:
        faces: the ``AlignedFace`` of each restored face (its input crop ``image``, ``matrix``, ``landmarks68``).
        restored: (S, S, 3) uint8 restored faces, one per face, on the same aligned grid.
        scale: the output's upscale of the photo; image_size: the output's (H, W).
        mask: one of ``MASKS``; color_match: one of ``colour.COLOR_MATCHES``.

    Returns:
        (face (S, S, 3) float32 in [0, 1], colour-matched, (2, 3) face → output matrix) pairs and the shape
        mask of each face (None for ``square``).
    """
    from dfdcore.face.colour import COLOR_MATCHES, is_grey, match_colour, to_grey
    from dfdcore.face.paste import face_to_image_matrix

    if mask not in MASKS or color_match not in COLOR_MATCHES:
        raise ValueError(f"expected a mask of {MASKS} and a colour match of {COLOR_MATCHES}, got {mask!r}, "
                         f"{color_match!r}")
    pairs, shapes = [], []
    for face, pixels in zip(faces, restored, strict=True):
        size = pixels.shape[0]
        matrix = face_to_image_matrix(face.matrix, scale)
        unit = np.asarray(pixels, np.float32) / 255.0
        outline = landmark_mask(face.landmarks68, size)
        if color_match != "none":
            region = skin_region(face.landmarks68, size) & usable_region(size, matrix, image_size)
            matched = match_colour(unit, np.asarray(face.image, np.float32) / 255.0, region, color_match)
            # Corrected inside the face's outline only, fading with it: the skin says nothing about how the model
            # changed the hair and background around it, and correcting those by the skin's shift made the step
            # where a square mask meets the photo larger (bench/RESULTS.md, issue 27).
            unit += outline[..., None] * (matched - unit)
            if is_grey(face.image):  # no colour in, none out: the model's faint tint is not the photo's
                unit = to_grey(unit)
        pairs.append((unit, matrix))
        shapes.append(outline if mask == "landmarks" else None)
    return pairs, shapes


def lost_detail(photo: np.ndarray, faces, pairs: list[tuple[np.ndarray, np.ndarray]], shapes: list[np.ndarray | None],
                scale: int, bicubic: np.ndarray | None = None) -> np.ndarray:
    """What ``--paste correction`` adds to a pasted photo: the photo's detail that the S-pixel aligned crops do not
    hold, under the faces' blend weights.

    A face larger than S output pixels is aligned down to S, restored, and warped back up, so pasting the restored
    face alone leaves S pixels' worth of detail (a sharp 400-px face comes back soft). Adding
    ``w · (bicubic(photo) − warp(input crop))`` makes the face ``warp(restored) + (bicubic − warp(crop))``: the
    model's result plus what the crop lost. Where the output is no finer than the crop (small faces) that term is
    about zero; it comes from the bicubic upscale whatever ``--bg-upsampler`` is, so the faces do not depend on it.

    Args:
        photo: (H, W, 3) float32 in [0, 1], the input photograph; faces: its ``AlignedFace`` (``image``: the
            (S, S, 3) uint8 crop the model saw); pairs, shapes: as ``prepare_faces`` gave them; scale: the upscale.
        bicubic: ``paste.upscale_image(photo, scale)`` when the caller has it.

    Returns:
        (H·s, W·s, 3) float32 to add to the pasted photo.
    """
    from dfdcore.face.paste import paste_faces, upscale_image

    upscaled = upscale_image(photo, scale).astype(np.float32) if bicubic is None else bicubic
    crops = [(np.asarray(face.image, np.float32) / 255.0, matrix) for face, (_, matrix) in zip(faces, pairs,
                                                                                             strict=True)]
    return upscaled - paste_faces(upscaled, crops, shapes=shapes)
