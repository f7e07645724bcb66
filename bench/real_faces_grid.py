"""A picture of what a trained generator does to faces of people it never saw: rows of
LQ (its real low resolution, shown with nearest-neighbour pixels) | bicubic | restored | HQ, with each row's PSNR.

    python bench/real_faces_grid.py real/testsets/pd.parquet --weights real/train/best/generator.safetensors \
        --dictionary real/dictionary/dictionary.safetensors --degradation moderate -o docs/images/real-faces-grid.png
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from dfdcore.api import load_generator
from dfdcore.data.degrade import DegradationConfig
from dfdcore.data.faceset import FaceSet
from dfdcore.evaluation.metrics import psnr
from dfdcore.evaluation.pairs import degraded_pairs, restore_pairs
from dfdcore.io.images import write_image
from dfdcore.viz import side_by_side


def low_resolution_view(bicubic: np.ndarray, scale: float | None) -> np.ndarray:
    """The LQ as the network's input came about: the bicubic face shrunk back by its scale, shown with square pixels."""
    if not scale or scale <= 1:
        return bicubic
    size = bicubic.shape[0]
    small = cv2.resize(bicubic, (max(1, round(size / scale)),) * 2, interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST)


def main() -> None:
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("faceset", help="faceset whose test split holds the faces to show")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--dictionary", required=True)
    parser.add_argument("--degradation", default="moderate")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=4321)
    parser.add_argument("-o", "--out", required=True)
    args = parser.parse_args()
    pairs = degraded_pairs(FaceSet(args.faceset, "test"), args.count, args.seed,
                           DegradationConfig.preset(args.degradation))
    model = load_generator(args.weights, args.dictionary)
    rows, gains = [], []
    for pair, restored in zip(pairs, restore_pairs(model, pairs)):
        scale = json.loads(pair["params"]).get("scale")
        before, after = psnr(pair["lq"], pair["hq"]), psnr(restored, pair["hq"])
        gains.append(after - before)
        rows.append(side_by_side([low_resolution_view(pair["lq"], scale), pair["lq"], restored, pair["hq"]],
                                 [f"LQ x1/{scale or 1:g}", f"bicubic {before:.1f} dB", f"restored {after:.1f} dB",
                                  "HQ"]))
    half = (len(rows) + 1) // 2  # two columns of rows: a squarer picture
    left, right = rows[:half], rows[half:] + [np.full_like(rows[0], 255)] * (half - len(rows[half:]))
    grid = np.concatenate([np.concatenate(left, axis=0), np.full((half * rows[0].shape[0], 12, 3), 255, np.uint8),
                           np.concatenate(right, axis=0)], axis=1)
    write_image(args.out, grid)
    print(f"{args.out}: {len(rows)} faces, PSNR gain over bicubic {np.mean(gains):+.2f} dB mean "
          f"({min(gains):+.2f} … {max(gains):+.2f})")


if __name__ == "__main__":
    main()
