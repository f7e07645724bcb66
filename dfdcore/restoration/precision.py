"""``--precision``: the generator's forward pass under autocast in bfloat16 or float16; everything around it float32.

Only the network runs in 16 bits: its input faces are float32, its output is handed on as float32, and every step
after it — clamping, rounding to uint8, the paste-back under the feathered mask, the background — is unchanged.
Inside the network the steps that 16 bits would spoil stay float32 even under autocast: the channel statistics and
the dictionary match (``arch.transfer``; a near tie flips an eye entry) and the spectral norms' σ
(``arch.spectral_norm``). The same code runs on any device whose autocast takes the type: CUDA, and the CPU, whose
autocast takes both bfloat16 and float16 (bench/RESULTS.md, "Half precision", gives speed and differences).

A model carries its precision (``with_precision``, which ``ModelSpec.build`` applies), so every path that restores
with it — ``Restorer``, videos, Ray workers, ``dfd serve`` — runs it the same way, and its provenance names a 16-bit
precision: outputs' metadata, manifest rows and the configuration hash record it.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = ("fp32", "fp16", "bf16")
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class PrecisionError(ValueError):
    """The device cannot run the model at the asked precision (its autocast lacks the type)."""


def check_precision(precision: str) -> str:
    """``precision`` when it is one of ``PRECISIONS``, else ValueError saying what was expected."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def model_precision(model: nn.Module) -> str:
    """The precision ``model`` runs at: what ``with_precision`` set, else fp32."""
    return getattr(model, "precision", "fp32")


def model_device_type(model: nn.Module) -> str:
    """"cpu", "cuda", "mps", ... of the model's first parameter or buffer (cpu for one with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device.type
    return "cpu"


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """Set ``model`` (in place, returned) to run at ``precision`` under ``forward_at``.

    A 16-bit precision is written into ``model.provenance`` (``"precision": "bf16"``), so that it reaches the model's
    identity: output metadata, manifest rows, the config hash (a rerun at another precision redoes the outputs).
    fp32 is recorded by its absence, as in every output made before the option, which thus stay current.
    Raises PrecisionError at once — not on the first photo — when the model's device cannot autocast to it."""
    check_precision(precision)
    if precision != "fp32":
        with autocast(model_device_type(model), precision):
            pass
    model.precision = precision
    provenance = getattr(model, "provenance", None)
    if isinstance(provenance, dict):
        provenance.pop("precision", None)
        if precision != "fp32":
            provenance["precision"] = precision
    return model


@contextlib.contextmanager
def autocast(device_type: str, precision: str) -> Iterator[None]:
    """Autocast to ``precision`` on ``device_type``; fp32 changes nothing. PrecisionError when torch would run the
    block in float32 after all (it only warns when a device's autocast lacks the type) or refuses the type."""
    if check_precision(precision) == "fp32":
        yield
        return
    dtype = AUTOCAST_DTYPES[precision]
    hint = "; bf16 or fp16 run on CUDA and on the CPU" if device_type not in ("cpu", "cuda") else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's "Disabling autocast" warning becomes the error below
            context = torch.autocast(device_type, dtype=dtype)
    except RuntimeError as exc:  # an unknown device type, a CUDA device without bfloat16
        raise PrecisionError(f"--precision {precision}: {device_type} cannot autocast to {dtype} ({exc}); use "
                             f"--precision fp32{hint}") from exc
    with context:
        if not (torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == dtype):
            raise PrecisionError(f"--precision {precision}: torch's {device_type} autocast does not take {dtype} "
                                 f"here, so the model would silently run in float32; use --precision fp32{hint}")
        yield


def forward_at(model: nn.Module, faces: torch.Tensor, part_boxes: torch.Tensor) -> torch.Tensor:
    """``model(faces, part_boxes)`` at the model's precision: faces (B, 3, S, S) float32 in [-1, 1], part_boxes
    (B, 4, 4) int64 → (B, 3, S, S) float32 (a 16-bit output is widened here, before clamping and paste-back)."""
    with autocast(faces.device.type, model_precision(model)):
        restored = model(faces, part_boxes)
    return restored.float()
