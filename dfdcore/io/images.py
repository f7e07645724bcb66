"""Image decode/encode between bytes and arrays, with clear errors for bad input.

``decode_image`` turns the bytes of any file PIL reads into a ``DecodedImage``: an 8-bit RGB view for detection and
the network, a float view at the source's full precision, and the alpha channel when there is one.
``encode_image`` is its inverse for the formats we write. Both work on bytes, so the same code serves local files
and object stores (see ``storage``). The checks and format quirks behind decoding are in ``decoding``.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dfdcore.io.decoding import (
    ImageDecodeError,
    decode_wide_colour,
    exif_orientation,
    load_pixels,
    missing_end,
    open_image,
    pil_samples,
    wide_colour,
)
from dfdcore.io.pixels import unit_to_uint8
from dfdcore.io.storage import is_local, read_bytes, write_bytes_atomic

# PIL's own hard limit: Image.open refuses images over twice MAX_IMAGE_PIXELS before we see their size.
DEFAULT_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 178_956_970

# Formats whose files can hold an alpha channel / 16-bit samples when we write them.
_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})
_WIDE_FORMATS = frozenset({"PNG", "TIFF"})
# ITU-R BT.601 luma, the weights PIL uses for RGB → L, so our grey output matches PIL's.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous; identity equality and hashing instead
class DecodedImage:
    """One decoded picture, EXIF orientation applied (so ``size`` is the upright size).

    rgb8: (H, W, 3) uint8 RGB, for detection and the network.
    rgb: (H, W, 3) float32 in [0, 1] at the source's full precision (16-bit sources keep 16 bits here).
    alpha: (H, W) float32 in [0, 1], or None when the source has no transparency.
    grey: the source had a single colour channel (its three RGB channels are then equal).
    bit_depth: 8 or 16, the precision to write results back at.
    format: PIL's format name ("JPEG", "PNG", ...).
    size: (width, height).
    frames: how many frames the file holds (animated/multi-page files: only the first is decoded).
    """

    rgb8: np.ndarray
    rgb: np.ndarray
    alpha: np.ndarray | None
    grey: bool
    bit_depth: int
    format: str
    size: tuple[int, int]
    frames: int = 1


def decode_image(data: bytes, name: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode image file bytes → DecodedImage; raises ImageDecodeError (a ValueError) saying why it can't.

    ``max_pixels`` is checked against the header's size before any pixel data are decoded (decompression bombs).
    PIL itself refuses images over ``DEFAULT_MAX_PIXELS`` whatever ``max_pixels`` says.
    """
    if not data:
        raise ImageDecodeError("empty file", "0 bytes", name)
    image = open_image(data, name)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError("corrupt image", f"header gives size {width}x{height}", name)
    if width * height > max_pixels:
        raise ImageDecodeError("image too large", f"{width}x{height} = {width * height} pixels, "
                                                  f"more than the limit of {max_pixels}", name)
    fmt = image.format or "unknown"
    missing = missing_end(data, fmt)
    if missing:
        raise ImageDecodeError("truncated image", missing, name)
    frames = int(getattr(image, "n_frames", 1) or 1)
    wide_max, wide_grey = wide_colour(image)  # before load(), which empties image.tile
    load_pixels(image, name)
    orientation = exif_orientation(image)
    if wide_max:
        samples, alpha = decode_wide_colour(data, wide_max, name)
        samples, grey, bit_depth = (samples[..., :1] if wide_grey else samples), wide_grey, 16
    else:
        samples, grey, alpha, bit_depth = pil_samples(image, name)
    samples = orient(samples, orientation)
    alpha = None if alpha is None else orient(alpha, orientation)
    rgb = np.repeat(samples, 3, axis=2) if samples.shape[2] == 1 else samples
    rgb8 = rgb if rgb.dtype == np.uint8 else unit_to_uint8(rgb)
    return DecodedImage(rgb8=np.ascontiguousarray(rgb8), rgb=_as_unit_float(rgb),
                        alpha=None if alpha is None else _as_unit_float(alpha), grey=grey, bit_depth=bit_depth,
                        format=fmt, size=(rgb.shape[1], rgb.shape[0]), frames=frames)


def encode_image(rgb: np.ndarray, *, alpha: np.ndarray | None = None, grey: bool = False, bit_depth: int = 8,
                 ext: str = "png", text: dict[str, str] | None = None, quality: int = 95) -> bytes:
    """Encode (H, W, 3) RGB → file bytes in the format named by ``ext`` ("png", ".jpg", "tiff", ...).

    ``rgb`` is float in [0, 1] (values outside are clipped), or uint8 (/255) or uint16 (/65535); samples are
    rounded to the nearest level. ``grey`` writes one channel (BT.601 luma of ``rgb``). ``alpha`` (H, W), same
    scaling as ``rgb``, is kept by PNG, WebP and TIFF; other formats cannot hold it, so the image is composited on
    white there (what a viewer shows, not whatever colour transparent pixels happen to hold). ``bit_depth`` 16 is
    kept by PNG and TIFF; other formats get 8 bits. ``text`` goes into PNG tEXt chunks (other formats ignore it).
    ``quality`` applies to JPEG and WebP.
    """
    fmt = image_format_for(ext)
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    colour = _as_unit_float(_check_rgb(rgb))
    opacity = None if alpha is None else _as_unit_float(_check_alpha(alpha, colour.shape[:2]))
    if opacity is not None and fmt not in _ALPHA_FORMATS:
        colour = colour * opacity[..., None] + (1.0 - opacity[..., None])
        opacity = None
    channels = colour @ _LUMA if grey else colour
    if channels.ndim == 2:
        channels = channels[..., None]
    if opacity is not None:
        channels = np.concatenate([channels, opacity[..., None]], axis=2)
    if bit_depth == 16 and fmt in _WIDE_FORMATS:
        return _encode_wide(channels, fmt, text)
    return _encode_8bit(unit_to_uint8(channels), fmt, text, quality)


def image_format_for(ext: str) -> str:
    """File extension ("png", ".JPG") → PIL format name ("PNG", "JPEG"); ValueError for ones PIL can't write."""
    suffix = "." + ext.lower().lstrip(".")
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"cannot write images with extension {ext!r}: expected one of .png, .jpg, .tif, .webp, "
                         f".bmp, ...")
    return fmt


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, ...) array, as ``ImageOps.exif_transpose`` does to images."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(array, -1)
    if orientation == 7:
        return array[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(array, 1)
    return array


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (local path or fsspec URL) as (H, W, 3) uint8 RGB, EXIF orientation applied.

    Raises ValueError ("<path>: cannot read image ...") when the file is missing or not a usable image.
    """
    try:
        data = read_bytes(os.fspath(path))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from exc
    return decode_image(data, name=os.fspath(path)).rgb8


def write_image(path: str | os.PathLike, rgb: np.ndarray, text: dict[str, str] | None = None) -> Path | str:
    """Write an (H, W, 3) uint8 image atomically, format from the extension (PNG when unknown); PNG files carry
    ``text`` as tEXt chunks. Returns ``path`` (a Path for local files, the URL string for remote ones)."""
    target = os.fspath(path)
    ext = os.path.splitext(target)[1] or "png"
    try:
        image_format_for(ext)
    except ValueError:
        ext = "png"
    write_bytes_atomic(target, encode_image(rgb, ext=ext, text=text))
    return Path(target) if is_local(target) else target


def _as_unit_float(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535)
    return np.clip(np.nan_to_num(array.astype(np.float32, copy=False)), 0, 1)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    _check_dtype(rgb, "rgb")
    return rgb


def _check_alpha(alpha: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    alpha = np.asarray(alpha)
    if alpha.ndim == 3 and alpha.shape[2] == 1:
        alpha = alpha[..., 0]
    if alpha.shape != shape:
        raise ValueError(f"expected an alpha array of shape {shape} (H, W) to match rgb, got {alpha.shape}")
    _check_dtype(alpha, "alpha")
    return alpha


def _check_dtype(array: np.ndarray, what: str) -> None:
    if array.dtype not in (np.uint8, np.uint16) and array.dtype.kind != "f":
        raise ValueError(f"expected {what} as float in [0, 1], uint8 or uint16, got dtype {array.dtype}")


def _encode_8bit(channels: np.ndarray, fmt: str, text: dict[str, str] | None, quality: int) -> bytes:
    """(H, W, C) uint8 with C = 1 (L), 2 (LA), 3 (RGB), 4 (RGBA) → file bytes."""
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels.shape[2]]
    image = Image.fromarray(np.ascontiguousarray(channels[..., 0] if mode == "L" else channels), mode)
    if mode == "LA" and fmt == "WEBP":
        image = image.convert("RGBA")  # WebP has no grey+alpha layout
    options: dict[str, object] = {}
    if fmt == "PNG" and text:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        options["pnginfo"] = info
    elif fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    elif fmt == "TIFF":
        options["compression"] = "tiff_deflate"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _encode_wide(channels: np.ndarray, fmt: str, text: dict[str, str] | None) -> bytes:
    """(H, W, C) float in [0, 1] → 16-bit PNG/TIFF bytes via OpenCV (PIL cannot write 16-bit colour).

    OpenCV has no grey+alpha layout, so 16-bit grey with alpha is written as RGBA.
    """
    import cv2

    levels = np.rint(np.clip(channels, 0, 1) * 65535).astype(np.uint16)
    if levels.shape[2] == 2:
        levels = np.concatenate([np.repeat(levels[..., :1], 3, axis=2), levels[..., 1:]], axis=2)
    if levels.shape[2] >= 3:
        levels = np.concatenate([levels[..., 2::-1], levels[..., 3:]], axis=2)  # RGB(A) → BGR(A)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 6] if fmt == "PNG" else []
    ok, encoded = cv2.imencode(".png" if fmt == "PNG" else ".tiff", np.ascontiguousarray(levels), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {levels.shape} uint16 image as {fmt}")
    data = encoded.tobytes()
    return _png_with_text(data, text) if fmt == "PNG" and text else data


def _png_with_text(png: bytes, text: dict[str, str]) -> bytes:
    """Insert tEXt chunks right after IHDR (keyword Latin-1, 1-79 characters, as the PNG spec requires)."""
    ihdr_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    chunks = []
    for key, value in text.items():
        body = key.encode("latin-1") + b"\0" + str(value).encode("latin-1", errors="replace")
        chunks.append(struct.pack(">I", len(body)) + b"tEXt" + body
                      + struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF))
    return png[:ihdr_end] + b"".join(chunks) + png[ihdr_end:]


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB → PNG bytes (lossless; faceset and test-set storage)."""
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes of ``encode_png`` → (H, W, 3) uint8 RGB."""
    import cv2

    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
