"""NIQE, a no-reference naturalness score of a face crop — with **dfd's own fit, not the published NIQE parameters**.

The method is Mittal, Soundararajan & Bovik, "Making a 'Completely Blind' Image Quality Analyzer" (IEEE SPL 2013),
written here from the paper's description alone. The grey image is normalised into MSCN coefficients
(I − μ) / (σ + 1), μ and σ the local mean and deviation under a 7×7 Gaussian window of σ 7/6. Per patch and scale,
18 features: a generalised Gaussian fit of the MSCN (shape, variance) and an asymmetric generalised Gaussian fit of
each of the four products of neighbouring MSCN (horizontal, vertical, both diagonals: shape, mean, left and right
variance). The second scale is the image halved (2×2 means), with half-size patches on the same grid: 36 features
per patch. A pristine model is the multivariate Gaussian (mean, covariance) of the features of the sharpest patches
of pristine images; an image's score is the distance between it and the Gaussian of all the image's patches,
sqrt((ν1 − ν2)ᵀ ((Σ1 + Σ2) / 2)⁺ (ν1 − ν2)). Lower is more natural.

dfd's faces are 128-px aligned crops, where the paper's 96-px patches leave one patch per face. dfd uses 32-px
patches: 16 per face (a 4 × 4 grid, so eyes, nose, mouth and cheeks fall in different patches), and the half scale's
16-px patches still give each shape fit 240 products (a 16-px patch leaves 56). Tried on 40 held-out pd-faces faces
and the bundled portraits, 16, 32 and 64 px all scored every blurred, noisy and JPEG-10 copy worse than the face;
64 px (4 patches a face: a test covariance of rank 3) put the portraits far from the pd-faces faces (6.9 against
4.1), 16 px separated JPEG the least (×1.5 the pristine score, against ×2.0 with 32 px). The default model (``default_niqe_model``) is fitted by ``bench/fit_niqe.py`` on pd-faces training faces; its figures
are comparable only with other figures of the same model, never with published NIQE values.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from scipy.special import gamma

DEFAULT_PATCH = 32
DEFAULT_SHARPNESS = 0.75  # pristine fit: patches at least this fraction of the image's sharpest patch
DEFAULT_MODEL_FILE = "niqe-dfd-pd-faces-128.npz"
WINDOW_SIGMA = 7 / 6
WINDOW_SIZE = 7  # ±3 pixels: the window to 2.6σ
STABILITY = 1.0  # the constant added to σ (grey levels 0–255), so flat regions do not divide by zero
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, full range: Y in [0, 255]


@dataclass(frozen=True, eq=False)
class NiqeModel:
    """A multivariate Gaussian of patch features: ``mean`` (36,), ``cov`` (36, 36) float64, the ``patch`` size it was
    fitted with (pixels, full scale), and where it came from (``source``, ``images``, ``patches``)."""

    mean: np.ndarray
    cov: np.ndarray
    patch: int
    source: str
    images: int = 0
    patches: int = 0

    def __post_init__(self) -> None:
        if self.mean.shape != (36,) or self.cov.shape != (36, 36):
            raise ValueError(f"a NIQE model needs mean (36,) and cov (36, 36), got {self.mean.shape} and "
                             f"{self.cov.shape}")
        self.mean.setflags(write=False)  # shared by default_niqe_model's cache: never changed in place
        self.cov.setflags(write=False)

    def save(self, path: str | Path) -> None:
        """Write the model as a .npz (no pickles)."""
        with open(path, "wb") as out:
            np.savez(out, mean=self.mean, cov=self.cov, patch=self.patch, source=np.str_(self.source),
                     images=self.images, patches=self.patches)

    @classmethod
    def load(cls, path: str | Path | BinaryIO) -> NiqeModel:
        """A model written by ``save`` (a path or an open binary file)."""
        with np.load(path, allow_pickle=False) as data:
            return cls(np.array(data["mean"], np.float64), np.array(data["cov"], np.float64), int(data["patch"]),
                       str(data["source"]), int(data["images"]), int(data["patches"]))


@functools.cache
def default_niqe_model() -> NiqeModel:
    """dfd's fit on pd-faces training faces (128 px, 32-px patches), shipped in dfdcore/assets — not the published
    NIQE parameters."""
    return NiqeModel.load(io.BytesIO((files("dfdcore") / "assets" / DEFAULT_MODEL_FILE).read_bytes()))


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 RGB → (H, W) float64 luma in [0, 255]."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or not (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError("NIQE expects an (H, W) or (H, W, 3) uint8 image, got "
                         + (f"shape {image.shape} dtype {image.dtype}" if isinstance(image, np.ndarray)
                            else type(image).__name__))
    return image.astype(np.float64) if image.ndim == 2 else image.astype(np.float64) @ _LUMA


def mscn(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float64 grey → (MSCN coefficients, local deviation σ), both (H, W) float64; a flat image gives zeros."""
    blur = functools.partial(cv2.GaussianBlur, ksize=(WINDOW_SIZE, WINDOW_SIZE), sigmaX=WINDOW_SIGMA,
                             sigmaY=WINDOW_SIGMA, borderType=cv2.BORDER_REFLECT)
    mu = blur(gray)
    sigma = np.sqrt(np.abs(blur(gray * gray) - mu * mu))
    return (gray - mu) / (sigma + STABILITY), sigma


@functools.cache
def _shape_table() -> tuple[np.ndarray, np.ndarray]:
    """Shapes α on a grid of 0.2 … 10 and their moment ratio ρ(α) = Γ(2/α)² / (Γ(1/α) Γ(3/α)), increasing."""
    alpha = np.arange(0.2, 10.0 + 1e-9, 0.001)
    rho = gamma(2 / alpha) ** 2 / (gamma(1 / alpha) * gamma(3 / alpha))
    return alpha, rho


def _shape(ratio: float) -> float:
    """The GGD shape whose (E|x|)² / E[x²] is ``ratio`` (interpolated on the grid, clamped to 0.2 … 10)."""
    alpha, rho = _shape_table()
    return float(np.interp(ratio, rho, alpha))


def fit_ggd(x: np.ndarray) -> tuple[float, float]:
    """Zero-mean generalised Gaussian of the samples ``x`` (any shape) by moment matching → (shape, variance)."""
    x = np.asarray(x, np.float64).ravel()
    variance = float(np.mean(x * x))
    ratio = float(np.mean(np.abs(x))) ** 2 / variance if variance > 0 else 0.0
    return _shape(ratio), variance


def fit_aggd(x: np.ndarray) -> tuple[float, float, float, float]:
    """Asymmetric generalised Gaussian of ``x`` by moment matching → (shape, mean, left variance, right variance)."""
    x = np.asarray(x, np.float64).ravel()
    left, right = x[x < 0], x[x > 0]
    var_l = float(np.mean(left * left)) if left.size else 0.0
    var_r = float(np.mean(right * right)) if right.size else 0.0
    second = float(np.mean(x * x))
    if second == 0:
        return _shape(0.0), 0.0, 0.0, 0.0
    s_l, s_r = np.sqrt(var_l), np.sqrt(var_r)
    # r̂ (γ³ + 1)(γ + 1) / (γ² + 1)² with γ = s_l / s_r, written without dividing by s_r (one side may be empty)
    ratio = float(np.mean(np.abs(x))) ** 2 / second * (s_l ** 3 + s_r ** 3) * (s_l + s_r) / (var_l + var_r) ** 2
    shape = _shape(ratio)
    scale = np.sqrt(gamma(1 / shape) / gamma(3 / shape))
    mean = (s_r - s_l) * scale * gamma(2 / shape) / gamma(1 / shape)
    return shape, float(mean), var_l, var_r


def block_features(block: np.ndarray) -> np.ndarray:
    """(h, w) float64 MSCN of one patch → (18,) float64: GGD (shape, variance) of the MSCN, then the AGGD (shape,
    mean, left variance, right variance) of its horizontal, vertical, main- and anti-diagonal neighbour products."""
    products = (block[:, :-1] * block[:, 1:], block[:-1, :] * block[1:, :],
                block[:-1, :-1] * block[1:, 1:], block[:-1, 1:] * block[1:, :-1])
    return np.array([*fit_ggd(block), *(v for p in products for v in fit_aggd(p))])


def _grid(rows: int, cols: int, size: int) -> list[tuple[slice, slice]]:
    return [(slice(r * size, (r + 1) * size), slice(c * size, (c + 1) * size))
            for r in range(rows) for c in range(cols)]


def _check_patch(gray: np.ndarray, patch: int, min_patches: int = 1) -> tuple[int, int]:
    if gray.ndim != 2:
        raise ValueError(f"expected an (H, W) grey image, got shape {gray.shape}")
    if patch < 8 or patch % 2:
        raise ValueError(f"the patch size must be even and at least 8, got {patch}")
    rows, cols = gray.shape[0] // patch, gray.shape[1] // patch
    if rows * cols < min_patches:
        side = f"{patch}×{2 * patch} (or {2 * patch}×{patch})" if min_patches == 2 else f"{patch}×{patch}"
        raise ValueError(f"NIQE with {patch}-px patches needs an image of at least {side} pixels "
                         f"({min_patches} patch{'es' if min_patches > 1 else ''}), got {gray.shape[0]}×{gray.shape[1]}")
    return rows, cols


def patch_features(gray: np.ndarray, patch: int = DEFAULT_PATCH, *, min_patches: int = 1
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float64 grey in [0, 255] → (features (N, 36) float64, sharpness (N,) float64) of its N = ⌊H/patch⌋ ·
    ⌊W/patch⌋ patches (row-major from the top-left corner); sharpness is the patch's sum of the local deviation σ."""
    rows, cols = _check_patch(gray, patch, min_patches)
    coefficients, sigma = mscn(gray)
    half = cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2), interpolation=cv2.INTER_AREA)
    coefficients_half, _ = mscn(half)
    features = np.array([np.concatenate([block_features(coefficients[full]), block_features(coefficients_half[small])])
                         for full, small in zip(_grid(rows, cols, patch), _grid(rows, cols, patch // 2))])
    sharpness = np.array([sigma[full].sum() for full in _grid(rows, cols, patch)])
    return features, sharpness


def fit_niqe(images: Iterable[np.ndarray], patch: int = DEFAULT_PATCH, *, sharpness: float = DEFAULT_SHARPNESS,
             source: str = "") -> NiqeModel:
    """A pristine model from (H, W) / (H, W, 3) uint8 images: the features of each image's patches at least
    ``sharpness`` × its sharpest patch's sharpness → their mean and covariance. dfd's fit, not the published one."""
    selected, count = [], 0
    for image in images:
        features, sharp = patch_features(to_gray(image), patch)
        selected.append(features[sharp >= sharpness * sharp.max()] if sharp.max() > 0 else features[:0])
        count += 1
    features = np.concatenate(selected) if selected else np.empty((0, 36))
    if len(features) < 2:
        raise ValueError(f"a NIQE fit needs at least 2 sharp patches, got {len(features)} from {count} images")
    return NiqeModel(features.mean(axis=0), np.cov(features, rowvar=False), patch, source, count, len(features))


def niqe_score(image: np.ndarray, model: NiqeModel | None = None) -> float:
    """NIQE of an (H, W) or (H, W, 3) uint8 RGB image against ``model`` (default: dfd's pd-faces fit) → float, lower
    is more natural. The image needs at least two of the model's patches."""
    model = model or default_niqe_model()
    features, _ = patch_features(to_gray(image), model.patch, min_patches=2)
    difference = model.mean - features.mean(axis=0)
    pooled = (model.cov + np.cov(features, rowvar=False)) / 2
    return float(np.sqrt(max(difference @ np.linalg.pinv(pooled, hermitian=True) @ difference, 0.0)))
