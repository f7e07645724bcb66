"""Multi-scale spectral-norm residual discriminator for DFDNet training (hinge GAN).

Three single-scale discriminators look at the face, at the face average-pooled once and at the face pooled
twice. Each one brings its input down to an 8×8 map with residual blocks, average-pools it to a
(S/branch)×(S/branch) map and scores it with one spectral-norm linear layer, so the finest branch gives one
score per image and coarser branches give 4, 16, … scores per image.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

# Every branch ends at an 8×8 map before its final pooling.
_FINAL_MAP = 8
# Channel widths stop doubling at this multiple of ``dim``.
_MAX_WIDTH_FACTOR = 8
_INIT_GAIN = 0.02


def _sn(layer: nn.Conv2d | nn.Linear) -> nn.Module:
    """Orthogonal init (gain 0.02), zero bias, then spectral norm (one power iteration per training forward)."""
    nn.init.orthogonal_(layer.weight, gain=_INIT_GAIN)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return spectral_norm(layer)


def _sn_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    return _sn(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2))


class FirstResBlock(nn.Module):
    """Entry block on the image, halves the size: (B, in, H, W) → (B, out, H/2, W/2).

    main: SNconv3×3 → LeakyReLU 0.2 → SNconv3×3 → AvgPool2; bypass: AvgPool2 → SNconv1×1; output = sum.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(_sn_conv(in_channels, out_channels, 3), nn.LeakyReLU(0.2),
                                  _sn_conv(out_channels, out_channels, 3), nn.AvgPool2d(2))
        self.bypass = nn.Sequential(nn.AvgPool2d(2), _sn_conv(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.bypass(x)


class DownResBlock(nn.Module):
    """Residual down block, halves the size: (B, in, H, W) → (B, out, H/2, W/2).

    main: ReLU → SNconv3×3 (in → out) → ReLU → SNconv3×3 → AvgPool2; bypass: SNconv1×1 → AvgPool2; output = sum.
    The ReLUs are not in place: the bypass reads the block input too.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.ReLU(), _sn_conv(in_channels, out_channels, 3), nn.ReLU(),
                                  _sn_conv(out_channels, out_channels, 3), nn.AvgPool2d(2))
        self.bypass = nn.Sequential(_sn_conv(in_channels, out_channels, 1), nn.AvgPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.bypass(x)


class SingleScaleSNDiscriminator(nn.Module):
    """One branch: (B, 3, s, s) → (B·(S/s)², 1) scores, s = ``branch_size``, S = ``face_size``.

    FirstResBlock (3 → dim, s → s/2), then log2(s) − 4 DownResBlocks (widths dim·2^j capped at 8·dim) down to
    an 8×8 map, AvgPool of kernel 8·s/S to an (S/s)×(S/s) map, and an SN Linear(C, 1) on each position's
    feature vector (C = final width; 8·dim whenever there are ≥ 3 down blocks): one score per patch, rows
    ordered image by image, then row-major over positions.
    """

    def __init__(self, branch_size: int, face_size: int, dim: int = 64) -> None:
        super().__init__()
        _check_power_of_two("branch_size", branch_size, minimum=2 * _FINAL_MAP)
        if face_size % branch_size:
            raise ValueError(f"face_size must be a multiple of branch_size {branch_size}, got {face_size}")
        self.branch_size, self.face_size = branch_size, face_size
        num_down = int(math.log2(branch_size)) - int(math.log2(2 * _FINAL_MAP))
        widths = [min(dim * 2 ** j, _MAX_WIDTH_FACTOR * dim) for j in range(num_down + 1)]
        blocks: list[nn.Module] = [FirstResBlock(3, widths[0])]
        blocks += [DownResBlock(c_in, c_out) for c_in, c_out in itertools.pairwise(widths)]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AvgPool2d(_FINAL_MAP * branch_size // face_size)
        self.out_channels = widths[-1]
        self.fc = _sn(nn.Linear(self.out_channels, 1))

    @property
    def rows_per_image(self) -> int:
        return (self.face_size // self.branch_size) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.blocks(x))
        return self.fc(pooled.permute(0, 2, 3, 1).reshape(-1, self.out_channels))


def _check_power_of_two(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum or value & (value - 1):
        raise ValueError(f"{name} must be a power of two ≥ {minimum}, got {value!r}")


class MultiScaleSNDiscriminator(nn.Module):
    """Hinge-GAN discriminator on faces (B, 3, S, S) in [-1, 1], at ``num_scales`` scales.

    Branch i sees the face average-pooled i times (3×3, stride 2, padding 1, padding excluded from the mean),
    i.e. at S/2^i, and returns (B·4^i, 1) scores. S must be a power of two with S/2^(num_scales−1) ≥ 16
    (64, 128, 256, 512, … for three scales).
    """

    def __init__(self, face_size: int = 512, dim: int = 64, num_scales: int = 3) -> None:
        super().__init__()
        if not isinstance(num_scales, int) or num_scales < 1:
            raise ValueError(f"num_scales must be an integer ≥ 1, got {num_scales!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an integer ≥ 1, got {dim!r}")
        smallest = 2 * _FINAL_MAP
        if not isinstance(face_size, int) or face_size & (face_size - 1) or face_size >> (num_scales - 1) < smallest:
            raise ValueError(
                f"face_size must be a power of two ≥ {smallest << (num_scales - 1)} for {num_scales} scales "
                f"(the coarsest branch sees face_size/2^{num_scales - 1}, which must be ≥ {smallest}), "
                f"got {face_size!r}")
        self.face_size = face_size
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.scales = nn.ModuleList(
            SingleScaleSNDiscriminator(face_size >> i, face_size, dim) for i in range(num_scales))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) in [-1, 1] → [(B·4^i, 1) for each scale i], finest first."""
        s = self.face_size
        if images.ndim != 4 or images.shape[1:] != (3, s, s):
            raise ValueError(f"expected images of shape (B, 3, {s}, {s}), got {tuple(images.shape)}")
        scores = []
        x = images
        for i, branch in enumerate(self.scales):
            if i:
                x = self.downsample(x)
            scores.append(branch(x))
        return scores
