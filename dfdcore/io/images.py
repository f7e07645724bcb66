"""Image decode/encode: RGB uint8 arrays in, atomic writes out."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .atomic import atomic_path


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, EXIF orientation applied. Raises ValueError with the reason."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                image = Image.fromarray((array / max(array.max(), 1) * 255).round().astype(np.uint8))
            return np.asarray(image.convert("RGB"))
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from exc


def write_image(path: str | os.PathLike, rgb: np.ndarray, text: dict[str, str] | None = None) -> Path:
    """Write an (H, W, 3) uint8 image atomically; PNG files carry ``text`` as tEXt chunks."""
    path = Path(path)
    image = Image.fromarray(np.ascontiguousarray(rgb))
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".png":
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            for key, value in (text or {}).items():
                info.add_text(key, value)
            image.save(tmp, format="PNG", pnginfo=info)
        else:
            image.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"), quality=95)
    return path
