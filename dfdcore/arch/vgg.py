"""VGG19 feature taps relu2_2, relu3_4, relu4_4 and conv5_4 (pre-ReLU), in the official state_dict layout."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from dfdcore.arch.tiling import rowwise

# VGG19 "E" layout up to conv5_4, in units of the first conv width (64 for ImageNet VGG19); "M" = max-pool.
_VGG19_PLAN = (1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8)
# Index ranges of the four groups; each ends at one tap (ReLU 8, ReLU 17, ReLU 26, conv 34).
_GROUPS = ((0, 9), (9, 18), (18, 27), (27, 35))
# torchvision VGG19 layer names ↔ indices (used by the BasicSR key map).
VGG19_CONV_NAMES = {
    "conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7,
    "conv3_1": 10, "conv3_2": 12, "conv3_3": 14, "conv3_4": 16,
    "conv4_1": 19, "conv4_2": 21, "conv4_3": 23, "conv4_4": 25,
    "conv5_1": 28, "conv5_2": 30, "conv5_3": 32, "conv5_4": 34,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg19_layers(width: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    in_c = 3
    for item in _VGG19_PLAN:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out_c = item * width
        conv = nn.Conv2d(in_c, out_c, 3, padding=1)
        # torchvision's VGG initialisation, so that random-weight features keep a realistic scale.
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
        in_c = out_c
    return layers[:35]  # drop the ReLU after conv5_4: the official tap is pre-ReLU


class _Backbone(nn.Module):
    """Holds ``features`` so keys read ``VggExtract.model.features.<idx>``; the classifier is not built."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict((str(i), layer) for i, layer in enumerate(layers)))


class VGGFeatures(nn.Module):
    """Frozen VGG19 → four feature maps for a face in [-1, 1].

    Input (B, 3, S, S) → [(B, 2w, S/2, S/2), (B, 4w, S/4, S/4), (B, 8w, S/8, S/8), (B, 8w, S/16, S/16)]
    with w = ``width`` (64 for ImageNet VGG19). Normalisation ((x+1)/2 − RGB_mean)/RGB_std uses the stored
    RGB_mean/RGB_std, which the official model registers as trainable parameters.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        layers = _vgg19_layers(width)
        self.model = _Backbone(layers)
        # The same layer objects again, grouped by tap: the official state_dict lists every conv twice.
        self.features = nn.ModuleList(
            nn.Sequential(OrderedDict((str(i), layers[i]) for i in range(lo, hi))) for lo, hi in _GROUPS
        )
        self.RGB_mean = nn.Parameter(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.RGB_std = nn.Parameter(torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.model.requires_grad_(False)

    def forward(self, x: torch.Tensor, bands: int = 1) -> list[torch.Tensor]:
        """``bands`` > 1 evaluates the first (full-resolution) group in row bands: same taps, less memory.
        Its halo of 8 input rows covers two 3×3 convs, the 2×2 pool and two more 3×3 convs."""
        h = ((x + 1) / 2 - self.RGB_mean) / self.RGB_std
        taps = [rowwise(self.features[0], h, bands, halo=8, down=2)]
        for group in self.features[1:]:
            taps.append(group(taps[-1]))
        return taps
