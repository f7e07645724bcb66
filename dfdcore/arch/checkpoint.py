"""Reading and writing generator checkpoints: official ``.pth``, BasicSR ``{'params': ...}`` and dfd
``.safetensors``. Loading is strict: anything missing, unexpected or mis-shaped is reported, never ignored —
except the keys the official file holds for modules we deliberately do not build (``IGNORED_KEY_PREFIXES``)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dfdcore.arch.vgg import VGG19_CONV_NAMES
from dfdcore.io import atomic_path
from dfdcore.io.arrays import describe_torch_load_error

# Unused parts of the official UNetDictFace: the VGG classifier (123.6 M parameters) and to_rgb0..3.
IGNORED_KEY_PREFIXES = ("VggExtract.model.classifier.", "to_rgb0.", "to_rgb1.", "to_rgb2.", "to_rgb3.")
_VGG_GROUP_OF = {idx: g for g, (lo, hi) in enumerate(((0, 9), (9, 18), (18, 27), (27, 35)))
                 for idx in range(lo, hi)}
_BASICSR_PARTS = {"left_eye": "le", "right_eye": "re", "nose": "no", "mouth": "mo"}


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, truncated or does not match the generator."""


def is_ignored_key(key: str) -> bool:
    return key.startswith(IGNORED_KEY_PREFIXES)


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint file → (state_dict, metadata). Raises CheckpointError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file. Point --weights at the official "
                              f"latest_net_G.pth, a BasicSR-converted .pth or a dfd .safetensors checkpoint")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            return load_file(str(path)), metadata
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # torch / safetensors raise many exception types for damaged files
        raise CheckpointError(f"{path}: cannot read checkpoint — the file is truncated, damaged or not a "
                              f"PyTorch/safetensors checkpoint ({describe_torch_load_error(exc)})") from exc
    if isinstance(state, dict):
        for wrapper in ("params_ema", "params", "state_dict"):
            if wrapper in state and isinstance(state[wrapper], dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict of tensors, got {type(state).__name__}")
    return dict(state), {}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a dfd ``.safetensors`` checkpoint without reading its tensors ({} for other formats)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # noqa: BLE001 - a damaged file is reported by read_state_dict when it is loaded
        return {}


def _basicsr_to_official(key: str) -> str:
    """Rename one BasicSR DFDNet key to the official UNetDictFace name."""
    if key.startswith("vgg_extractor.vgg_net."):
        layer, _, leaf = key[len("vgg_extractor.vgg_net."):].partition(".")
        return f"VggExtract.model.features.{VGG19_CONV_NAMES[layer]}.{leaf}"
    if key in ("vgg_extractor.mean", "vgg_extractor.std"):
        return "VggExtract.RGB_mean" if key.endswith("mean") else "VggExtract.RGB_std"
    match = re.match(r"attn_blocks\.(left_eye|right_eye|nose|mouth)_(\d+)\.(.*)", key)
    if match:
        return f"{_BASICSR_PARTS[match[1]]}_{match[2]}.{match[3]}"
    match = re.match(r"multi_scale_dilation\.conv_blocks\.(\d+)\.(.*)", key)
    if match:
        return f"MSDilate.conv{int(match[1]) + 1}.{match[2]}"
    key = key.replace("multi_scale_dilation.conv_fusion.", "MSDilate.convi.")
    key = re.sub(r"^upsample(\d)\.", r"up\1.", key)
    key = key.replace(".scale_block.", ".ScaleModel1.").replace(".shift_block.", ".ShiftModel1.")
    return re.sub(r"^(up4\.\d)\.body\.", r"\1.Model.", key)


def to_official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalise any supported layout to official key names (BasicSR names, ``module.`` prefixes, the
    parametrization-style spectral-norm names)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(("vgg_extractor.", "attn_blocks.", "multi_scale_dilation.", "upsample")):
            key = _basicsr_to_official(key)
        key = (key.replace(".parametrizations.weight.original", ".weight_orig")
                  .replace(".parametrizations.weight.0._u", ".weight_u")
                  .replace(".parametrizations.weight.0._v", ".weight_v"))
        if key.endswith("_metadata"):
            continue
        out[key] = value
    return out


def fill_derived_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add keys that are copies or constants: the grouped VGG duplicates and the fixed Blur kernels."""
    state = dict(state)
    for key in expected:
        if key in state:
            continue
        match = re.match(r"VggExtract\.features\.\d+\.(\d+)\.(weight|bias)$", key)
        source = f"VggExtract.model.features.{match[1]}.{match[2]}" if match else None
        if source in state:
            state[key] = state[source]
        elif re.match(r"up\d\.conv1\.0\.weight(_flip)?$", key):
            state[key] = expected[key]  # the fixed blur kernel (BasicSR does not store it)
    return state


def check_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys (ignored official keys excepted)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not is_ignored_key(k)]
    misshaped = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or misshaped:
        lines = [f"{source}: checkpoint does not match the DFDNet generator "
                 f"(face size / ngf from the dictionary and weights)"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
            if items:
                shown = items[:12] + ([f"... and {len(items) - 12} more"] if len(items) > 12 else [])
                lines.append(f"  {len(items)} {title} key(s): " + "; ".join(shown))
        raise CheckpointError("\n".join(lines))


def infer_ngf(state: dict[str, torch.Tensor], source: str) -> int:
    head = state.get("up4.4.weight")
    if head is None or head.ndim != 4:
        raise CheckpointError(f"{source}: no 'up4.4.weight' (the output conv): not a DFDNet generator checkpoint")
    return int(head.shape[1])


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Save the generator: ``.pth`` = official layout (a plain state_dict the official code loads),
    ``.safetensors`` = the same keys without the VGG duplicates, with metadata (config, provenance)."""
    path = Path(path)
    if getattr(model, "residual", False) and path.suffix != ".safetensors":
        raise ValueError(f"{path}: a residual generator (output = input + head) needs the .safetensors format, which "
                         f"records that; the official .pth layout would load as a plain (non-residual) network")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            state = {k: v for k, v in state.items() if not re.match(r"VggExtract\.features\.", k)}
            meta = {"format": "dfd-generator", "config": json.dumps(model.config.to_dict()),
                    "provenance": json.dumps(metadata or getattr(model, "provenance", {}), default=str),
                    "residual": json.dumps(bool(getattr(model, "residual", False))),
                    "residual_head": "tanh" if getattr(model, "residual_tanh", False) else "linear"}
            save_file(state, str(tmp), metadata=meta)
        else:
            torch.save(state, tmp)
    return path
