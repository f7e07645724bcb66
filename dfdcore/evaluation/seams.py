"""How visible a pasted-back face is: the seam along its blend weight's border and the colour shift of its skin
(bench/bench_seams.py, tests/test_blend.py).

* seam ratio: mean |∇L*| (Sobel on CIELAB lightness) of the output on the band where the face's own blend weight is
  in ``BAND``, divided by the same of the reference (the input, upscaled to the output's size) on the same band.
  1: the paste-back added no gradient energy along its border beyond what the photo has there; a seam (a colour
  or sharpness step where the face meets the photo) raises it. Normalising by the photo's own energy at the same
  pixels makes a band over hair and one over a cheek comparable.
* border step: mean CIEDE2000 between the output and the reference, both blurred (Gaussian, σ = the face's side
  in output pixels / 64), on the same band: the colour and lightness step the mask has to hide there, without
  the detail; where the border crosses hair or background that the model redrew, it is large.
* ΔE00: mean CIEDE2000 (scikit-image) between reference and output over the face's skin (``blend.skin_region``:
  the jaw-and-brows hull without eyes and mouth), which includes the detail a model adds; ``delta_e00_of_means``
  compares only the skin's mean colours.
"""
from __future__ import annotations

import cv2
import numpy as np

from dfdcore.face.blend import landmark_mask, skin_region, usable_region
from dfdcore.face.colour import to_lab
from dfdcore.face.paste import face_to_image_matrix, warp_weight

BAND = (0.4, 0.6)


def lightness_gradient(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1] → (H, W) float32 |∇L*| per pixel (3×3 Sobel)."""
    lightness = to_lab(np.clip(rgb, 0, 1))[..., 0]
    return np.hypot(cv2.Sobel(lightness, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(lightness, cv2.CV_32F, 0, 1, ksize=3))


def seam_ratio(output: np.ndarray, reference: np.ndarray, weight: np.ndarray, band: tuple[float, float] = BAND
               ) -> tuple[float, float]:
    """(seam ratio, the output's mean |∇L*| on the band) of one face (module docstring).

    Args:
        output, reference: (H, W, 3) float RGB in [0, 1], the same region of the output and of the upscaled input.
        weight: (H, W) the face's own blend weight there (``paste.warp_weight``).
    """
    if output.shape != reference.shape or output.shape[:2] != weight.shape:
        raise ValueError(f"expected output, reference (H, W, 3) and weight (H, W) of one size, got {output.shape}, "
                         f"{reference.shape}, {weight.shape}")
    on_band = (weight >= band[0]) & (weight <= band[1])
    if not on_band.any():
        raise ValueError(f"no pixel of the weight lies in {band}: the face is too small or not in this region")
    energy = float(lightness_gradient(output)[on_band].mean())
    return energy / max(float(lightness_gradient(reference)[on_band].mean()), 1e-6), energy


def border_step(output: np.ndarray, reference: np.ndarray, weight: np.ndarray, sigma: float,
                band: tuple[float, float] = BAND) -> float:
    """Mean CIEDE2000 between ``output`` and ``reference`` ((H, W, 3) float RGB in [0, 1]) blurred by ``sigma``
    pixels, on the band of the (H, W) ``weight`` (module docstring)."""
    on_band = (weight >= band[0]) & (weight <= band[1])
    blurred = [cv2.GaussianBlur(np.ascontiguousarray(image, np.float32), (0, 0), sigma)
               for image in (output, reference)]
    return delta_e00(blurred[0], blurred[1], on_band)[0]


def skin_in_image(face, face_size: int, matrix: np.ndarray, box: tuple[int, int, int, int],
                  image_size: tuple[int, int]) -> np.ndarray:
    """(y1 − y0, x1 − x0) bool: the face's skin (``blend.skin_region`` where the photo shows it) warped by the
    (2, 3) face → image ``matrix`` into the image ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    skin = (skin_region(face.landmarks68, face_size) & usable_region(face_size, matrix, image_size))
    local = np.asarray(matrix, np.float64).copy()
    local[:, 2] -= (x0, y0)
    return cv2.warpAffine(skin.astype(np.float32), local, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR) > 0.5


def delta_e00(output: np.ndarray, reference: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """(mean CIEDE2000 per pixel, CIEDE2000 of the mean Lab colours) between (H, W, 3) float RGB images in [0, 1]
    over the (H, W) bool ``region``."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    if not region.any():
        raise ValueError("the region holds no pixel")
    lab_out = rgb2lab(np.clip(output[region], 0, 1)[None].astype(np.float64))
    lab_ref = rgb2lab(np.clip(reference[region], 0, 1)[None].astype(np.float64))
    per_pixel = float(deltaE_ciede2000(lab_ref, lab_out).mean())
    return per_pixel, float(deltaE_ciede2000(lab_ref.mean(1), lab_out.mean(1))[0])


def face_metrics(face, face_size: int, output: np.ndarray, reference: np.ndarray, scale: int, mask: str
                 ) -> dict | None:
    """Seam ratio, band energy, ΔE00 and ΔE00 of means of one pasted face (an ``AlignedFace`` of side
    ``face_size``, pasted with ``mask`` into ``output`` at ``scale``), or None when the face lies outside the
    image or shows too little band or skin (fewer than 16 pixels)."""
    matrix = face_to_image_matrix(face.matrix, scale)
    image_size = output.shape[:2]
    shape = landmark_mask(face.landmarks68, face_size) if mask == "landmarks" else None
    placed = warp_weight(face_size, matrix, image_size, shape)
    if placed is None:
        return None
    (x0, y0, x1, y1), weight = placed
    out, ref = output[y0:y1, x0:x1], reference[y0:y1, x0:x1]
    region = skin_in_image(face, face_size, matrix, (x0, y0, x1, y1), image_size)
    band = (weight >= BAND[0]) & (weight <= BAND[1])
    if region.sum() < 16 or band.sum() < 16:
        return None
    seam, energy = seam_ratio(out, ref, weight)
    step = border_step(out, ref, weight, face_size * np.sqrt(abs(np.linalg.det(matrix[:, :2]))) / 64)
    delta, of_means = delta_e00(out, ref, region)
    return {"seam": seam, "border_step": step, "band_energy": energy, "delta_e00": delta,
            "delta_e00_of_means": of_means,
            "band_pixels": int(band.sum()), "skin_pixels": int(region.sum())}
