"""Selected faces → aligned crops → VGG component features → one Parquet shard per (scale, part)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .components import part_boxes
from .config import PARTS, GeneratorConfig
from .face.align import align_face
from .face.pipeline import to_tensor
from .features import component_features, flip_faces, write_feature_partition
from .io.images import decode_image
from .io.storage import read_bytes


def aligned_face(face_row: dict, face_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-align one ``faces.parquet`` row from its photo: (S, S, 3) uint8 face and its 68 landmarks on it."""
    image = decode_image(read_bytes(face_row["uri"]), name=face_row["uri"])
    crop, matrix = align_face(image.rgb8, np.asarray(face_row["lm5"], dtype=np.float64).reshape(5, 2), face_size)
    lm68 = np.asarray(face_row["lm68"], dtype=np.float64).reshape(68, 2)
    return crop, lm68 @ matrix[:, :2].T + matrix[:, 2]


@torch.inference_mode()
def extract_shard(vgg, checksum: str, random: bool, config: GeneratorConfig, faces: Sequence[dict], root: str,
                  shard: str, flip: bool) -> int:
    """Write ``root/scale=S/part=P/<shard>.parquet`` for every (scale, part); returns the number of rows."""
    crops, landmarks = zip(*(aligned_face(row, config.face_size) for row in faces))
    batch = to_tensor(list(crops))
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
            write_feature_partition(root, scale, part, rows, torch.cat(features[(scale, part)]), shard,
                                    extractor_checksum=checksum, random_weights=random)
    return len(rows)
