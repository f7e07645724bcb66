"""Row-band evaluation of local operators, to bound the memory of full-resolution stages at inference."""
from __future__ import annotations

from collections.abc import Callable

import torch


def rowwise(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bands: int, halo: int, up: int = 1,
            down: int = 1) -> torch.Tensor:
    """Apply ``fn`` to ``x`` (B, C, H, W) in ``bands`` horizontal bands overlapping by ``halo`` input rows.

    ``fn`` must be local (convolutions, pointwise ops, pooling, resizing) and map H rows to H·up/down rows. The
    result equals ``fn(x)`` when ``halo`` covers ``fn``'s receptive radius in input rows and is a multiple of
    ``down``; each band's own padding only touches the halo rows, which are cut away.
    """
    height = x.shape[-2]
    if bands <= 1 or height < 2 * halo * bands:
        return fn(x)
    step = -(-height // bands)
    step += -step % down
    outputs = []
    for top in range(0, height, step):
        bottom = min(height, top + step)
        first, last = max(0, top - halo), min(height, bottom + halo)
        band = fn(x[..., first:last, :])
        outputs.append(band[..., (top - first) * up // down:(bottom - first) * up // down, :])
    return torch.cat(outputs, dim=-2)
