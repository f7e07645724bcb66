"""Training loss terms of DFDNet: hinge GAN, pixel MSE, total variation and VGG19 content/style.

Only the terms: weighting them, optimisers and schedules belong to the training code.
Images are (B, 3, S, S) in [-1, 1]; discriminator scores are lists with one (N_i, 1) tensor per scale.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfdcore.arch.vgg import VGGFeatures

# torchvision VGG19 indices of relu1_1, relu2_1, relu3_1, relu4_1.
PERCEPTUAL_TAPS = (1, 6, 11, 20)


def _scale_list(name: str, scores: Tensor | Sequence[Tensor]) -> list[Tensor]:
    if isinstance(scores, Tensor):
        return [scores]
    scores = list(scores)
    if not scores or not all(isinstance(s, Tensor) for s in scores):
        raise ValueError(f"{name} must be a non-empty list of score tensors (one per scale), "
                         f"got {[type(s).__name__ for s in scores]}")
    return scores


def hinge_d_loss(real_scores: Sequence[Tensor], fake_scores: Sequence[Tensor]) -> Tensor:
    """Discriminator hinge loss, summed over scales: Σ_i mean(relu(1 − real_i)) + mean(relu(1 + fake_i)).

    Each list holds one score tensor per scale (any shape, e.g. (B·n_i, 1)); a bare tensor counts as one scale.
    Real and fake must have the same number of scales. Returns a scalar.
    """
    real, fake = _scale_list("real_scores", real_scores), _scale_list("fake_scores", fake_scores)
    if len(real) != len(fake):
        raise ValueError(f"expected as many real as fake scales, got {len(real)} real and {len(fake)} fake")
    return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake))


def hinge_g_loss(fake_scores: Sequence[Tensor]) -> Tensor:
    """Generator hinge loss, summed over scales: Σ_i −mean(fake_i). Returns a scalar."""
    return sum(-f.mean() for f in _scale_list("fake_scores", fake_scores))


def _check_pair(restored: Tensor, target: Tensor) -> None:
    if restored.shape != target.shape:
        raise ValueError(f"expected restored and target of the same shape, got {tuple(restored.shape)} "
                         f"and {tuple(target.shape)}")


def pixel_loss(restored: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between two images (B, 3, S, S) of the same shape. Returns a scalar."""
    _check_pair(restored, target)
    return F.mse_loss(restored, target)


def l1_loss(restored: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error between two images (B, 3, S, S) of the same shape. Returns a scalar."""
    _check_pair(restored, target)
    return F.l1_loss(restored, target)


def log_mse_loss(restored: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over images of 10·log10(MSE_i) on the [-1, 1] scale: minus the mean PSNR up to a constant, so that each
    image counts in decibels — a nearly clean input weighs as much as a badly degraded one (plain MSE is dominated
    by the worst images). (B, 3, S, S) ×2 → scalar."""
    _check_pair(restored, target)
    per_image = (restored - target).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(per_image + eps).mean()


def tv_loss(images: Tensor, weight: float = 1.0) -> Tensor:
    """Total variation of (B, C, H, W) images, H, W ≥ 2: weight · 2 · (h_tv/count_h + w_tv/count_w) / B.

    h_tv, w_tv are the sums of squared differences of vertically / horizontally adjacent pixels over the
    batch; count_h = C·(H−1)·W and count_w = C·H·(W−1) are the numbers of such pairs per image.
    """
    if images.ndim != 4 or images.shape[2] < 2 or images.shape[3] < 2:
        raise ValueError(f"expected images of shape (B, C, H, W) with H, W ≥ 2, got {tuple(images.shape)}")
    b, c, h, w = images.shape
    h_tv = (images[:, :, 1:, :] - images[:, :, :-1, :]).pow(2).sum()
    w_tv = (images[:, :, :, 1:] - images[:, :, :, :-1]).pow(2).sum()
    return weight * 2 * (h_tv / (c * (h - 1) * w) + w_tv / (c * h * (w - 1))) / b


def gram(features: Tensor) -> Tensor:
    """Un-normalised Gram matrices: (B, C, H, W) → (B, C, C), G = f fᵀ with f the (C, H·W) map of an image."""
    f = features.flatten(2)
    return f @ f.transpose(1, 2)


class PerceptualLoss(nn.Module):
    """VGG19 content and style losses at relu1_1, relu2_1, relu3_1, relu4_1 between two (B, 3, S, S) images
    in [-1, 1] (S ≥ 8), normalised as ((x + 1)/2 − RGB_mean)/RGB_std with the VGG's own mean/std.

    content = Σ_i w_i · Σ(f_i(restored) − f_i(target))² / (b·c·h·w)
    style   = Σ_i mean((G_i(restored) − G_i(target))²) / (b·c·h·w),  G = f fᵀ per image (see ``gram``)
    with b, c, h, w the shape of tap i.

    The conv layers 0–20 and RGB_mean/RGB_std are the very modules and parameters of ``vgg`` (shared, not
    copied, so weights loaded into ``vgg`` later are seen here). Building the loss freezes them
    (requires_grad False — this includes RGB_mean/RGB_std, which VGGFeatures leaves trainable, so give the loss
    a VGG of its own rather than the generator's) and puts those layers in eval mode; ``train()`` keeps them
    there. ReLUs are applied out of place, so no tap is overwritten and ``vgg`` is left untouched by a forward.
    """

    def __init__(self, vgg: VGGFeatures, layer_weights: Sequence[float] = (1 / 8, 1 / 4, 1 / 2, 1)) -> None:
        super().__init__()
        if not isinstance(vgg, VGGFeatures):
            raise TypeError(f"expected a dfdcore.arch.vgg.VGGFeatures, got {type(vgg).__name__}")
        if len(layer_weights) != len(PERCEPTUAL_TAPS):
            raise ValueError(f"expected {len(PERCEPTUAL_TAPS)} layer weights (relu1_1, relu2_1, relu3_1, relu4_1), "
                             f"got {len(layer_weights)}")
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.layers = nn.Sequential(*vgg.model.features[: PERCEPTUAL_TAPS[-1] + 1])
        self.RGB_mean = vgg.RGB_mean
        self.RGB_std = vgg.RGB_std
        self.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.layers.eval()
        return self

    def features(self, images: Tensor) -> list[Tensor]:
        """(B, 3, S, S) in [-1, 1] → the four taps relu1_1 (B, w, S, S), relu2_1 (B, 2w, S/2, S/2),
        relu3_1 (B, 4w, S/4, S/4), relu4_1 (B, 8w, S/8, S/8), w the VGG width (64 for ImageNet VGG19)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, S, S), got {tuple(images.shape)}")
        h = ((images + 1) / 2 - self.RGB_mean) / self.RGB_std
        taps = []
        for i, layer in enumerate(self.layers):
            h = F.relu(h) if isinstance(layer, nn.ReLU) else layer(h)
            if i in PERCEPTUAL_TAPS:
                taps.append(h)
        return taps

    def forward(self, restored: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, S, S) restored and target in [-1, 1] → (content, style) scalars; no gradient flows to target."""
        _check_pair(restored, target)
        with torch.no_grad():
            target_taps = self.features(target)
        content = restored.new_zeros(())
        style = restored.new_zeros(())
        for weight, f1, f2 in zip(self.layer_weights, self.features(restored), target_taps):
            size = f1.numel()
            content = content + weight * (f1 - f2).pow(2).sum() / size
            style = style + (gram(f1) - gram(f2)).pow(2).mean() / size
        return content, style
