"""Colour matching of a restored face to the face it was restored from, before paste-back.

A face model may shift a face's colour (its training photos' lighting and skin tones, not this photo's): pasted
back, the face then differs from the neck and ears around it however soft the mask. Matching happens on the
aligned face, in CIELAB (L* lightness, a* green-red, b* blue-yellow: distances there follow perceived colour
differences, and its channels are nearly uncorrelated, so each can be matched on its own), over the skin only:
eyes and mouth are left out because a restoration is expected to change them (sharper irises, teeth).

Methods (``COLOR_MATCHES``):
  * ``none``: the restored face as the model made it.
  * ``mean-std``: per Lab channel, the restored face's skin mean and standard deviation are moved to the input
    face's. The deviations are read on both faces blurred by ``DETAIL_SIGMA``·S, so that the detail the model
    adds (which the blurred input lacks) does not count as contrast to be taken away.
  * ``low-freq``: the restored face's low frequencies (Gaussian, ``LOW_SIGMA``·S) are replaced by the input
    face's, read over the skin only (normalised convolution: eyes and mouth are filled from the skin around
    them): corrects shading that changes across the face as well, keeps the model's detail.

A grey face (``is_grey``: a black-and-white photo, even stored as RGB) gets a grey restored face (``to_grey``),
whatever the method but ``none``. The skin is ``blend.skin_region`` where the photo shows it;
``blend.prepare_faces`` applies the result inside the face's landmark outline only (the skin says nothing about how
the model changed the hair and background).
"""
from __future__ import annotations

import cv2
import numpy as np

COLOR_MATCHES = ("none", "mean-std", "low-freq")
DEFAULT_COLOR_MATCH = "mean-std"  # bench/RESULTS.md, "Seams and colour shift (issue 27)"
DETAIL_SIGMA = 1 / 64  # of the face side: what mean-std's deviations ignore (2 px on a 128 face)
LOW_SIGMA = 1 / 16     # of the face side: the scale low-freq takes from the input (8 px on a 128 face)
MAX_GAIN = 2.0         # mean-std scales a channel's deviations by at most this (or 1/this): a flat face stays sane
MIN_PIXELS = 64        # fewer skin pixels than this: statistics are not trusted and the face is left as it is
# A crop whose channels differ by less than this on average (of 255) is a grey photo's face (a black-and-white photo
# stored as RGB; JPEG's chroma noise keeps such faces under 0.1): its restored face is made grey too, since a
# model trained on colour faces gives it a faint tint (up to ~8 levels) that the photo never had.
GREY_CHROMA = 1.0
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as dfdcore.io.images


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB float in [0, 1] (sRGB) → (H, W, 3) float32 CIELAB, L* in [0, 100] (D65, as cv2)."""
    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2Lab)


def from_lab(lab: np.ndarray) -> np.ndarray:
    """Inverse of ``to_lab``, clipped to [0, 1]."""
    return np.clip(cv2.cvtColor(np.ascontiguousarray(lab, dtype=np.float32), cv2.COLOR_Lab2RGB), 0, 1)


def _check(restored: np.ndarray, reference: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, ...]:
    restored, reference = np.asarray(restored, np.float32), np.asarray(reference, np.float32)
    region = np.asarray(region, bool)
    if restored.ndim != 3 or restored.shape[2] != 3 or restored.shape != reference.shape:
        raise ValueError(f"expected restored and reference faces of one (S, S, 3) shape, got {restored.shape} and "
                         f"{reference.shape}")
    if region.shape != restored.shape[:2]:
        raise ValueError(f"expected an (S, S) region of the face's size {restored.shape[:2]}, got {region.shape}")
    return restored, reference, region


def match_mean_std(restored: np.ndarray, reference: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``restored`` with its Lab mean and deviation over ``region`` moved to ``reference``'s (module docstring).

    Args:
        restored, reference: (S, S, 3) RGB float in [0, 1]: the model's face and the face it was given.
        region: (S, S) bool, the pixels whose statistics count (skin the input really shows).

    Returns:
        (S, S, 3) float32 RGB in [0, 1]; the whole face is transformed, not only ``region``.
    """
    restored, reference, region = _check(restored, reference, region)
    if region.sum() < MIN_PIXELS:
        return restored.copy()
    sigma = DETAIL_SIGMA * restored.shape[0]
    lab_restored, lab_reference = to_lab(restored), to_lab(reference)
    smooth_restored = cv2.GaussianBlur(lab_restored, (0, 0), sigma)[region]
    smooth_reference = cv2.GaussianBlur(lab_reference, (0, 0), sigma)[region]
    mean_restored, mean_reference = lab_restored[region].mean(0), lab_reference[region].mean(0)
    gain = np.clip(smooth_reference.std(0) / np.maximum(smooth_restored.std(0), 1e-3), 1 / MAX_GAIN, MAX_GAIN)
    return from_lab((lab_restored - mean_restored) * gain + mean_reference)


def match_low_frequency(restored: np.ndarray, reference: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``restored`` with its Lab low frequencies over ``region`` replaced by ``reference``'s (module docstring).

    Outside ``region`` (eyes, mouth, hair, the crop's edge) the correction is the skin's, spread by the same
    Gaussian, and far from any skin the skin's mean difference.

    Args and Returns: as ``match_mean_std``.
    """
    restored, reference, region = _check(restored, reference, region)
    if region.sum() < MIN_PIXELS:
        return restored.copy()
    lab_restored = to_lab(restored)
    difference = to_lab(reference) - lab_restored
    weight = region.astype(np.float32)
    mean = difference[region].mean(0)
    sigma = LOW_SIGMA * restored.shape[0]
    spread = cv2.GaussianBlur(weight, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)[..., None]
    total = cv2.GaussianBlur(difference * weight[..., None], (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    # A small prior weight on the mean difference: where little skin is near, the correction tends to the skin's
    # mean instead of dividing by almost nothing.
    prior = 0.05
    correction = (total + prior * mean) / (spread + prior)
    return from_lab(lab_restored + correction)


def match_colour(restored: np.ndarray, reference: np.ndarray, region: np.ndarray, method: str) -> np.ndarray:
    """Dispatch on ``method`` (one of ``COLOR_MATCHES``); ``none`` returns a float32 copy of ``restored``."""
    if method == "none":
        restored, _, _ = _check(restored, reference, region)
        return restored.copy()
    if method == "mean-std":
        return match_mean_std(restored, reference, region)
    if method == "low-freq":
        return match_low_frequency(restored, reference, region)
    raise ValueError(f"colour match must be one of {COLOR_MATCHES}, got {method!r}")


def is_grey(face: np.ndarray) -> bool:
    """Whether an (S, S, 3) RGB face (uint8, or float in [0, 255]) has no colour: mean over its pixels of the largest
    difference between two channels < ``GREY_CHROMA``."""
    pixels = np.asarray(face, np.float32)
    return float((pixels.max(axis=2) - pixels.min(axis=2)).mean()) < GREY_CHROMA


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB → the same shape, each channel its BT.601 luma (float32)."""
    luma = np.asarray(rgb, np.float32) @ _LUMA
    return np.repeat(luma[..., None], 3, axis=2)
