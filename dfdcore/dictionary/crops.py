"""Component feature crops for dictionaries.

VGG features at each scale, each part cropped and resized exactly as the generator does before matching (§1.4 of
the reference), so that dictionary entries and the generator's queries are alike.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dfdcore.arch.vgg import VGGFeatures
from dfdcore.components import scale_boxes
from dfdcore.config import PARTS, GeneratorConfig
from dfdcore.dictionary.format import Key


def component_features(vgg: VGGFeatures, faces: torch.Tensor, boxes: torch.Tensor,
                       config: GeneratorConfig, bands: int = 1) -> dict[Key, torch.Tensor]:
    """Dictionary-ready component features of aligned faces.

    For each VGG tap (scale) and part: the part's window from ``scale_boxes`` (stride = face_size // tap side, the
    generator's own clamping rule), cropped and bilinearly resized (align_corners=False) to
    (dict_size, dict_size) — exactly what the generator matches against the dictionary.

    Args:
        vgg: extractor whose width equals ``config.ngf``.
        faces: (B, 3, S, S) aligned faces in [-1, 1], S = config.face_size.
        boxes: (B, 4, 4) int component boxes in face pixels (``part_boxes``), parts in PARTS order.
        bands: row bands for the first VGG group (less memory, same values).

    Returns:
        {(scale, part): (B, C, h, w) float32} with (C, h, w) = config.dict_shape(scale, part, ·)[1:]. A part whose
        window lies wholly outside the map (``scale_boxes`` gives None) gets a row of NaN; drop those rows with
        ``valid_rows`` before storing them.
    """
    if faces.ndim != 4 or faces.shape[1] != 3 or faces.shape[2:] != (config.face_size, config.face_size):
        raise ValueError(f"faces must have shape (B, 3, {config.face_size}, {config.face_size}), "
                         f"got {tuple(faces.shape)}")
    boxes = torch.as_tensor(boxes)
    if boxes.shape != (faces.shape[0], len(PARTS), 4):
        raise ValueError(f"boxes must have shape ({faces.shape[0]}, 4, 4), got {tuple(boxes.shape)}")
    with torch.no_grad():
        taps = vgg(faces, bands=bands)
    out: dict[Key, torch.Tensor] = {}
    for scale, channels, tap in zip(config.scales, config.tap_channels, taps):
        if tap.shape[1] != channels or tap.shape[-1] != scale:
            raise ValueError(f"VGG tap {tuple(tap.shape[1:])} does not match the configuration ({channels}, {scale}, "
                             f"{scale}): use a VGG of width {config.ngf} for ngf {config.ngf}")
        windows = scale_boxes(boxes, config.face_size // scale, scale)
        for p, part in enumerate(PARTS):
            side = config.dict_size(scale, part)
            rows = tap.new_full((tap.shape[0], channels, side, side), float("nan"))
            for b, per_face in enumerate(windows):
                if per_face[p] is not None:
                    rows[b] = crop_resize(tap[b:b + 1], per_face[p], side)[0]
            out[(scale, part)] = rows
    return out


def crop_resize(feature: torch.Tensor, window: tuple[int, int, int, int], side: int) -> torch.Tensor:
    """(B, C, H, W) map, window (x1, y1, x2, y2) in cells (exclusive upper) → (B, C, side, side), bilinear,
    align_corners=False, no antialiasing (the generator's resize)."""
    x1, y1, x2, y2 = window
    crop = feature[:, :, y1:y2, x1:x2]
    return F.interpolate(crop, size=(side, side), mode="bilinear", align_corners=False)


def valid_rows(features: torch.Tensor) -> torch.Tensor:
    """(N, ...) features → (N,) bool: rows without NaN/inf (a skipped component is all NaN)."""
    return torch.isfinite(features.reshape(features.shape[0], -1)).all(dim=1)
