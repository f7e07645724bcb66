"""Pixel ranges, converted in one place: uint8 images, float images in [0, 1], and the model's [-1, 1] tensors.

Rounding is to nearest everywhere (the official code truncates, which darkens by half a level on average)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def images_to_tensor(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 images (or one (B, H, W, 3) array) → (B, 3, H, W) float32 in [-1, 1]."""
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(images))).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1


def tensor_to_images(batch: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] (clamped) → (B, H, W, 3) uint8, on the CPU."""
    pixels = ((batch.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def unit_to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] (clipped) → uint8, same shape."""
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def uint8_to_unit(image: np.ndarray) -> np.ndarray:
    """uint8 image → float32 in [0, 1], same shape."""
    return image.astype(np.float32) / 255.0
