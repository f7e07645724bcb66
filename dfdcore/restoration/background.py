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
    A model's native scale n may differ from the requested s: its output is then resized to exactly H·s × W·s —
    averaged over (n/s)² blocks tile by tile when s divides n (a ×4 model serves ×2 and ×1, at ×4 cost), else
    resized whole by area (shrinking) or Lanczos (enlarging).

    Raises:
        SRModelError: the file is missing, truncated or holds no supported model (the message says what it held).
    """
    if spec in INTERPOLATIONS:
        return functools.partial(_interpolate, method=spec)
    path = _model_path(spec)
    stat = path.stat()
    return _cached_model(str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(torch.device(device)))


def upsampler_identity(spec: str) -> dict[str, str]:
    """What the upsampler is, for configuration hashes: ``{"upsampler": name}`` or, for a model, its path and
    the sha256 of its file (a retrained file at the same path is another configuration)."""
    if spec in INTERPOLATIONS:
        return {"upsampler": spec}
    path = _model_path(spec)
    stat = path.stat()
    return {"upsampler": "model", "path": str(path.resolve()),
            "sha256": _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}


def _model_path(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SRModelError(f"background upsampler {spec!r}: expected 'bicubic', 'lanczos' or the path of a model "
                           f"file, but no file is there")
    return path


def _interpolate(rgb: np.ndarray, scale: int, tile: int = 256, *, method: str) -> np.ndarray:
    rgb = _check_rgb(rgb)
    if method == "bicubic":
        return upscale_image(rgb, scale).astype(np.float32)
    scale = _check_scale(scale)
    height, width = rgb.shape[:2]
    resized = cv2.resize(rgb, (width * scale, height * scale), interpolation=cv2.INTER_LANCZOS4)
    return resized.reshape((height * scale, width * scale) + rgb.shape[2:]).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # cache key only: hashing RealESRGAN_x4plus-sized 67 MB for every photo costs 0.11 s each here
    return sha256_path(path)


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
    if model.scale % scale == 0:
        # A ×4 model asked for ×2 averages 2 × 2 blocks of each tile's output (cv2's INTER_AREA at a whole
        # factor): the output at the model's scale is never held whole.
        out = run_tiled(model, colour, tile, TILE_PAD, reduce=model.scale // scale)
    else:
        shrinking = model.scale > scale
        out = cv2.resize(run_tiled(model, colour, tile, TILE_PAD), (width * scale, height * scale),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)
        np.clip(out, 0.0, 1.0, out=out)  # Lanczos overshoots at edges
    # Back to grey as the mean of the model's channels: it may tint a grey input slightly.
    return out.mean(axis=2, keepdims=True) if channels == 1 else out


def run_tiled(model, rgb: np.ndarray, tile: int, pad: int, reduce: int = 1) -> np.ndarray:
    """(H, W, 3) float32 → (H·n/r, W·n/r, 3) float32 in [0, 1], n = ``model.scale``, r = ``reduce`` (dividing n).

    One tile of at most (tile + 2·pad)² input pixels (both rounded up to multiples of ``model.multiple``) is run
    at a time, with ``pad`` pixels of its neighbours around it (fewer at the photo's edges); only its own part of
    the output is kept, clipped to [0, 1] and averaged over r × r blocks: the seams are cropped, not blended.
    """
    height, width = rgb.shape[:2]
    n = model.scale
    if n % reduce:
        raise ValueError(f"expected a reduction dividing the model's scale {n}, got {reduce}")
    m = n // reduce
    # Tiles start on the model's pixel-unshuffle grid, as in an untiled run: a ×2 RRDBNet folds 2 × 2 blocks into
    # channels, and blocks shifted by one pixel give another image (20–30/255 off at tile 49 in the tests).
    align = model.multiple
    tile, pad = tile + -tile % align, pad + -pad % align
    out = np.empty((height * m, width * m, 3), dtype=np.float32)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(height, top + tile), min(width, left + tile)
            y0, x0 = max(0, top - pad), max(0, left - pad)
            y1, x1 = min(height, bottom + pad), min(width, right + pad)
            kept = np.clip(model(rgb[y0:y1, x0:x1])[(top - y0) * n:(bottom - y0) * n,
                                                    (left - x0) * n:(right - x0) * n], 0.0, 1.0)
            if reduce > 1:
                h, w = bottom - top, right - left
                kept = kept.reshape(h * m, reduce, w * m, reduce, 3).mean(axis=(1, 3))
            out[top * m:bottom * m, left * m:right * m] = kept
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
