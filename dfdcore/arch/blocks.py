"""Restoration blocks of DFDNet; attribute names follow the official state_dict."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfdcore.arch.spectral_norm import SNConv2d


class InferenceInplaceLeakyReLU(nn.Module):
    """LeakyReLU(0.2), in place when gradients are off: at inference every one of them follows a conv whose output
    nothing else reads (saves a full activation); in training autograd needs the unmodified outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, 0.2, inplace=not torch.is_grad_enabled())


def lrelu() -> nn.Module:
    return InferenceInplaceLeakyReLU()


def attention_block(channels: int) -> nn.Sequential:
    """Confidence of a swapped component: SNconv → LReLU → SNconv, C → C, unbounded output."""
    return nn.Sequential(SNConv2d(channels, channels), lrelu(), SNConv2d(channels, channels))


class MSDilateBlock(nn.Module):
    """Four dilated branches (d = 4, 3, 2, 1) fused by a 3×3 conv, plus the input (residual)."""

    def __init__(self, channels: int, dilations: tuple[int, ...] = (4, 3, 2, 1)) -> None:
        super().__init__()
        for i, d in enumerate(dilations, start=1):
            branch = nn.Sequential(SNConv2d(channels, channels, padding=d, dilation=d), lrelu(),
                                   SNConv2d(channels, channels, padding=d, dilation=d))
            setattr(self, f"conv{i}", branch)
        self.num_branches = len(dilations)
        self.convi = SNConv2d(channels * len(dilations), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [getattr(self, f"conv{i}")(x) for i in range(1, self.num_branches + 1)]
        return self.convi(torch.cat(branches, dim=1)) + x


class Blur(nn.Module):
    """Fixed depthwise [1 2 1]ᵀ[1 2 1]/16 filter; both buffers are in the official state_dict."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = (k[:, None] * k[None, :] / 16).expand(channels, 1, 3, 3).clone()
        self.register_buffer("weight", kernel)
        self.register_buffer("weight_flip", kernel.flip(-1, -2).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1, groups=x.shape[1])


def fixed_blur_buffers(channels: int) -> dict[str, torch.Tensor]:
    """The Blur buffers as they must be; used to fill checkpoints that omit them (BasicSR)."""
    blur = Blur(channels)
    return {"weight": blur.weight, "weight_flip": blur.weight_flip}


class StyledUpBlock(nn.Module):
    """Decoder step: blur-conv the decoder feature, modulate it by scale/shift maps of the dictionary-updated
    encoder feature ``style``, upsample ×2.  y = lrelu(conv(up2(t · scale(s) + shift(s))))."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(Blur(in_channels), SNConv2d(in_channels, out_channels), lrelu())
        self.convup = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    SNConv2d(out_channels, out_channels), lrelu())
        self.lrelu1 = lrelu()
        self.ScaleModel1 = nn.Sequential(SNConv2d(in_channels, out_channels), lrelu(),
                                         SNConv2d(out_channels, out_channels))
        self.ShiftModel1 = nn.Sequential(SNConv2d(in_channels, out_channels), lrelu(),
                                         SNConv2d(out_channels, out_channels), nn.Sigmoid())

    def modulate(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """t · scale(s) + shift(s), before the ×2 upsampling (``convup``)."""
        t = self.lrelu1(self.conv1(x))
        return torch.addcmul(self.ShiftModel1(style), t, self.ScaleModel1(style))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.convup(self.modulate(x, style))


class UpResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.Model = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), lrelu(),
                                   nn.Conv2d(channels, channels, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Model(x).add_(x)


def output_head(channels: int) -> nn.Sequential:
    """``up4``: SNconv → LReLU → 2 residual blocks → plain conv to RGB → tanh."""
    return nn.Sequential(SNConv2d(channels, channels), lrelu(), UpResBlock(channels), UpResBlock(channels),
                         nn.Conv2d(channels, 3, 3, 1, 1), nn.Tanh())
