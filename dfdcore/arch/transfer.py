"""Dictionary feature transfer (DFT): swap each face component's features for its best dictionary entry.

Fast path (reference §10.1): the dictionary is stored once instance-normalised, D̃_kc = (D_kc − μ_kc) / σ_kc, as a
(K, C·h·w) matrix on the compute device. Component AdaIN of entry k toward a crop with channel statistics (μ_c, σ_c)
is then D̃_kc·σ_c + μ_c, and its inner product with the resized crop Pr is Σ_c σ_c ⟨Pr_c, D̃_kc⟩ plus a term that
does not depend on k — so the argmax needs one matrix product (σ ⊙ Pr) · D̃ᵀ and only the chosen entry is
ever renormalised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfdcore.arch.float32 import float32_island
from dfdcore.components import scale_boxes
from dfdcore.config import PARTS, GeneratorConfig
from dfdcore.dictionary.format import ComponentDictionary
from dfdcore.runtime import release_free_memory

ADAIN_EPS = 1e-5
_RERANK = 8  # candidates re-scored in float32 when the dictionary is stored in 16-bit


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, channel) mean and σ = √(unbiased var + 1e-5) over positions: (N, C, h, w) → 2 × (N, C, 1, 1),
    float32 whatever ``x`` is: the variance of deep VGG features (values in the hundreds) overflows float16."""
    flat = x.flatten(2).float()
    return flat.mean(dim=2)[..., None, None], (flat.var(dim=2, unbiased=True) + ADAIN_EPS).sqrt()[..., None, None]


def adain(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Component AdaIN: renormalise ``content`` (N, C, h, w) to the channel statistics of ``style`` (1 or N, C, h, w)."""
    c_mean, c_std = channel_stats(content)
    s_mean, s_std = channel_stats(style)
    return (content - c_mean) / c_std * s_std + s_mean


def normalised_entries(rows: torch.Tensor) -> torch.Tensor:
    """Instance-normalise dictionary entries: (n, C, h, w) → (n, C·h·w)."""
    mean, std = channel_stats(rows)
    return ((rows - mean) / std).flatten(1)


class DictionaryBank(nn.Module):
    """Instance-normalised dictionary entries, one (K, C·h·w) non-persistent buffer per (scale, part).

    Built once, streaming the source dictionary a few entries at a time, directly on ``device`` in ``dtype``;
    not part of the generator's state_dict (the official checkpoint holds no dictionary).
    """

    def __init__(self, dictionary: ComponentDictionary, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config: GeneratorConfig = dictionary.config
        self.k = dictionary.k
        self.dtype = dtype or torch.float32
        self.provenance = dict(dictionary.metadata)
        for scale, part in dictionary.keys():
            k, c, h, w = dictionary.shape(scale, part)
            buffer = torch.empty(k, c * h * w, dtype=self.dtype, device=device)
            for start, rows in dictionary.iter_rows(scale, part):
                buffer[start:start + len(rows)] = normalised_entries(rows.to(device)).to(self.dtype)
            self.register_buffer(self.buffer_name(scale, part), buffer, persistent=False)
        release_free_memory()

    @staticmethod
    def buffer_name(scale: int, part: str) -> str:
        return f"entries_{scale}_{part}"

    def entries(self, scale: int, part: str) -> torch.Tensor:
        return getattr(self, self.buffer_name(scale, part))

    def best_entries(self, scale: int, part: str, crops: torch.Tensor, crop_std: torch.Tensor) -> torch.Tensor:
        """Index of the best-matching entry for each resized crop (N, C, h, w) with channel σ (N, C, 1, 1) → (N,)."""
        entries = self.entries(scale, part)
        # Scored in float32 even under autocast (--precision bf16/fp16): near-tied entries flip in a 16-bit product,
        # and a flipped eye or mouth entry changes the face far more than 16-bit convolutions do.
        with float32_island(entries.device.type):
            query = (crops * crop_std).flatten(1).float()
            # Positive rescaling keeps the argmax and keeps 16-bit products far from overflow.
            query = query / query.norm(dim=1, keepdim=True).clamp_min(1e-12)
            if entries.dtype == torch.float32:
                return (query @ entries.t()).argmax(dim=1)
            rough = query.to(entries.dtype) @ entries.t()
            candidates = rough.float().topk(min(_RERANK, self.k), dim=1).indices          # (N, R)
            exact = torch.einsum("nd,nrd->nr", query, entries[candidates].float())
            return candidates.gather(1, exact.argmax(dim=1, keepdim=True)).squeeze(1)

    def renormalised(self, scale: int, part: str, index: torch.Tensor, mean: torch.Tensor,
                     std: torch.Tensor) -> torch.Tensor:
        """AdaIN of the chosen entries toward their crops: (N,) indices, stats (N, C, 1, 1) → (N, C, h, w)."""
        shape = self.config.dict_shape(scale, part, len(index))
        return self.entries(scale, part)[index].to(mean.dtype).view(shape) * std + mean


def transfer_scale(feature: torch.Tensor, boxes: torch.Tensor, stride: int, scale: int, bank: DictionaryBank,
                   attention: dict[str, nn.Module], fidelity: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DFT at one scale for a batch.

    Args:
        feature: (B, C, S, S) VGG feature map.
        boxes: (B, 4, 4) component boxes in face pixels; ``stride`` face pixels per feature cell.
        attention: confidence block per part name.
        fidelity: weight of the dictionary contribution (1 = official fusion A ⊙ Sw + P, 0 = unchanged features).

    Returns:
        Updated features (B, C, S, S) and the chosen entry per (face, part), (B, 4), −1 where a box lies outside
        the map. Every component is computed from the original ``feature``; writes go left eye, right eye, nose,
        mouth, so the later part wins where boxes overlap.
    """
    windows = scale_boxes(boxes, stride, feature.shape[-1])
    updated = feature.clone()
    chosen = torch.full((feature.shape[0], len(PARTS)), -1, dtype=torch.int64)
    for p, part in enumerate(PARTS):
        faces = [b for b in range(feature.shape[0]) if windows[b][p] is not None]
        if not faces:
            continue
        side = bank.config.dict_size(scale, part)
        crops = [feature[b, :, y1:y2, x1:x2] for b in faces for x1, y1, x2, y2 in [windows[b][p]]]
        resized = torch.cat([F.interpolate(c[None], size=(side, side), mode="bilinear", align_corners=False)
                             for c in crops])
        mean, std = channel_stats(resized)
        index = bank.best_entries(scale, part, resized, std)
        swapped = bank.renormalised(scale, part, index, mean, std)
        chosen[faces, p] = index.cpu()
        for j, b in enumerate(faces):
            x1, y1, x2, y2 = windows[b][p]
            crop = crops[j][None]
            swap = F.interpolate(swapped[j:j + 1], size=crop.shape[-2:], mode="nearest")
            confidence = attention[part](swap - crop)
            updated[b, :, y1:y2, x1:x2] = (crop + fidelity * confidence * swap)[0]
    return updated, chosen
