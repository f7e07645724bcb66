"""How much of the model's change each pasted face keeps (``--strength``).

A blind restorer must not make a face that is already sharp worse. The model always sharpens a little, at its own
face size S: on a clean or mildly degraded photo (a large face aligned down to S, or a sharp one near S) that
sharpening costs PSNR against leaving the photo alone (bench/RESULTS.md, "A strength gate for pasted faces": −3.8 dB
on clean 300-px faces, −0.12 dB on mildly blurred ones, −0.22 dB on noisy ones), while on faces that are blurred
at S it gains (+0.3 to +0.6 dB). ``auto`` keeps a fraction of the change that falls as the crop the model saw looks
sharper: ``strength = clip((SHARP - ratio) / RAMP, 0, 1)`` with ``ratio = detail_ratio(crop)``.

The ratio compares the crop's finest detail (crop − blur σ 1) with the band below it (blur σ 1 − blur σ 2) over
the face's centre: blur takes the fine band away first, whatever the face (a beard, wrinkles or smooth skin raise both
bands together), so it tells a blurred face from a smooth one better than a plain Laplacian does (same portraits:
separation 2.4 against 1.7 pooled deviations). Noise and JPEG raise it too: the model's change does not help them
either (their PSNR falls at every strength above ~0.4).
"""
from __future__ import annotations

import cv2
import numpy as np

AUTO = "auto"
# Fitted on 60 training portraits × 5 photo-level degradations (clean, mild, moderate, heavy, noisy), at their own
# size and at half size: the largest summed gain with no degradation's mean below the photo left alone
# (bench/bench_paste_gate.py --fit; checked on held-out portraits in bench/RESULTS.md).
SHARP, RAMP = 0.90, 0.25


def detail_ratio(face: np.ndarray) -> float:
    """How much of an aligned face's finest detail is left: mean |crop − blur σ 1| / mean |blur σ 1 − blur σ 2|
    of the grey centre half of the crop (≈ 1.2 for a sharp 128-px portrait, ≈ 0.7 for one blurred ×6).

    Args:
        face: (S, S, 3) RGB aligned face, uint8 (or float in [0, 255]), S ≥ 16.
    """
    pixels = np.asarray(face)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] != pixels.shape[1] or pixels.shape[0] < 16:
        raise ValueError(f"expected an (S, S, 3) aligned face with S >= 16, got shape {pixels.shape}")
    grey = cv2.cvtColor(pixels.astype(np.float32), cv2.COLOR_RGB2GRAY)
    side = grey.shape[0]
    centre = grey[side // 4: 3 * side // 4, side // 4: 3 * side // 4]
    blur1 = cv2.GaussianBlur(centre, (0, 0), 1.0)
    blur2 = cv2.GaussianBlur(centre, (0, 0), 2.0)
    fine, below = float(np.abs(centre - blur1).mean()), float(np.abs(blur1 - blur2).mean())
    return fine / below if below > 1e-6 else 0.0  # a flat crop holds nothing to keep: restore it fully


def gate(ratio, sharp: float = SHARP, ramp: float = RAMP) -> np.ndarray:
    """``clip((sharp − ratio) / ramp, 0, 1)`` of a detail ratio (or an array of them): the fraction ``auto`` keeps."""
    return np.clip((sharp - np.asarray(ratio, np.float64)) / ramp, 0.0, 1.0)


def auto_strength(face: np.ndarray) -> float:
    """The fraction of the model's change that ``auto`` keeps for this input crop, in [0, 1] (module docstring)."""
    return float(gate(detail_ratio(face)))


def check_strength(strength: float | str, name: str = "strength") -> float | str:
    """``"auto"`` or a number in [0, 1] (a numeric string is read as its number); anything else: ValueError."""
    if isinstance(strength, str) and strength.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 'auto' or a number in [0, 1], got {strength!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be 'auto' or a number in [0, 1], got {value}")
    return value


def face_strength(strength: float | str, face: np.ndarray) -> float:
    """The fraction kept for one face: ``strength`` (as ``check_strength`` gave it) itself, or
    ``auto_strength(face)`` for ``"auto"``."""
    return auto_strength(face) if strength == AUTO else float(strength)


def scale_change(crop: np.ndarray, restored: np.ndarray, strength: float) -> np.ndarray:
    """``crop + strength · (restored − crop)``: the restored face with only ``strength`` of the model's change.

    Args:
        crop, restored: (S, S, 3) uint8, the model's input and output on the same aligned grid.

    Returns:
        ``restored`` itself at strength 1 (bit for bit), else (S, S, 3) float32 in [0, 255].
    """
    if crop.shape != restored.shape:
        raise ValueError(f"expected the crop and its restored face on the same grid, got {crop.shape} and "
                         f"{restored.shape}")
    if strength >= 1.0:
        return restored
    crop = np.asarray(crop, np.float32)
    return crop + np.float32(strength) * (np.asarray(restored, np.float32) - crop)


def faces_to_paste(faces, restored: list[np.ndarray], strength: float | str, aligned: bool = False
                   ) -> tuple[list[float], list, list[np.ndarray]]:
    """Each face's strength (``strength`` as ``check_strength`` gave it: ``RestoreOptions`` checks it once), and the
    faces to paste with what of their restoration they keep.

    A face at strength 0 is not pasted at all, so the photo stays as it is there to the bit (colour matching a crop
    to itself moves it by up to ~0.6/255). An aligned crop (``aligned``) is always kept, and ``auto`` keeps all of
    its change: its output is the model's face itself, where no finer detail of the input survives the resize.

    Args:
        faces: ``AlignedFace`` each (``image``: the (S, S, 3) uint8 crop the model saw); restored: (S, S, 3) uint8.

    Returns:
        (strength per face, the faces pasted, their kept faces as ``scale_change`` gives them).
    """
    strength = 1.0 if aligned and strength == AUTO else strength
    strengths = [face_strength(strength, face.image) for face in faces]
    chosen = [(face, scale_change(face.image, pixels, s))
              for face, pixels, s in zip(faces, restored, strengths, strict=True) if s > 0 or aligned]
    return strengths, [face for face, _ in chosen], [kept for _, kept in chosen]
