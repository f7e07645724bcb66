"""Super-resolution networks for background upsampling, built from the shapes of a user's checkpoint.

Written from the papers, not from their code: ESRGAN's RRDBNet (Wang et al. 2018, "ESRGAN: Enhanced
Super-Resolution Generative Adversarial Networks", residual-in-residual dense blocks, two ×2 nearest + conv
upsampling steps) with Real-ESRGAN's pixel-unshuffle front for ×2 and ×1 (Wang et al. 2021, "Real-ESRGAN"), and
Real-ESRGAN's SRVGGNetCompact (a plain conv + PReLU stack, pixel shuffle at the end, nearest-upsampled input added).
The key layout is the one their released checkpoints use (``conv_first``, ``body.N.rdb1.conv1``, ... and
``body.N``), so those checkpoints load; files are read with ``weights_only=True`` and never run code.
"""
from __future__ import annotations

import math
import os
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfdcore.io.arrays import describe_torch_load_error

SUPPORTED = ("a TorchScript file taking (1, 3, h, w) RGB in [0, 1] to (1, 3, h·n, w·n); or a state dict (plain or "
             "under 'params_ema'/'params', .pth or .safetensors) of an ESRGAN/Real-ESRGAN RRDBNet (conv_first, "
             "body.N.rdb1..3.conv1..5, conv_body, conv_up1, conv_up2, conv_hr, conv_last) or of a Real-ESRGAN "
             "SRVGGNetCompact (body.N convs with PReLU, pixel shuffle at the end)")
# The original ESRGAN release named the same layers differently; renamed on load.
_ESRGAN_NAMES = ((r"^RRDB_trunk\.", "body."), (r"\.RDB([123])\.", r".rdb\1."), (r"^trunk_conv\.", "conv_body."),
                 (r"^upconv(\d)\.", r"conv_up\1."), (r"^HRconv\.", "conv_hr."))


class SRModelError(ValueError):
    """A background upsampler file that is missing, unreadable or holds no supported model."""


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class ResidualDenseBlock(nn.Module):
    """Five 3×3 convs, each seeing the block input and every earlier output; residual scaled by 0.2."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        for i in range(5):
            out = num_feat if i == 4 else num_grow_ch
            setattr(self, f"conv{i + 1}", nn.Conv2d(num_feat + i * num_grow_ch, out, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, H, W) → (B, F, H, W)."""
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(_lrelu(conv(torch.cat(feats, 1))))
        return x + 0.2 * self.conv5(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual in residual: three dense blocks, the chain's residual scaled by 0.2."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN generator: (B, 3, H, W) → (B, 3, H·scale, W·scale), H and W multiples of ``unshuffle``.

    The trunk always upsamples by 2^``num_up``; a ×2 (×1) model first folds 2×2 (4×4) pixels into channels.
    """

    def __init__(self, num_feat: int = 64, num_block: int = 23, num_grow_ch: int = 32, unshuffle: int = 1,
                 num_up: int = 2):
        super().__init__()
        self.unshuffle, self.num_up = unshuffle, num_up
        self.scale = 2 ** num_up // unshuffle
        self.conv_first = nn.Conv2d(3 * unshuffle ** 2, num_feat, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        for i in range(num_up):
            setattr(self, f"conv_up{i + 1}", nn.Conv2d(num_feat, num_feat, 3, padding=1))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(self.num_up):
            conv = getattr(self, f"conv_up{i + 1}")
            feat = _lrelu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(_lrelu(self.conv_hr(feat)))


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact net: (B, 3, H, W) → (B, 3, H·scale, W·scale).

    ``body`` = conv, PReLU, ``num_conv`` × (conv, PReLU), conv to 3·scale² channels; the pixel-shuffled result is
    added to the nearest-upsampled input, so the net learns a residual.
    """

    def __init__(self, num_feat: int = 64, num_conv: int = 32, scale: int = 4):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, 3 * scale ** 2, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.pixel_shuffle(self.body(x), self.scale)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")


class SRModel:
    """A loaded network with its native scale: ``model(rgb (h, w, 3) float32) -> (h·scale, w·scale, 3) float32``.

    Inputs whose sides are not multiples of ``multiple`` are edge-padded and the output cropped back. Networks
    built here run in half precision on CUDA (their conv stacks tolerate it and it halves the memory); TorchScript
    files run in float32, as we cannot know what they tolerate.
    """

    def __init__(self, net: torch.nn.Module, scale: int, multiple: int, device: torch.device, half: bool):
        self.net, self.scale, self.multiple, self.device = net, scale, multiple, device
        self.dtype = torch.float16 if half else torch.float32

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(self.device, self.dtype)
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        with torch.inference_mode():
            y = self.net(x)
        n = self.scale
        expected = (1, 3, x.shape[2] * n, x.shape[3] * n)
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != expected:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise SRModelError(f"the upsampler gave {got} for an input of {tuple(x.shape)}, expected {expected}")
        return y[0, :, :height * n, :width * n].float().permute(1, 2, 0).cpu().numpy()


def load_sr_model(path: str | os.PathLike, device: torch.device) -> SRModel:
    """Load a background upsampler file (see ``SUPPORTED``) onto ``device``, in eval mode."""
    path = Path(path)
    if _is_torchscript(path):
        return _load_torchscript(path, device)
    state = _read_state(path)
    net = build_sr_net(state, str(path))
    net.load_state_dict(state)
    half = device.type == "cuda"
    net = net.to(device, torch.float16 if half else torch.float32).eval()
    return SRModel(net, net.scale, getattr(net, "unshuffle", 1), device, half)


def build_sr_net(state: dict[str, torch.Tensor], source: str) -> RRDBNet | SRVGGNetCompact:
    """An untrained network whose architecture and sizes are read from ``state``'s keys and shapes.

    Raises:
        SRModelError: naming the keys found when they fit neither architecture.
    """
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        return _rrdbnet_for(state, source)
    first = state.get("body.0.weight")
    if first is not None and first.ndim == 4 and first.shape[1] == 3:
        return _srvgg_for(state, source)
    raise SRModelError(f"{source}: the state dict fits no supported architecture; its keys: {_key_summary(state)}. "
                       f"Supported: {SUPPORTED}")


def _rrdbnet_for(state: dict[str, torch.Tensor], source: str) -> RRDBNet:
    num_feat, in_channels = state["conv_first.weight"].shape[:2]
    unshuffle = math.isqrt(in_channels // 3)
    if in_channels % 3 or unshuffle ** 2 * 3 != in_channels or unshuffle not in (1, 2, 4):
        raise SRModelError(f"{source}: conv_first takes {in_channels} channels; an RRDBNet takes 3 (×4), 12 (×2, "
                           f"pixel-unshuffled by 2) or 48 (×1, by 4)")
    blocks = {int(m.group(1)) for key in state if (m := re.match(r"body\.(\d+)\.rdb1\.conv1\.weight$", key))}
    num_up = sum(f"conv_up{i}.weight" in state for i in range(1, 4))
    if 2 ** num_up < unshuffle:
        raise SRModelError(f"{source}: {num_up} upsampling convs after a pixel unshuffle by {unshuffle}")
    net = RRDBNet(num_feat, len(blocks), state["body.0.rdb1.conv1.weight"].shape[0], unshuffle, num_up)
    _check_keys(net, state, source, "RRDBNet")
    return net


def _srvgg_for(state: dict[str, torch.Tensor], source: str) -> SRVGGNetCompact:
    indices = sorted({int(m.group(1)) for key in state if (m := re.match(r"body\.(\d+)\.weight$", key))})
    convs = [i for i in indices if state[f"body.{i}.weight"].ndim == 4]
    prelus = [i for i in indices if state[f"body.{i}.weight"].ndim == 1]
    if convs != list(range(0, 2 * len(convs), 2)) or prelus != [i + 1 for i in convs[:-1]]:
        raise SRModelError(f"{source}: body.N layers at convs {convs}, PReLUs {prelus}: an SRVGGNetCompact "
                           f"alternates conv (even N) and PReLU (odd N), ending with a conv")
    num_feat = state["body.0.weight"].shape[0]
    out_channels = state[f"body.{convs[-1]}.weight"].shape[0]
    scale = math.isqrt(out_channels // 3)
    if scale < 1 or 3 * scale ** 2 != out_channels:
        raise SRModelError(f"{source}: the last conv gives {out_channels} channels, expected 3·scale²")
    net = SRVGGNetCompact(num_feat, len(convs) - 2, scale)
    _check_keys(net, state, source, "SRVGGNetCompact")
    return net


def _check_keys(net: nn.Module, state: dict[str, torch.Tensor], source: str, name: str) -> None:
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise SRModelError(f"{source}: looks like an {name} but does not fit one: missing {missing[:6]}, "
                           f"unexpected {unexpected[:6]}, wrong shapes {wrong[:6]}")


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SRModelError(f"{path}: not a readable TorchScript file or state dict ({path.stat().st_size} bytes; "
                           f"truncated?): {describe_torch_load_error(exc)[:300]}") from exc
    if isinstance(loaded, dict):
        loaded = loaded.get("params_ema", loaded.get("params", loaded))
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        found = _key_summary(loaded) if isinstance(loaded, dict) else type(loaded).__name__
        raise SRModelError(f"{path}: expected a state dict of tensors, found {found}. Supported: {SUPPORTED}")
    return {_esrgan_rename(k): v for k, v in loaded.items()}


def _esrgan_rename(key: str) -> str:
    for pattern, replacement in _ESRGAN_NAMES:
        key = re.sub(pattern, replacement, key)
    return key


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives carry their compiled code under <archive>/code/; torch.save zips hold data.pkl only.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _load_torchscript(path: Path, device: torch.device) -> SRModel:
    try:
        with warnings.catch_warnings():
            # torch marks TorchScript deprecated; users still export SR models that way, so dfd reads them.
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:
        raise SRModelError(f"{path}: a TorchScript archive that does not load: {type(exc).__name__}: "
                           f"{str(exc)[:300]}") from exc
    # The file does not say its scale: run it once on a small probe and read it off the output.
    probe = torch.zeros(1, 3, 16, 16, device=device)
    with torch.inference_mode():
        out = net(probe)
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[:2] != (1, 3) \
            or out.shape[2] % 16 or out.shape[2] != out.shape[3]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SRModelError(f"{path}: the TorchScript model gave {got} for a (1, 3, 16, 16) input, expected "
                           f"(1, 3, 16·n, 16·n)")
    return SRModel(net, out.shape[2] // 16, 1, device, half=False)


def _key_summary(state: dict) -> str:
    keys = list(state)
    shown = ", ".join(f"{k} {tuple(v.shape)}" if isinstance(v, torch.Tensor) else f"{k} ({type(v).__name__})"
                      for k, v in ((k, state[k]) for k in keys[:8]))
    return f"{len(keys)} keys: {shown}" + (", ..." if len(keys) > 8 else "")
