"""Component boxes (left eye, right eye, nose, mouth) from 68 iBUG landmarks on an aligned face."""
from __future__ import annotations

import torch

from dfdcore.config import OFFICIAL_FACE_SIZE

# iBUG-68 indices (0-based) of each component, in the order left_eye, right_eye, nose, mouth.
PART_LANDMARKS: tuple[tuple[int, ...], ...] = (
    tuple(range(17, 22)) + tuple(range(36, 42)),
    tuple(range(22, 27)) + tuple(range(42, 48)),
    tuple(range(29, 36)),
    tuple(range(48, 68)),
)


def part_boxes(landmarks68: torch.Tensor, face_size: int = OFFICIAL_FACE_SIZE) -> torch.Tensor:
    """Component boxes by the official rule.

    For each part: centre c = mean of its points, half-side L = max(max(range_x, range_y) / 2, 16·face_size/512),
    box = trunc([cx − L + 1, cy − L + 1, cx + L, cy + L]).

    Args:
        landmarks68: (B, 68, 2) or (68, 2) landmark (x, y) on the aligned face, in face pixels.
        face_size: side of the aligned face (512 for the official model).

    Returns:
        (B, 4, 4) int64 boxes ``[x1, y1, x2, y2]``, parts in the order left_eye, right_eye, nose, mouth.
    """
    pts = torch.as_tensor(landmarks68)
    if pts.ndim == 2:
        pts = pts.unsqueeze(0)
    if pts.ndim != 3 or pts.shape[1:] != (68, 2):
        raise ValueError(f"landmarks68 must have shape (B, 68, 2) or (68, 2), got {tuple(pts.shape)}")
    if not torch.isfinite(pts).all():
        raise ValueError("landmarks68 contains NaN or infinite values")
    pts = pts.to(torch.float64)
    min_half = 16.0 * face_size / OFFICIAL_FACE_SIZE
    boxes = []
    for idx in PART_LANDMARKS:
        part = pts[:, list(idx)]                              # (B, n, 2)
        centre = part.mean(dim=1)                             # (B, 2)
        extent = part.amax(dim=1) - part.amin(dim=1)          # (B, 2)
        half = (extent.amax(dim=1) / 2).clamp(min=min_half)   # (B,)
        lo = centre - half[:, None] + 1
        hi = centre + half[:, None]
        boxes.append(torch.cat([lo, hi], dim=1).trunc())
    return torch.stack(boxes, dim=1).to(torch.int64)


def scale_boxes(boxes: torch.Tensor, stride: int, feature_size: int) -> list[list[tuple[int, int, int, int] | None]]:
    """Face-pixel boxes → crop windows on a feature map of side ``feature_size`` (``stride`` px per cell).

    The official rule takes ⌊v / stride⌋ and slices rows ``y1 … y2−1``. Beyond it, windows crossing the map border
    are clamped (the official code crashes on negative corners) and a window is at least one cell wide; a box
    entirely outside the map gives ``None`` (that component is skipped, the rest of the face is still restored).

    Args:
        boxes: (B, 4, 4) int boxes in face pixels.

    Returns:
        ``windows[b][p]`` = (x1, y1, x2, y2) in feature cells (exclusive upper bounds) or None.
    """
    cells = torch.div(boxes.to(torch.int64), stride, rounding_mode="floor").tolist()
    windows: list[list[tuple[int, int, int, int] | None]] = []
    for per_face in cells:
        row = []
        for x1, y1, x2, y2 in per_face:
            if x2 <= 0 or y2 <= 0 or x1 >= feature_size or y1 >= feature_size:
                row.append(None)
                continue
            x1, y1 = max(x1, 0), max(y1, 0)
            x2 = min(max(x2, x1 + 1), feature_size)
            y2 = min(max(y2, y1 + 1), feature_size)
            row.append((x1, y1, x2, y2))
        windows.append(row)
    return windows
