"""VGG19 weights for the feature extractor.

Read from a path (torchvision's or the official layout) or explicitly random; frozen; checksummed so that features
of different extractors are never clustered together.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from dfdcore.arch.checkpoint import read_state_dict, to_official_keys
from dfdcore.arch.vgg import VGG19_CONV_NAMES, VGGFeatures


# ------------------------------------------------------------------------------------------------- extractor
def load_vgg(weights: str | os.PathLike | None, width: int | None = None,
             random_seed: int | None = None) -> tuple[VGGFeatures, str, bool]:
    """The frozen VGG19 extractor → (vgg in eval mode, extractor_checksum, random_vgg).

    ``weights`` may be torchvision's ``vgg19-dcbb9e9d.pth`` (keys ``features.<idx>.*``; the classifier is ignored and
    RGB_mean/RGB_std keep the ImageNet values), or an official / BasicSR / dfd generator checkpoint (its
    ``VggExtract.model.features.*`` and trained ``VggExtract.RGB_mean/std``). ``width`` (64 for ImageNet VGG19) is
    read from the weights; when given it must agree. Random weights are made only when asked for explicitly
    (``weights=None`` and a ``random_seed``), so a missing path can never silently yield a random extractor.

    ``extractor_checksum`` is the sha256 of the conv weights and biases (in layer order, float32 little-endian) and of
    RGB_mean/RGB_std, which change the features too; seeded random weights therefore get a stable checksum.
    """
    if weights is None:
        if random_seed is None:
            raise ValueError("load_vgg: pass a weights file (e.g. vgg19-dcbb9e9d.pth or a generator checkpoint), "
                             "or weights=None with random_seed=<int> to ask for random weights explicitly")
        with torch.random.fork_rng(devices=[]):  # seed locally: do not disturb the caller's global RNG
            torch.manual_seed(random_seed)
            vgg = VGGFeatures(width or 64)
        return _frozen(vgg), extractor_checksum(vgg), True
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such VGG weights file. Expected torchvision's vgg19-dcbb9e9d.pth or a "
                                f"DFDNet generator checkpoint (official .pth, BasicSR .pth or dfd .safetensors)")
    state = _vgg_state(read_state_dict(path)[0], str(path))
    found = int(state["model.features.0.weight"].shape[0])
    if width is not None and width != found:
        raise ValueError(f"{path}: VGG width {found} (conv1_1 channels) does not match the requested width {width}")
    vgg = VGGFeatures(found)
    expected = {k: v for k, v in vgg.state_dict().items() if k.startswith("model.features.")}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{path}: VGG weights incomplete, {len(missing)} missing key(s): {', '.join(missing[:8])}")
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise ValueError(f"{path}: VGG weights with wrong shapes: " + "; ".join(
            f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in bad[:8]))
    vgg.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
    return _frozen(vgg), extractor_checksum(vgg), False


def _vgg_state(raw: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Any supported layout → VGGFeatures keys (``model.features.<idx>.*``, ``RGB_mean``, ``RGB_std``)."""
    state = to_official_keys(dict(raw))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("VggExtract.model.features."):
            out[key.removeprefix("VggExtract.")] = value
        elif key in ("VggExtract.RGB_mean", "VggExtract.RGB_std"):
            out[key.removeprefix("VggExtract.")] = value.reshape(1, 3, 1, 1)
        elif key.startswith("features.") and key.count(".") == 2:  # torchvision VGG19
            out["model." + key] = value
    if "model.features.0.weight" not in out:
        raise ValueError(f"{source}: no VGG19 weights found (expected torchvision 'features.0.weight' or "
                         f"'VggExtract.model.features.0.weight')")
    conv_indices = set(VGG19_CONV_NAMES.values())
    # Drop layers beyond conv5_4 (none in VGG19 features, but a longer backbone must not be half-loaded quietly).
    return {k: v for k, v in out.items() if not k.startswith("model.features.")
            or int(k.split(".")[2]) in conv_indices}


def _frozen(vgg: VGGFeatures) -> VGGFeatures:
    vgg.eval()
    vgg.requires_grad_(False)
    return vgg


def extractor_checksum(vgg: VGGFeatures) -> str:
    """sha256 over conv weights/biases in layer order and RGB_mean/RGB_std, as float32 little-endian bytes."""
    digest = hashlib.sha256()
    state = vgg.state_dict()
    names = [f"model.features.{i}.{leaf}" for i in sorted(VGG19_CONV_NAMES.values()) for leaf in ("weight", "bias")]
    for name in names + ["RGB_mean", "RGB_std"]:
        tensor = state[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().astype("<f4", copy=False).tobytes())
    return digest.hexdigest()
