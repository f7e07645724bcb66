"""The checks and readers behind ``images.decode_image``: file signatures, truncated data (PNG IEND, JPEG EOI and
first scan), EXIF orientation, and the sample layouts PIL reads short (16-bit colour, CMYK).

Pillow (13.0) reads 16-bit-per-channel colour images (PNG, TIFF, PPM) as 8-bit RGB/RGBA, keeping only the high byte
of each sample; 16-bit greyscale it reads at full depth (mode ``I;16``). So 16-bit colour sources are decoded by
OpenCV instead, after PIL has parsed their header (size limit) and checked that their data are complete.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

_EXIF_ORIENTATION = 0x0112
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WebP"))
_PARSE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, IndexError, KeyError,
                 TypeError)


class ImageDecodeError(ValueError):
    """Bytes that are not a usable image. ``reason`` is short and stable (for manifests and counting):
    "empty file", "not an image", "truncated image", "corrupt image", "image too large", "unsupported mode"."""

    def __init__(self, reason: str, detail: str, name: str = ""):
        self.reason = reason
        self.detail = detail
        self.name = name
        super().__init__(f"{name or '<bytes>'}: cannot read image: {reason} ({detail})")

    def __reduce__(self):
        # Errors cross process boundaries (Ray, multiprocessing); the default would call cls(message).
        return type(self), (self.reason, self.detail, self.name)


def open_image(data: bytes, name: str) -> Image.Image:
    """Parse the header only: Image.open reads no pixel data."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("image too large", str(exc), name) from exc
    except UnidentifiedImageError as exc:
        family = next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)
        if family:  # e.g. a PNG whose header checksum is wrong: PIL's plugins all decline it
            raise ImageDecodeError("corrupt image", f"starts as a {family} file but no decoder accepts it "
                                                    "(damaged header or checksum)", name) from exc
        raise ImageDecodeError("not an image", "no image format recognises these bytes", name) from exc
    except _PARSE_ERRORS as exc:
        reason = "truncated image" if "truncat" in str(exc).lower() else "corrupt image"
        raise ImageDecodeError(reason, f"{type(exc).__name__}: {exc}", name) from exc


def load_pixels(image: Image.Image, name: str) -> None:
    """Decode the pixel data. PIL raises on truncated data unless ImageFile.LOAD_TRUNCATED_IMAGES was switched on
    by someone; ``missing_end`` covers PNG and JPEG in that case without us touching that global."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("image too large", str(exc), name) from exc
    except _PARSE_ERRORS as exc:
        message = str(exc)
        reason = "truncated image" if "truncat" in message.lower() else "corrupt image"
        raise ImageDecodeError(reason, f"{type(exc).__name__}: {message}", name) from exc


def missing_end(data: bytes, fmt: str) -> str:
    """Why PNG/JPEG ``data`` stop before their end ("" when complete, or for other formats)."""
    if fmt == "PNG":
        return _png_missing_end(data)
    if fmt == "JPEG" and ImageFile.LOAD_TRUNCATED_IMAGES:
        # Only needed when PIL was told to accept truncation; PIL's own message is more precise otherwise.
        return _jpeg_missing_end(data)
    return ""


def _png_missing_end(data: bytes) -> str:
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IEND":
            return ""
        offset += 12 + length
        if offset > len(data):
            return f"the {kind.decode('latin-1')} chunk at byte {offset - 12 - length} runs past the end of the file"
    return "the file ends before the PNG's IEND chunk"


def _jpeg_missing_end(data: bytes) -> str:
    # Scan data never contain FF D9 (FF is stuffed), so an EOI after the first SOS marks the end of the image;
    # one before it may belong to an EXIF thumbnail.
    scan = _jpeg_first_scan(data)
    if scan < 0 or data.find(b"\xff\xd9", scan) < 0:
        return "the file ends before the JPEG's end-of-image marker"
    return ""


def _jpeg_first_scan(data: bytes) -> int:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return -1
        marker = data[offset + 1]
        if marker == 0xFF:
            offset += 1
            continue
        if marker == 0xDA:
            return offset
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:
            offset += 2
            continue
        offset += 2 + struct.unpack(">H", data[offset + 2:offset + 4])[0]
    return -1


def exif_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a readable photo unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _rawmode(tile) -> str:
    args = tile.args
    if isinstance(args, str):
        return args
    return args[0] if args and isinstance(args[0], str) else ""


def wide_colour(image: Image.Image) -> tuple[int, bool]:
    """(maximum sample value, grey) when ``image`` is not yet loaded and has more than 8 bits per sample in a
    layout that PIL reduces to 8-bit RGB(A); (0, False) otherwise. 16-bit grey+alpha PNGs are one such layout."""
    if not image.tile or image.mode not in ("RGB", "RGBA"):
        return 0, False
    tile = image.tile[0]
    rawmode = _rawmode(tile)
    if ";16" in rawmode:
        return 65535, rawmode.startswith(("L;", "LA;"))
    if image.format == "PPM" and isinstance(tile.args, tuple) and len(tile.args) > 1:
        maxval = tile.args[1]
        return (maxval if isinstance(maxval, int) and maxval > 255 else 0), False
    return 0, False


def decode_wide_colour(data: bytes, maxval: int, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """16-bit colour → ((H, W, 3) float32 RGB in [0, 1], (H, W) alpha or None) via OpenCV, which keeps 16 bits."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16 or array.ndim != 3 or array.shape[2] not in (3, 4):
        got = "nothing" if array is None else f"{array.dtype} {array.shape}"
        raise ImageDecodeError("corrupt image", f"16-bit colour data could not be decoded (OpenCV gave {got})", name)
    samples = array.astype(np.float32) / np.float32(maxval)
    return samples[..., 2::-1], (samples[..., 3] if array.shape[2] == 4 else None)


def pil_samples(image: Image.Image, name: str) -> tuple[np.ndarray, bool, np.ndarray | None, int]:
    """A loaded PIL image → ((H, W, C) samples with C 1 or 3, uint8 or float32 in [0, 1]; grey; alpha; bit depth)."""
    mode = image.mode
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"))[..., None], True, None, 8
    if mode in ("LA", "La"):
        pair = np.asarray(image.convert("LA"))
        return pair[..., :1], True, pair[..., 1], 8
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        converted = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
        return converted[..., :3], False, (converted[..., 3] if has_alpha else None), 8
    if mode in ("RGBA", "RGBa"):
        converted = np.asarray(image.convert("RGBA"))
        return converted[..., :3], False, converted[..., 3], 8
    if mode == "CMYK":
        return np.asarray(cmyk_to_rgb(image)), False, None, 8
    if mode in ("RGB", "RGBX", "YCbCr", "LAB", "HSV"):
        return np.asarray(image.convert("RGB")), False, None, 8
    if mode.startswith("I;16") or mode == "I":
        # PIL scales 16-bit PNG/TIFF/PGM data to 0..65535 in these modes; wider "I" data are clipped to that range.
        values = np.asarray(image).astype(np.float32)
        return (np.clip(values, 0, 65535) / 65535)[..., None], True, None, 16
    if mode == "F":
        # Float images carry no scale; [0, 1] is the only convention we can assume. Kept at more than 8 bits.
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        return np.clip(values, 0, 1)[..., None], True, None, 16
    raise ImageDecodeError("unsupported mode", f"PIL mode {mode!r} has no RGB reading we support", name)


def cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """CMYK → RGB through the embedded ICC profile when there is one (press profiles make PIL's naive formula far
    off), else PIL's formula."""
    profile = image.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken or unusable profile falls back to the plain conversion
            pass
    return image.convert("RGB")
