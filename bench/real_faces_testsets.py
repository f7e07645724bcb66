"""Held-out facesets for the real-faces recipe: the faces of OUT/test/pd-faces and OUT/test/train-faces (people never
seen in training, from bench/real_faces_split.py) as two facesets whose every face is in the test split, for
`dfd evaluate --faceset`. Usage:

    python bench/real_faces_testsets.py real/photos -o real/testsets      # → pd.parquet, wild.parquet
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dfdcore.data.faceset import faces_from_photos, write_faceset
from dfdcore.io.storage import list_images

SETS = {"pd": "test/pd-faces", "wild": "test/train-faces"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", type=Path, help="the split's output folder (holding test/)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--face-size", type=int, default=128)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, folder in SETS.items():
        rows, skipped = faces_from_photos(list_images([str(args.photos / folder)]), args.face_size)
        counts = write_faceset(str(args.out / f"{name}.parquet"), [r | {"split": "test"} for r in rows],
                               args.face_size, test_fraction=0.0)
        print(f"{name}: {counts['test']} faces held out, {len(skipped)} photo(s) without a usable face")


if __name__ == "__main__":
    main()
