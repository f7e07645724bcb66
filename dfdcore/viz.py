"""Images people look at: side-by-side comparisons with captions."""
from __future__ import annotations

import cv2
import numpy as np


def side_by_side(images: list[np.ndarray], captions: list[str], bar: int = 28) -> np.ndarray:
    """Concatenate equally sized (H, W, 3) uint8 images horizontally, each with a caption bar on top."""
    panels = []
    for image, caption in zip(images, captions):
        panel = np.full((image.shape[0] + bar, image.shape[1], 3), 255, np.uint8)
        panel[bar:] = image
        scale = max(0.35, min(0.7, image.shape[1] / 700))
        cv2.putText(panel, caption, (6, bar - 9), cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 1, cv2.LINE_AA)
        panels.append(panel)
    return np.concatenate(panels, axis=1)
