"""Image-quality metrics for restored aligned faces against their ground truth.

Pixel metrics (PSNR, SSIM, on RGB or on the BT.601 luma plane) are computed in torch, batched, so an evaluation can
run them on a GPU; they equal scikit-image's ``peak_signal_noise_ratio`` / ``structural_similarity`` (Gaussian
window, σ = 1.5, population covariance). Perceptual and face metrics: LPIPS (only with its backbone weights on disk,
never downloaded), identity distance (dlib's face-recognition ResNet) and 68-landmark distance (dlib).

Per-image functions take (H, W, 3) uint8 RGB images; ``*_batch`` functions take (B, 3, H, W) float tensors with
values in [0, 255].
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings
from dataclasses import dataclass, field

import dlib
import numpy as np
import torch
import torch.nn.functional as F

from dfdcore.evaluation.dlib_resnet import face_embeddings
from dfdcore.face.detect import detect_faces, landmarks
from dfdcore.face.models import face_recognizer, shape_predictor

DATA_RANGE = 255.0

# ITU-R BT.601 luma for RGB in [0, 1] → Y in [16, 235] (the row scikit-image's rgb2ycbcr uses).
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0

# SSIM constants of Wang et al. (2004) with the Gaussian window scikit-image uses for gaussian_weights=True.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (e.g. its model weights are not on disk); never estimated instead."""


# --------------------------------------------------------------------------------------------- inputs


def _check_pair_images(a: np.ndarray, b: np.ndarray) -> None:
    for name, image in (("a", a), ("b", b)):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"{name}: expected an (H, W, 3) uint8 RGB image, got {got}")
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")


def _check_pair_batches(a: torch.Tensor, b: torch.Tensor) -> None:
    for name, batch in (("a", a), ("b", b)):
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
            got = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ValueError(f"{name}: expected a (B, 3, H, W) tensor with values in [0, 255], got {got}")
    if a.shape != b.shape:
        raise ValueError(f"batches must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def to_batch(rgb: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W, 3) uint8 RGB → (1, 3, H, W) float64 tensor in [0, 255]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(device=device, dtype=torch.float64)


def luma(batch: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 255] → (B, 1, H, W) BT.601 luma in [16, 235], as ``rgb2ycbcr(...)[..., 0]``."""
    weights = torch.tensor(_Y_WEIGHTS, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    return (batch / DATA_RANGE * weights).sum(dim=1, keepdim=True) + _Y_OFFSET


def _planes(a: torch.Tensor, b: torch.Tensor, y_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _check_pair_batches(a, b)
    # float64 throughout: the tests hold these to scikit-image's float64 results, and SSIM's variance terms
    # (E[x²] − E[x]²) lose digits in float32 at a data range of 255.
    a, b = a.to(torch.float64), b.to(torch.float64)
    return (luma(a), luma(b)) if y_channel else (a, b)


# --------------------------------------------------------------------------------------------- PSNR


def psnr_batch(a: torch.Tensor, b: torch.Tensor, y_channel: bool = False) -> torch.Tensor:
    """PSNR in dB per image: (B, 3, H, W) ×2 in [0, 255] → (B,) float64; +inf where the images are equal."""
    a, b = _planes(a, b, y_channel)
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(DATA_RANGE**2 / mse)  # mse 0 → +inf, the conventional PSNR of identical images


def psnr(a: np.ndarray, b: np.ndarray, *, y_channel: bool = False) -> float:
    """PSNR in dB of two (H, W, 3) uint8 RGB images (data range 255); +inf for identical images."""
    _check_pair_images(a, b)
    return float(psnr_batch(to_batch(a), to_batch(b), y_channel)[0])


# --------------------------------------------------------------------------------------------- SSIM


def gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    """Normalised 1-D Gaussian, (2r + 1,) float64 with r = int(truncate·σ + 0.5) as scipy's gaussian_filter."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    window = torch.exp(-0.5 * (x / sigma) ** 2)
    return window / window.sum()


def _filter_valid(planes: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of (N, C, H, W), keeping only the positions where the window lies inside.

    scikit-image filters with reflected borders and then crops (win_size − 1) / 2 pixels on each side, so the
    reflected values never reach the mean: a 'valid' convolution gives the same numbers.
    """
    channels = planes.shape[1]
    k = window.numel()
    rows = window.view(1, 1, 1, k).expand(channels, 1, 1, k)
    cols = window.view(1, 1, k, 1).expand(channels, 1, k, 1)
    return F.conv2d(F.conv2d(planes, rows, groups=channels), cols, groups=channels)


def ssim_batch(a: torch.Tensor, b: torch.Tensor, y_channel: bool = False) -> torch.Tensor:
    """Mean SSIM per image: (B, 3, H, W) ×2 in [0, 255] → (B,) float64 (mean over valid positions and channels).

    Gaussian window σ = 1.5 (11 × 11), K1 = 0.01, K2 = 0.03, population covariance: scikit-image's
    ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``.
    """
    a, b = _planes(a, b, y_channel)
    window = gaussian_window().to(a.device)
    size = window.numel()
    if min(a.shape[-2:]) < size:
        raise ValueError(f"SSIM needs images of at least {size}×{size} pixels (its Gaussian window), "
                         f"got {tuple(a.shape[-2:])}")
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    # One filtering pass over the five moment maps stacked along the batch axis.
    moments = _filter_valid(torch.cat([a, b, a * a, b * b, a * b]), window)
    mu_a, mu_b, e_aa, e_bb, e_ab = moments.chunk(5)
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov = e_ab - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def ssim(a: np.ndarray, b: np.ndarray, *, y_channel: bool = False) -> float:
    """Mean SSIM of two (H, W, 3) uint8 RGB images (data range 255); 1.0 for identical images."""
    _check_pair_images(a, b)
    return float(ssim_batch(to_batch(a), to_batch(b), y_channel)[0])


# --------------------------------------------------------------------------------------------- LPIPS

# Backbones LPIPS builds on, as torchvision's download cache names them ($TORCH_HOME/hub/checkpoints/<file>).
LPIPS_BACKBONES = {
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}


def lpips_backbone_path(net: str = "alex") -> str:
    """Where torchvision's cache keeps the ImageNet weights of the LPIPS backbone ``net`` ("alex" or "vgg")."""
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_BACKBONES)}, got {net!r}")
    # torch.hub.get_dir reads TORCH_HOME (default ~/.cache/torch) at each call, as torchvision's loader does.
    return os.path.join(torch.hub.get_dir(), "checkpoints", LPIPS_BACKBONES[net][0])


class LPIPS:
    """LPIPS distance (v0.1 linear layers of the ``lpips`` package) on a locally stored AlexNet/VGG16 backbone.

    Nothing is downloaded: construction raises :class:`MetricUnavailable` when the backbone file is missing.
    Call on two (B, 3, H, W) batches in [0, 255] → (B,) float32 distances (0 for identical images).
    """

    def __init__(self, net: str = "alex", device: torch.device | str = "cpu"):
        ok, reason = self.available(net)
        if not ok:
            raise MetricUnavailable(reason)
        self.net = net
        self.device = torch.device(device)
        self.model = _build_lpips(net, lpips_backbone_path(net)).to(self.device)

    @staticmethod
    def available(net: str = "alex") -> tuple[bool, str]:
        """(True, "") when LPIPS(net) can be built from local files, else (False, what is missing and where)."""
        if net not in LPIPS_BACKBONES:
            return False, f"LPIPS net must be one of {sorted(LPIPS_BACKBONES)}, got {net!r}"
        try:
            import lpips  # noqa: F401
        except ImportError as error:
            return False, f"the lpips package is not installed (pip install lpips==0.1.4): {error}"
        path = lpips_backbone_path(net)
        if not os.path.isfile(path):
            name, url = LPIPS_BACKBONES[net]
            return False, (f"LPIPS({net}) needs the torchvision ImageNet backbone weights {name}: put that file "
                           f"(from {url}) at {path} (directory from $TORCH_HOME, default ~/.cache/torch); "
                           "it is never downloaded at run time")
        return True, ""

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ×2 RGB in [0, 255] → (B,) float32 LPIPS distances, on this metric's device.

        Same value as the lpips package's forward, but both inputs go through the backbone in one pass: in two
        passes the convolutions may round differently, and an image compared with itself would score ~1e-12.
        """
        _check_pair_batches(a, b)
        both = torch.cat([x.to(self.device, torch.float32) for x in (a, b)]) / (DATA_RANGE / 2) - 1  # to [-1, 1]
        layers = self.model.net(self.model.scaling_layer(both))
        distance = torch.zeros(len(a), device=self.device)
        for features, linear in zip(layers, self.model.lins):
            unit = features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # lpips' normalize_tensor
            unit_a, unit_b = unit.chunk(2)
            distance += linear((unit_a - unit_b) ** 2).mean(dim=(1, 2, 3))
        return distance

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """LPIPS distance of two (H, W, 3) uint8 RGB images."""
        _check_pair_images(a, b)
        return float(self(to_batch(a), to_batch(b))[0])


def _build_lpips(net: str, backbone_path: str) -> torch.nn.Module:
    import lpips

    with warnings.catch_warnings():  # lpips calls torchvision with the deprecated pretrained= argument
        warnings.simplefilter("ignore")
        # pnet_rand: lpips builds the backbone with random weights instead of asking torchvision to fetch them;
        # the real weights are loaded from the local file below. Its linear layers ship inside the package.
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    _load_backbone(model.net, backbone_path)
    return model.eval()


def _load_backbone(slices: torch.nn.Module, path: str) -> None:
    """Copy torchvision's ``features.<i>.*`` weights into lpips's ``slice<k>.<i>.*`` modules (same indices)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which one, not just the unpickler's complaint
        raise MetricUnavailable(f"cannot read LPIPS backbone weights {path}: {error}") from error
    target = slices.state_dict()
    source_key = {key: "features." + key.split(".", 1)[1] for key in target}  # slice3.6.weight → features.6.weight
    missing = sorted(src for src in source_key.values() if src not in state)
    if missing:
        raise MetricUnavailable(f"{path} is not a torchvision {type(slices).__name__} state_dict: "
                                f"expected keys {missing[:4]}..., found {sorted(state)[:4]}...")
    for key, src in source_key.items():
        if state[src].shape != target[key].shape:
            raise MetricUnavailable(f"{path}: {src} has shape {tuple(state[src].shape)}, "
                                    f"expected {tuple(target[key].shape)}")
    slices.load_state_dict({key: state[src] for key, src in source_key.items()})


# --------------------------------------------------------------------------------------------- identity

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in image pixels (dlib rectangle, inclusive corners)

# dlib's own threshold for its face-recognition ResNet: descriptors closer than this are the same person.
SAME_PERSON_DISTANCE = 0.6


def whole_image_box(rgb: np.ndarray) -> Box:
    """The whole (H, W, 3) image as a dlib box."""
    return 0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1


def face_box(rgb: np.ndarray, *, upsample: int = 1, whole_image_fallback: bool = True) -> Box | None:
    """Largest dlib HOG face in an (H, W, 3) uint8 image; the whole image (or None) when none is found.

    The fallback is meant for aligned face crops, where HOG can miss a face that fills the frame.
    """
    faces = detect_faces(rgb, upsample=upsample, min_score=0.0)  # 0.0: dlib's own detection threshold
    if faces:
        return faces[0].box
    return whole_image_box(rgb) if whole_image_fallback else None


@dataclass
class IdentityEncoder:
    """dlib face-recognition ResNet descriptors, (H, W, 3) uint8 RGB → (128,) float64.

    ``num_jitters``: dlib's test-time augmentation (0 = one deterministic pass). Reference descriptors are
    remembered by content (the last ``REFERENCES`` images): a fixed validation set pays for them once.
    """

    num_jitters: int = 0
    upsample: int = 1
    _references: dict = field(default_factory=dict, repr=False, compare=False)
    REFERENCES = 256

    def descriptor(self, rgb: np.ndarray, box: Box | None = None, *, whole_image_fallback: bool = True
                   ) -> np.ndarray | None:
        """(128,) descriptor of the face in ``box`` (None: the largest detected face, see :func:`face_box`).

        None only when no box is given, no face is found and ``whole_image_fallback`` is off.
        """
        _check_pair_images(rgb, rgb)
        if box is None:
            box = face_box(rgb, upsample=self.upsample, whole_image_fallback=whole_image_fallback)
            if box is None:
                return None
        image = np.ascontiguousarray(rgb)
        shape = shape_predictor(5)(image, dlib.rectangle(*(int(v) for v in box)))
        if self.num_jitters:
            return np.array(face_recognizer().compute_face_descriptor(image, shape, self.num_jitters), np.float64)
        # The same network in PyTorch (dfdcore.evaluation.dlib_resnet: dlib's own weights, within 1e-6 of dlib),
        # on the chip dlib would cut: 150 px, padding 0.25 — about 7x faster per face than dlib's call here.
        chip = dlib.get_face_chip(image, shape, size=150, padding=0.25)
        return face_embeddings(chip[None])[0]

    def distance(self, a: np.ndarray, b: np.ndarray, box: Box | None = None) -> float:
        """Euclidean descriptor distance of image ``a`` (e.g. restored) to reference ``b``; < 0.6: same person.

        Both faces are read in the same box: ``box``, or else the one found on the reference ``b``, so a bad
        restoration cannot move where the face is looked for.
        """
        _check_pair_images(a, b)
        key = (hashlib.sha1(np.ascontiguousarray(b)).hexdigest(), b.shape, box)
        if key not in self._references:
            if len(self._references) >= self.REFERENCES:
                self._references.pop(next(iter(self._references)))
            found = box if box is not None else face_box(b, upsample=self.upsample)
            self._references[key] = found, self.descriptor(b, found)
        box, reference = self._references[key]
        return float(np.linalg.norm(self.descriptor(a, box) - reference))


@functools.cache
def _default_encoder() -> IdentityEncoder:
    return IdentityEncoder()


def identity_descriptor(rgb: np.ndarray, box: Box | None = None) -> np.ndarray | None:
    """(128,) dlib face descriptor of an (H, W, 3) uint8 image; see :meth:`IdentityEncoder.descriptor`."""
    return _default_encoder().descriptor(rgb, box)


def identity_distance(a: np.ndarray, b: np.ndarray, box: Box | None = None) -> float:
    """Identity distance of ``a`` to reference ``b`` (same box for both); see :meth:`IdentityEncoder.distance`."""
    return _default_encoder().distance(a, b, box)


# --------------------------------------------------------------------------------------------- landmarks

# Outer eye corners in the 68-point (iBUG 300-W) layout: their distance normalises landmark errors.
LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 36, 45


def landmark_distance(restored_rgb: np.ndarray, reference_landmarks68: np.ndarray, box: Box) -> float:
    """Mean point error of dlib's 68 landmarks on ``restored_rgb`` in ``box`` against the reference's (68, 2) (x, y)
    points, divided by the reference's inter-ocular distance (outer corners 36–45). 0 for identical images.
    """
    reference = np.asarray(reference_landmarks68, dtype=np.float64)
    if reference.shape != (68, 2):
        raise ValueError(f"reference landmarks must be (68, 2) (x, y) points, got {reference.shape}")
    inter_ocular = float(np.linalg.norm(reference[RIGHT_EYE_OUTER] - reference[LEFT_EYE_OUTER]))
    if not inter_ocular > 0:
        raise ValueError("reference landmarks have zero inter-ocular distance (points 36 and 45 coincide)")
    found = landmarks(restored_rgb, box, points=68)
    return float(np.linalg.norm(found - reference, axis=1).mean() / inter_ocular)


# --------------------------------------------------------------------------------------------- one row


def face_metrics(restored: np.ndarray, target: np.ndarray, *, target_landmarks68: np.ndarray | None = None,
                 box: Box | None = None, encoder: IdentityEncoder | None = None, lpips: LPIPS | None = None
                 ) -> dict[str, float | None]:
    """All metrics of one restored (H, W, 3) uint8 face against its target, as one evaluation row.

    ``box``: where the face is, for both images (None: the largest face found on the target, else the whole
    image). ``target_landmarks68``: (68, 2) ground-truth points (None: dlib's on the target in ``box``).
    ``lpips``: an :class:`LPIPS` instance, or None to leave ``lpips`` out (None in the row). Values that cannot
    be computed (degenerate reference landmarks) are None.
    """
    _check_pair_images(restored, target)
    if box is None:
        box = face_box(target)
    if target_landmarks68 is None:
        target_landmarks68 = landmarks(target, box, points=68)
    reference = np.asarray(target_landmarks68, dtype=np.float64)
    landmark_error = None  # coinciding reference eye corners give no scale to normalise by
    if reference.shape != (68, 2) or np.linalg.norm(reference[RIGHT_EYE_OUTER] - reference[LEFT_EYE_OUTER]) > 0:
        landmark_error = landmark_distance(restored, reference, box)  # a wrong shape raises there
    encoder = encoder or _default_encoder()
    a, b = to_batch(restored), to_batch(target)
    row = {
        "psnr": float(psnr_batch(a, b)[0]),
        "ssim": float(ssim_batch(a, b)[0]),
        "psnr_y": float(psnr_batch(a, b, y_channel=True)[0]),
        "ssim_y": float(ssim_batch(a, b, y_channel=True)[0]),
        "lpips": float(lpips(a, b)[0]) if lpips is not None else None,
        "identity_distance": encoder.distance(restored, target, box),
        "landmark_distance": landmark_error,
    }
    return row
