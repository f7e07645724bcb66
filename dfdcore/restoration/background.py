"""Background upsamplers: the photo outside the faces, enlarged by bicubic or Lanczos interpolation or by a
super-resolution model the user gives by path, run in overlapping tiles so that memory stays bounded.

A spec is ``"bicubic"``, ``"lanczos"`` or the path of a model file: a TorchScript file, or a state dict of an
ESRGAN/Real-ESRGAN ``RRDBNet`` or a Real-ESRGAN ``SRVGGNetCompact`` (see ``dfdcore.arch.sr``).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from dfdcore.arch.sr import SRModelError, load_sr_model
from dfdcore.face.paste import upscale_image
from dfdcore.io.hashing import sha256_path

INTERPOLATIONS = ("bicubic", "lanczos")
# Overlap of neighbouring tiles, in input pixels, on each side. A tile's result is kept only where the model saw
# at least this much context around it, so seams show only what lies further than 24 px away (the tests bound the
# difference to an untiled run).
TILE_PAD = 24

Upsampler = Callable[..., np.ndarray]


def upscale_background(rgb: np.ndarray, scale: int, upsampler: str = "bicubic", *, tile: int = 256,
                       device: str = "cpu") -> np.ndarray:
    """Enlarge a photo (H, W, C) float32 in [0, 1], C = 1 or 3, by the integer ``scale`` to (H·s, W·s, C) float32.

    ``"bicubic"`` is exactly ``dfdcore.face.paste.upscale_image`` (as dfd always did) and ``"lanczos"`` is
    cv2.INTER_LANCZOS4; both keep the interpolation's slight overshoot at sharp edges (the Restorer clips the
    pasted result). A model path runs that model in tiles of ``tile`` input pixels (see
    ``load_background_upsampler``) and its output is clipped to [0, 1].
    """
    return load_background_upsampler(upsampler, device)(rgb, scale, tile=tile)


def load_background_upsampler(spec: str, device: str = "cpu") -> Upsampler:
    """The upsampler ``fn(rgb, scale, tile=256) -> (H·s, W·s, C) float32`` of ``spec``, models loaded once.

    Models are cached by path, size, modification time and device: a Restorer may call this for every photo.
    A model's native scale may differ from the requested one: its output is then resized to exactly H·s × W·s
    (area when shrinking, Lanczos when enlarging), so a ×4 model serves ×2 (at ×4 cost).

    Raises:
        SRModelError: the file is missing, truncated or holds no supported model (the message says what it held).
    """
    if spec in INTERPOLATIONS:
        return functools.partial(_interpolate, method=spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SRModelError(f"background upsampler {spec!r}: expected 'bicubic', 'lanczos' or the path of a model "
                           f"file, but no file is there")
    stat = path.stat()
    return _cached_model(str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(torch.device(device)))


def upsampler_identity(spec: str) -> dict[str, str]:
    """What the upsampler is, for configuration hashes: ``{"upsampler": name}`` or, for a model, its path and
    the sha256 of its file (a retrained file at the same path is another configuration)."""
    if spec in INTERPOLATIONS:
        return {"upsampler": spec}
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SRModelError(f"background upsampler {spec!r}: expected 'bicubic', 'lanczos' or the path of a model "
                           f"file, but no file is there")
    return {"upsampler": "model", "path": str(path.resolve()), "sha256": sha256_path(path)}


def _interpolate(rgb: np.ndarray, scale: int, tile: int = 256, *, method: str) -> np.ndarray:
    rgb = _check_rgb(rgb)
    if method == "bicubic":
        return upscale_image(rgb, scale).astype(np.float32)
    scale = _check_scale(scale)
    height, width = rgb.shape[:2]
    resized = cv2.resize(rgb, (width * scale, height * scale), interpolation=cv2.INTER_LANCZOS4)
    return resized.reshape((height * scale, width * scale) + rgb.shape[2:]).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _cached_model(path: str, size: int, mtime_ns: int, device: str) -> Upsampler:
    del size, mtime_ns  # part of the cache key only: a rewritten file is loaded again
    model = load_sr_model(path, torch.device(device))
    return functools.partial(_run_model, model)


def _run_model(model, rgb: np.ndarray, scale: int, tile: int = 256) -> np.ndarray:
    """Run ``model`` (a ``dfdcore.arch.sr.SRModel``) over the photo in tiles and resize to exactly H·s × W·s."""
    rgb = _check_rgb(rgb)
    scale = _check_scale(scale)
    if tile < 2 * TILE_PAD:
        raise ValueError(f"expected a tile of at least {2 * TILE_PAD} input pixels (twice the overlap), got {tile}")
    height, width, channels = rgb.shape
    colour = np.repeat(rgb, 3, axis=2) if channels == 1 else rgb
    out = np.clip(run_tiled(model, colour, tile, TILE_PAD), 0.0, 1.0)
    out_size = (width * scale, height * scale)
    if out.shape[:2] != (out_size[1], out_size[0]):
        shrinking = out.shape[0] > out_size[1]
        out = cv2.resize(out, out_size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)
        np.clip(out, 0.0, 1.0, out=out)  # Lanczos overshoots at edges
    # Back to grey as the mean of the model's channels: it may tint a grey input slightly.
    return out.mean(axis=2, keepdims=True) if channels == 1 else out


def run_tiled(model, rgb: np.ndarray, tile: int, pad: int) -> np.ndarray:
    """(H, W, 3) float32 → (H·n, W·n, 3) float32, n = ``model.scale``, one tile of ≤ (tile + 2·pad)² at a time.

    Each tile is run with ``pad`` input pixels of its neighbours around it (fewer at the photo's edges) and only
    its own part of the output is kept: the seams are cropped, not blended.
    """
    height, width = rgb.shape[:2]
    n = model.scale
    out = np.empty((height * n, width * n, 3), dtype=np.float32)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(height, top + tile), min(width, left + tile)
            y0, x0 = max(0, top - pad), max(0, left - pad)
            y1, x1 = min(height, bottom + pad), min(width, right + pad)
            result = model(rgb[y0:y1, x0:x1])
            out[top * n:bottom * n, left * n:right * n] = result[(top - y0) * n:(bottom - y0) * n,
                                                                 (left - x0) * n:(right - x0) * n]
    return out


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (1, 3) or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected a non-empty (H, W, 1) or (H, W, 3) image, got shape {rgb.shape}")
    if rgb.dtype != np.float32:
        raise ValueError(f"expected float32 pixels in [0, 1], got {rgb.dtype}")
    return rgb


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"expected an integer scale >= 1, got {scale!r}")
    return int(scale)


__all__ = [
    "INTERPOLATIONS",
    "TILE_PAD",
    "SRModelError",
    "load_background_upsampler",
    "run_tiled",
    "upsampler_identity",
    "upscale_background",
]
