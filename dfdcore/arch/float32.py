"""Float32 islands inside an autocast region: the few steps that 16-bit arithmetic would spoil (``--precision``)."""
from __future__ import annotations

import contextlib

import torch
from torch.amp import is_autocast_available


def float32_island(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device_type`` while it is on there, so that float32 inputs give float32 results;
    a no-op otherwise — outside autocast nothing changes, not even the graph an exporter traces (ONNX), and devices
    without autocast ("meta") are fine."""
    if is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
