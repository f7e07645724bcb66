"""Synthetic degradation model: an aligned HQ face → a (low-quality input, ground-truth target) training pair.

The "reference" preset is the official DFDNet data loader's behaviour (reference §5.1):

    C = ColorJitter(HQ)                                        brightness, contrast, saturation 0.3; hue 0
    A = UpSample_S(JPEG_q(Noise_σ(DownSample_r(Blur(C)))))     each step with its own probability

Blur (p 0.9) is Gaussian (p 0.65; size 3–35 odd, σ 0.3–2.0 by 0.1) or motion; downsample (p 0.95) by r ∈ {2.0, 2.1,
…, 10.0} to ⌊S/r⌋ px, PIL bicubic; noise (p 0.9) σ ∈ {1, …, 10} on the 0–255 scale; JPEG (p 0.6) quality 40–80; then
bicubic back to S×S. The official motion kernels are 32 fixed files we do not have: ours come from random camera
trajectories, in the spirit of Boracchi & Foi, "Modeling the performance of image restoration from motion blur"
(IEEE TIP 2012).

The "gfpgan" preset uses the values of GFPGAN v1's public training options: always a 41-px Gaussian blur (isotropic
or anisotropic, σ ∈ [0.1, 10]), downsample r ∈ [0.8, 8] (bilinear), noise σ ∈ [0, 20], JPEG q ∈ [60, 100]; a
per-channel colour shift of up to ±20/255 on the target (p 0.3) and greyscale of both images (p 0.01).

A sample's randomness all comes from ``np.random.default_rng([seed, index])``: it depends on (config, seed, index)
only, never on which worker made it or in what order.
"""
from __future__ import annotations

import cmath
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

PRESETS: tuple[str, ...] = ("reference", "gfpgan", "moderate", "mild", "blind")
MIN_SIZE = 16  # below this a 10× downsample leaves under 2 px
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's convert("L") and torchvision's rgb_to_grayscale
_PROBABILITIES = ("jitter_p", "shift_p", "gray_p", "blur_p", "gaussian_p", "anisotropic_p", "downsample_p", "noise_p",
                  "jpeg_p")


@dataclass(frozen=True)
class DegradationConfig:
    """Every probability and range of the model; the defaults are the reference preset (reference §5.1).

    Ranges are (lo, hi), inclusive. A ``*_step`` is the grid the value is drawn from uniformly (lo, lo + step, …),
    None for a continuous uniform draw. Noise σ and the colour shift are on the 0–255 scale.
    """
    name: str = "reference"
    jitter_p: float = 1.0                 # ColorJitter of the target
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    shift_p: float = 0.0                  # per-channel colour shift of the target, uniform in ±shift
    shift: float = 0.0
    gray_p: float = 0.0                   # both images to greyscale, last
    blur_p: float = 0.9
    gaussian_p: float = 0.65              # share of Gaussian among blurred samples; the rest get motion blur
    gaussian_sizes: tuple[int, ...] = tuple(range(3, 36, 2))
    sigma_range: tuple[float, float] = (0.3, 2.0)
    sigma_step: float | None = 0.1
    anisotropic_p: float = 0.0            # share of anisotropic kernels among Gaussian ones
    motion_sizes: tuple[int, ...] = tuple(range(7, 36, 2))
    downsample_p: float = 0.95
    scale_range: tuple[float, float] = (2.0, 10.0)
    scale_step: float | None = 0.1
    resample: str = "bicubic"             # for both the downsample and the upsample back to S
    noise_p: float = 0.9
    noise_range: tuple[float, float] = (1.0, 10.0)
    noise_step: float | None = 1.0
    jpeg_p: float = 0.6
    jpeg_range: tuple[int, int] = (40, 80)

    def __post_init__(self):
        bad = {k: getattr(self, k) for k in _PROBABILITIES if not 0.0 <= getattr(self, k) <= 1.0}
        if bad:
            raise ValueError(f"probabilities must lie in [0, 1], got {bad}")
        for key in ("sigma_range", "scale_range", "noise_range", "jpeg_range"):
            lo, hi = getattr(self, key)
            if not 0 <= lo <= hi:
                raise ValueError(f"{key} must be (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}")
        if self.scale_range[0] <= 0 or self.sigma_range[0] <= 0 or not 1 <= self.jpeg_range[0] <= self.jpeg_range[1] <= 100:
            raise ValueError("scale and sigma must be > 0 and JPEG quality within 1–100")
        sizes = (*self.gaussian_sizes, *self.motion_sizes)
        if not self.gaussian_sizes or not self.motion_sizes or any(k < 3 or k % 2 == 0 for k in sizes):
            raise ValueError(f"kernel sizes must be odd and >= 3, got {self.gaussian_sizes} and {self.motion_sizes}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {tuple(_RESAMPLE)}, got {self.resample!r}")

    @classmethod
    def preset(cls, name: str = "reference") -> DegradationConfig:
        """The named preset: "reference" (the official loader), "gfpgan" (GFPGAN v1 training options),
        "moderate" (the reference's steps with downsampling limited to ×2–4: faces a small network can restore),
        "mild" (×1–2, light blur, noise and JPEG: a test of doing no harm) or "blind" (the reference's steps
        from ×1 to ×8, each step skipped more often: training that sees mild inputs too)."""
        if name == "reference":
            return cls()
        if name == "moderate":
            return cls(name="moderate", scale_range=(2.0, 4.0))
        if name == "gfpgan":
            return cls(name="gfpgan", jitter_p=0.0, shift_p=0.3, shift=20.0, gray_p=0.01, blur_p=1.0, gaussian_p=1.0,
                       gaussian_sizes=(41,), sigma_range=(0.1, 10.0), sigma_step=None, anisotropic_p=0.5,
                       downsample_p=1.0, scale_range=(0.8, 8.0), scale_step=None, resample="bilinear", noise_p=1.0,
                       noise_range=(0.0, 20.0), noise_step=None, jpeg_p=1.0, jpeg_range=(60, 100))
        if name == "mild":  # a good photo shrunk to a thumbnail: what a blind restorer must not make worse (always a
            # JPEG, so that no pair equals its original: PSNR stays finite)
            return cls(name="mild", jitter_p=0.0, blur_p=0.5, gaussian_p=1.0, gaussian_sizes=(3, 5, 7, 9),
                       sigma_range=(0.3, 1.0), downsample_p=1.0, scale_range=(1.0, 2.0), noise_p=0.5,
                       noise_range=(1.0, 4.0), jpeg_p=1.0, jpeg_range=(80, 95))
        if name == "blind":  # the reference's steps from none at all to its worst: mild inputs are seen in training
            return cls(name="blind", blur_p=0.7, sigma_range=(0.2, 2.0), downsample_p=0.95, scale_range=(1.0, 8.0),
                       noise_p=0.7, noise_range=(0.0, 10.0), jpeg_p=0.6, jpeg_range=(40, 95))
        raise ValueError(f"unknown degradation preset {name!r}; expected one of {PRESETS}")


@dataclass(frozen=True)
class Degraded:
    """One training pair: ``lq`` and ``target`` are (S, S, 3) uint8 RGB; ``params`` (JSON-serialisable) records the
    steps applied, a skipped step as None."""
    lq: np.ndarray
    target: np.ndarray
    params: dict


def _check_rgb(img, what: str = "image") -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        got = f"array of shape {img.shape}, dtype {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"{what}: expected an (H, W, 3) uint8 RGB array, got {got}")
    return np.ascontiguousarray(img)


def _gray(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) → (H, W) float64 luma."""
    return img @ _LUMA


def _resize(img: np.ndarray, h: int, w: int, resample: str) -> np.ndarray:
    return np.array(Image.fromarray(img).resize((w, h), _RESAMPLE[resample]))


def gaussian_blur(img: np.ndarray, kernel_size: int, sigma: float) -> np.ndarray:
    """(H, W, 3) uint8 → same, blurred by OpenCV's isotropic Gaussian (reflect-101 borders)."""
    return cv2.GaussianBlur(_check_rgb(img), (kernel_size, kernel_size), sigma)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, angle: float) -> np.ndarray:
    """(size, size) float64 Gaussian with axis σs (sigma_x, sigma_y) rotated by ``angle`` radians, sum 1."""
    half = (size - 1) / 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    u, v = math.cos(angle) * x + math.sin(angle) * y, -math.sin(angle) * x + math.cos(angle) * y
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return k / k.sum()


def motion_kernel(size: int, rng: np.random.Generator, *, points: int = 2000) -> np.ndarray:
    """(size, size) float64 motion-blur kernel from a random camera trajectory; size odd >= 3; sum 1, >= 0.

    The camera moves at constant speed with inertia: its heading persists, perturbed by Gaussian shake, bent back
    towards the start by a centripetal pull (hand shake oscillates rather than drifts) and, now and then, nearly
    reversed by an impulsive jerk. The path, sampled at ``points`` sub-pixel positions, is scaled to fill 60–100 %
    of the kernel and splatted bilinearly; its centroid goes to the kernel centre, and as bilinear splatting keeps
    first moments that is also the kernel's centre of mass.
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"motion kernel size must be odd and >= 3, got {size}")
    speed = 1.0 / (points - 1)  # path length 1: only the shape matters, the scale is set below
    shake = math.sqrt(math.exp(rng.uniform(math.log(0.2), math.log(40))) / points)  # per step; 0.2–40 rad² of heading variance in all
    pull = rng.uniform(0.0, 40.0) / points  # per step; up to ~8 rad of total turning for a 0.2-wide path
    jump_rate = rng.uniform(0.0, 3.0) / points
    # drawn up front so the loop is plain Python arithmetic (points is in the thousands, arrays would be slower)
    noise = (shake * (rng.standard_normal(points) + 1j * rng.standard_normal(points))).tolist()
    jumps = (rng.random(points) < jump_rate).tolist()
    turns = rng.uniform(math.pi - 0.5, math.pi + 0.5, points).tolist()
    v, x = cmath.exp(1j * rng.uniform(0.0, 2 * math.pi)) * speed, 0j
    path = [0j] * points
    for t in range(1, points):
        if jumps[t]:
            v *= cmath.exp(1j * turns[t])
        v += speed * (noise[t] - pull * x)
        v *= speed / abs(v)
        x += v
        path[t] = x
    xy = np.array(path)
    xy -= xy.mean()
    half = (size - 1) / 2
    reach = max(np.abs(xy.real).max(), np.abs(xy.imag).max())
    # 0.5 px margin keeps every bilinear neighbour inside the kernel
    scale = (half - 0.5) * rng.uniform(0.6, 1.0) / reach if reach > 0 else 0.0
    col, row = xy.real * scale + half, xy.imag * scale + half
    r0, c0 = np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)
    fr, fc = row - r0, col - c0
    idx = np.concatenate([r0 * size + c0, r0 * size + c0 + 1, (r0 + 1) * size + c0, (r0 + 1) * size + c0 + 1])
    w = np.concatenate([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc])
    k = np.bincount(idx, weights=w, minlength=size * size).reshape(size, size)
    return k / k.sum()


def motion_blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 filtered by a (k, k) kernel with OpenCV filter2D (correlation: the kernels are random, so
    their orientation carries no meaning); used for anisotropic Gaussian kernels too."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2:
        raise ValueError(f"kernel: expected a 2-D array, got shape {kernel.shape}")
    return cv2.filter2D(_check_rgb(img), -1, kernel)


def downsample(img: np.ndarray, factor: float, resample: str = "bicubic") -> np.ndarray:
    """(H, W, 3) uint8 → (⌊H/r⌋, ⌊W/r⌋, 3) by PIL resampling; a factor below 1 enlarges."""
    img = _check_rgb(img)
    if factor <= 0:
        raise ValueError(f"downsample factor must be > 0, got {factor}")
    # the epsilon keeps decimal ratios exact: 66 / 2.2 is 29.999… in binary floating point, ⌊66/2.2⌋ is 30
    h, w = (math.floor(n / factor + 1e-9) for n in img.shape[:2])
    if min(h, w) < 1:
        raise ValueError(f"downsampling {img.shape[:2]} by {factor} leaves no pixels")
    return _resize(img, h, w, resample)


def upsample(img: np.ndarray, size: int, resample: str = "bicubic") -> np.ndarray:
    """(h, w, 3) uint8 → (size, size, 3) by PIL resampling."""
    return _resize(_check_rgb(img), size, size, resample)


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 + i.i.d. N(0, σ²) per pixel and channel (0–255 scale), clamped and rounded to uint8."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    noisy = _check_rgb(img) + rng.normal(0.0, sigma, img.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 through an OpenCV JPEG round trip at ``quality``; the channel order goes through as is."""
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must lie in 0–100, got {quality}")
    ok, buf = cv2.imencode(".jpg", _check_rgb(img), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode the JPEG")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def color_jitter(img: np.ndarray, brightness: float, contrast: float, saturation: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """torchvision ColorJitter(brightness, contrast, saturation, hue=0) on an (H, W, 3) uint8 RGB image.

    Each factor f is uniform in [max(0, 1 − x), 1 + x] (x = 0 leaves that transform out, factor None); the transforms
    run in a random order: brightness scales the pixels, contrast blends with the mean grey level, saturation with
    the grey image. Returns (image, {"brightness": f, "contrast": f, "saturation": f, "order": [names]}).
    """
    out = _check_rgb(img).astype(np.float64)
    factors = {name: round(float(rng.uniform(max(0.0, 1 - x), 1 + x)), 4) if x > 0 else None
               for name, x in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation))}
    order = [name for name in np.array(list(factors))[rng.permutation(3)].tolist() if factors[name] is not None]
    for name in order:
        f = factors[name]
        base = 0.0 if name == "brightness" else _gray(out).mean() if name == "contrast" else _gray(out)[..., None]
        # each step yields an 8-bit image, as PIL's ImageEnhance does inside torchvision's ColorJitter
        out = np.clip(np.rint(f * out + (1 - f) * base), 0, 255)
    return out.astype(np.uint8), {**factors, "order": order}


def color_shift(img: np.ndarray, shift) -> np.ndarray:
    """(H, W, 3) uint8 + a per-channel offset (3 values, 0–255 scale), clamped and rounded."""
    return np.clip(np.rint(_check_rgb(img) + np.asarray(shift, dtype=np.float64)), 0, 255).astype(np.uint8)


def to_gray(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W, 3) uint8 with all three channels the luma."""
    g = np.clip(np.rint(_gray(_check_rgb(img))), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _draw(rng: np.random.Generator, bounds: tuple[float, float], step: float | None):
    """One value uniform on [lo, hi]: on the grid lo, lo + step, … when step is given, else continuous (4 decimals,
    and the rounded value is the one used, so params reproduce the sample)."""
    lo, hi = bounds
    if step is None:
        return round(float(rng.uniform(lo, hi)), 4)
    value = round(lo + step * int(rng.integers(0, round((hi - lo) / step) + 1)), 6)
    return int(value) if float(step).is_integer() and float(lo).is_integer() else value


def _random_blur(img: np.ndarray, cfg: DegradationConfig, rng: np.random.Generator, params: dict) -> np.ndarray:
    if rng.random() < cfg.gaussian_p:
        k = int(rng.choice(cfg.gaussian_sizes))
        if rng.random() < cfg.anisotropic_p:
            sx, sy = _draw(rng, cfg.sigma_range, cfg.sigma_step), _draw(rng, cfg.sigma_range, cfg.sigma_step)
            angle = round(float(rng.uniform(-math.pi, math.pi)), 4)
            params.update(blur="anisotropic", kernel_size=k, sigma_x=sx, sigma_y=sy, angle=angle)
            return motion_blur(img, gaussian_kernel(k, sx, sy, angle))
        sigma = _draw(rng, cfg.sigma_range, cfg.sigma_step)
        params.update(blur="gaussian", kernel_size=k, sigma=sigma)
        return gaussian_blur(img, k, sigma)
    k = int(rng.choice(cfg.motion_sizes))
    params.update(blur="motion", kernel_size=k)
    return motion_blur(img, motion_kernel(k, rng))


def degrade(image: np.ndarray, config: DegradationConfig | None = None, *, seed: int, index: int) -> Degraded:
    """Degrade one aligned (S, S, 3) uint8 RGB face (S >= 16) into a training pair; ``image`` is left unchanged.

    Every probability is drawn for every sample, in a fixed order, so the steps are independent of one another.
    """
    cfg = DegradationConfig() if config is None else config
    img = _check_rgb(image, "degrade")
    if img.shape[0] != img.shape[1] or img.shape[0] < MIN_SIZE:
        raise ValueError(f"degrade: expected a square face of at least {MIN_SIZE} px, got shape {img.shape}")
    size = img.shape[0]
    rng = np.random.default_rng([seed, index])
    params = {"preset": cfg.name, "jitter": None, "shift": None, "blur": None, "scale": None, "noise_sigma": None,
              "jpeg_quality": None, "gray": False}

    target = img.copy()  # never hand back (a view of) the caller's array
    if rng.random() < cfg.jitter_p:
        target, params["jitter"] = color_jitter(target, cfg.brightness, cfg.contrast, cfg.saturation, rng)
    if rng.random() < cfg.shift_p:
        params["shift"] = [round(float(s), 3) for s in rng.uniform(-cfg.shift, cfg.shift, 3)]
        target = color_shift(target, params["shift"])

    lq = target
    if rng.random() < cfg.blur_p:
        lq = _random_blur(lq, cfg, rng, params)
    if rng.random() < cfg.downsample_p:
        params["scale"] = _draw(rng, cfg.scale_range, cfg.scale_step)
        lq = downsample(lq, params["scale"], cfg.resample)
    if rng.random() < cfg.noise_p:
        params["noise_sigma"] = _draw(rng, cfg.noise_range, cfg.noise_step)
        lq = add_noise(lq, params["noise_sigma"], rng)
    if rng.random() < cfg.jpeg_p:
        params["jpeg_quality"] = int(rng.integers(cfg.jpeg_range[0], cfg.jpeg_range[1] + 1))
        lq = jpeg(lq, params["jpeg_quality"])
    lq = upsample(lq, size, cfg.resample)
    if rng.random() < cfg.gray_p:
        lq, target = to_gray(lq), to_gray(target)
        params["gray"] = True
    return Degraded(lq=lq, target=target, params=params)


def degrade_photo(rgb: np.ndarray, factor: int, *, blur_sigma: float = 1.0, noise_sigma: float = 4.0,
                  jpeg_quality: int = 60, seed: int = 0) -> np.ndarray:
    """A whole (H, W, 3) uint8 photograph → its low-quality copy (⌊H/factor⌋, ⌊W/factor⌋, 3): Gaussian blur,
    bicubic downsampling, Gaussian noise (0–255 scale) and a JPEG round trip — the reference model's steps at fixed
    strengths, for showing restoration on photographs whose original is known."""
    img = _check_rgb(rgb, "degrade_photo")
    if factor < 1 or min(img.shape[:2]) // factor < MIN_SIZE:
        raise ValueError(f"degrade_photo: factor must be >= 1 and leave at least {MIN_SIZE} px, got {factor} for "
                         f"shape {img.shape}")
    size = 2 * math.ceil(3 * blur_sigma) + 1
    low = downsample(gaussian_blur(img, size, blur_sigma) if blur_sigma > 0 else img, factor)
    return jpeg(add_noise(low, noise_sigma, np.random.default_rng(seed)), jpeg_quality)
