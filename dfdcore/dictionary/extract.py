"""Selected faces → aligned crops → VGG component features → one Parquet shard per (scale, part)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dfdcore.components import part_boxes
from dfdcore.config import PARTS, GeneratorConfig
from dfdcore.dictionary.crops import component_features
from dfdcore.dictionary.store import write_feature_partition
from dfdcore.face.align import aligned_from_landmarks
from dfdcore.face.flip import flip_faces
from dfdcore.io.images import decode_image
from dfdcore.io.pixels import images_to_tensor
from dfdcore.io.storage import read_bytes


def aligned_faces(face_rows: Sequence[dict], face_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Re-align ``faces.parquet`` rows from their photos: per row the (S, S, 3) uint8 face and its 68 landmarks on
    it. Each photo is read and decoded once, however many of its faces the rows hold (a group photo)."""
    photos: dict[str, np.ndarray] = {}
    aligned = []
    for row in face_rows:
        uri = row["uri"]
        if uri not in photos:
            photos[uri] = decode_image(read_bytes(uri), name=uri).rgb8
        aligned.append(aligned_from_landmarks(photos[uri], row["lm5"], row["lm68"], face_size))
    return aligned


@torch.inference_mode()
def extract_shard(vgg, extractor_checksum: str, random_vgg: bool, config: GeneratorConfig, faces: Sequence[dict],
                  root: str, shard: str, flip: bool, device: str | torch.device = "cpu") -> int:
    """Write ``root/scale=S/part=P/<shard>.parquet`` for every (scale, part); returns the number of rows.

    ``vgg``, ``extractor_checksum``, ``random_vgg``: as ``load_vgg`` returns them (recorded in every shard);
    ``device``: the one ``vgg`` is on (the faces go there; landmarks and boxes stay on the CPU)."""
    crops, landmarks = zip(*aligned_faces(faces, config.face_size))
    batch = images_to_tensor(list(crops)).to(device)
    lm = torch.from_numpy(np.stack(landmarks)).float()
    meta = [{"image_id": r["image_id"], "face_index": int(r["face_index"]), "flip": False} for r in faces]
    variants = [(batch, lm, meta)]
    if flip:
        flipped, flipped_lm = flip_faces(batch, lm, config.face_size)
        variants.append((flipped, flipped_lm, [m | {"flip": True} for m in meta]))
    features: dict = {}
    rows: list[dict] = []
    for images, marks, info in variants:
        boxes = part_boxes(marks, face_size=config.face_size)
        for key, value in component_features(vgg, images, boxes, config).items():
            features.setdefault(key, []).append(value)
        rows += info
    # Written finest scale first, coarsest mouth last: its presence marks a complete shard (resume check).
    for scale in config.scales:
        for part in PARTS:
            write_feature_partition(root, scale, part, rows, torch.cat(features[(scale, part)]).cpu(), shard,
                                    extractor_checksum=extractor_checksum, random_vgg=random_vgg)
    return len(rows)
