"""Spectral-normalised convolution with the state_dict layout of PyTorch's hook-based ``spectral_norm``."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dfdcore.arch.float32 import float32_island

_INIT_ITERATIONS = 20


class SNConv2d(nn.Module):
    """Conv2d whose weight is divided by its largest singular value σ ≈ uᵀ W v.

    State: ``bias`` (out,), ``weight_orig`` (out, in, kh, kw), buffers ``weight_u`` (out,), ``weight_v`` (in·kh·kw,)
    — the keys of ``torch.nn.utils.spectral_norm`` (one power iteration, eps 1e-12).

    A forward uses the stored u, v as they are (deterministic, order-independent). The owner of the network decides
    when they are refined: ``converge(1)`` is one power iteration (see ``DFDNet.set_spectral_norm_power_iteration``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                 dilation: int = 1, eps: float = 1e-12) -> None:
        super().__init__()
        self.padding, self.dilation, self.eps = padding, dilation, eps
        fan_in = in_channels * kernel_size * kernel_size
        # PyTorch's Conv2d default initialisation, so a random network behaves like the official one at init.
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in)))
        weight = torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.weight_orig = nn.Parameter(weight)
        self.register_buffer("weight_u", F.normalize(torch.randn(out_channels), dim=0, eps=eps))
        self.register_buffer("weight_v", F.normalize(torch.randn(fan_in), dim=0, eps=eps))
        self.converge(_INIT_ITERATIONS)

    @torch.no_grad()
    def converge(self, iterations: int) -> None:
        """Power-iterate u, v on the current weight so that σ = uᵀWv is the spectral norm, not a random guess.

        Fresh random u, v give a σ that can be near zero; a checkpoint brings its own converged u, v."""
        if self.weight_orig.is_meta:  # a layout-only module (loading builds on "meta"): nothing to converge
            return
        matrix = self.weight_orig.flatten(1)
        u, v = self.weight_u, self.weight_v
        for _ in range(iterations):
            v = F.normalize(matrix.t() @ u, dim=0, eps=self.eps)
            u = F.normalize(matrix @ v, dim=0, eps=self.eps)
        self.weight_u.copy_(u)
        self.weight_v.copy_(v)

    def sigma(self) -> torch.Tensor:
        """σ = uᵀ W v from the stored u, v, in float32 even under autocast: σ scales the whole conv output, and a
        16-bit matrix product would both round it and hand ``torch.dot`` two dtypes."""
        with float32_island(self.weight_orig.device.type):
            return torch.dot(self.weight_u, self.weight_orig.flatten(1) @ self.weight_v)

    def normalized_weight(self) -> torch.Tensor:
        return self.weight_orig / self.sigma()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # conv(x, W/σ) = conv(x, W)/σ: scaling the output avoids materialising a normalised copy of W on every
        # call (38 MiB for MSDilate's fusion conv); under no_grad the scaling is done in place.
        out = F.conv2d(x, self.weight_orig, None, padding=self.padding, dilation=self.dilation)
        inv_sigma = 1.0 / self.sigma()
        bias = self.bias.view(1, -1, 1, 1)
        if torch.is_grad_enabled():
            return out * inv_sigma + bias
        return out.mul_(inv_sigma).add_(bias)

    def extra_repr(self) -> str:
        out_c, in_c, kh, _ = self.weight_orig.shape
        return f"{in_c}, {out_c}, kernel_size={kh}, padding={self.padding}, dilation={self.dilation}"
