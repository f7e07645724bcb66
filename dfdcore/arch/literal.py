"""The official algorithm, step by step: one face at a time, the whole dictionary AdaIN-renormalised toward each
crop, scores as a convolution, softmax, argmax. Slow and memory-hungry on purpose — it is the yardstick that the
fast path (``transfer.py``) is tested and benchmarked against. In-range boxes only, as the official code."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dfdcore.arch.generator import DFDNet
from dfdcore.arch.transfer import adain
from dfdcore.config import PARTS
from dfdcore.dictionary.format import ComponentDictionary

RawDictionary = dict[tuple[int, str], torch.Tensor]


def raw_dictionary(dictionary: ComponentDictionary, device: str | torch.device = "cpu") -> RawDictionary:
    """All 16 dictionaries as float32 (K, C, h, w) tensors, unnormalised, as the official code holds them."""
    return {key: dictionary.tensor(*key).to(device) for key in dictionary.keys()}


def literal_transfer(feature: torch.Tensor, boxes: torch.Tensor, stride: int, scale: int, raw: RawDictionary,
                     model: DFDNet) -> tuple[torch.Tensor, list[int]]:
    """Official DFT at one scale for ONE face: feature (1, C, S, S), boxes (4, 4) → updated (1, C, S, S), indices."""
    updated = feature.clone()
    chosen = []
    for p, part in enumerate(PARTS):
        x1, y1, x2, y2 = (int(v) for v in torch.div(boxes[p], stride, rounding_mode="floor"))
        crop = feature[:, :, y1:y2, x1:x2]
        entries = raw[(scale, part)]
        resized = F.interpolate(crop, size=entries.shape[-2:], mode="bilinear", align_corners=False)
        renormalised = adain(entries, resized)                        # (K, C, h, w), materialised
        scores = F.conv2d(resized, renormalised).flatten(1)            # (1, K)
        k = int(F.softmax(scores, dim=1).argmax(dim=1))
        swap = F.interpolate(renormalised[k:k + 1], size=crop.shape[-2:], mode="nearest")
        confidence = model.attention_blocks(scale)[part](swap - crop)
        updated[:, :, y1:y2, x1:x2] = confidence * swap + crop
        chosen.append(k)
    return updated, chosen


@torch.no_grad()
def literal_forward(model: DFDNet, raw: RawDictionary, faces: torch.Tensor,
                    part_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model``'s weights the official way, face by face → (B, 3, S, S) and chosen entries (B, 4, 4)."""
    model.check_inputs(faces, part_boxes)
    outputs, chosen = [], []
    for b in range(faces.shape[0]):
        face = faces[b:b + 1]
        taps = model.VggExtract(face)
        styles, per_scale = [], []
        for tap, scale in zip(taps, model.config.scales):
            updated, indices = literal_transfer(tap, part_boxes[b], face.shape[-1] // tap.shape[-1], scale, raw, model)
            styles.append(updated)
            per_scale.append(indices)
        outputs.append(model.decode(taps[3], styles))
        chosen.append(per_scale)
    return torch.cat(outputs), torch.tensor(chosen, dtype=torch.int64)
