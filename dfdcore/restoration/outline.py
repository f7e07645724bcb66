"""``--draw-box``: each restored face's detection box and aligned square, drawn into the output photograph."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from dfdcore.face import AlignedFace
from dfdcore.face.paste import face_to_image_matrix

# --draw-box: detection boxes green, the aligned faces' squares (what the network saw) magenta.
BOX_COLOUR, SQUARE_COLOUR = (0.0, 1.0, 0.0), (1.0, 0.0, 1.0)
LINE_WIDTH_PER_PIXEL = 1 / 400  # of the output's longer side: 3 px on a 1024-px output, at least 1


def face_outline(face: AlignedFace, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """A face's detection box and its aligned square in the pixels of the photo upscaled by ``scale``:
    two (4, 2) float64 corner lists (pixel centres as ``face_to_image_matrix`` maps them)."""
    x1, y1, x2, y2 = face.detection.box
    box = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64) * scale + (scale - 1) / 2
    side = face.image.shape[0] - 1
    square = np.array([[0, 0, 1], [side, 0, 1], [side, side, 1], [0, side, 1]], np.float64)
    return box, square @ face_to_image_matrix(face.matrix, scale).T


def line_width(shape: tuple[int, ...]) -> int:
    """Outline width in pixels for an output of ``shape`` (H, W, ...)."""
    return max(1, round(max(shape[:2]) * LINE_WIDTH_PER_PIXEL))


def draw_outlines(rgb: np.ndarray, alpha: np.ndarray | None, outlines: Sequence[tuple[np.ndarray, np.ndarray]]
                  ) -> None:
    """Draw each (box, square) of ``face_outline`` into ``rgb`` (H, W, 3) float32, in place; ``alpha`` (H, W) is
    made opaque under the lines, so they show on transparent parts too."""
    width = line_width(rgb.shape)
    for box, square in outlines:
        for corners, colour in ((square, SQUARE_COLOUR), (box, BOX_COLOUR)):
            polygon = [np.round(corners).astype(np.int32).reshape(-1, 1, 2)]
            cv2.polylines(rgb, polygon, True, colour, width, cv2.LINE_8)
            if alpha is not None:
                cv2.polylines(alpha, polygon, True, 1.0, width, cv2.LINE_8)
