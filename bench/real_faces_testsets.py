"""Held-out facesets for the real-faces recipe: the test split of a training faceset (people never seen in
training, from `dfd train --held-out`) divided by where the photos came from — pd-faces (public-domain portraits)
and train-faces (in-the-wild and studio photos) — as two facesets for `dfd evaluate --faceset`. Usage:

    python bench/real_faces_testsets.py real/train/faceset.parquet -o real/testsets    # → pd.parquet, wild.parquet
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import pyarrow.parquet as pq

from dfdcore.data.faceset import write_faceset
from dfdcore.io.storage import read_bytes

SETS = {"pd": "/pd-faces/", "wild": "/train-faces/"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("faceset", help="the training faceset whose test split holds the held-out people")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    table = pq.read_table(io.BytesIO(read_bytes(args.faceset)))
    face_size = int(table.schema.metadata[b"face_size"])
    held = [row for row in table.to_pylist() if row["split"] == "test"]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, marker in SETS.items():
        rows = [row for row in held if marker in row["uri"]]
        counts = write_faceset(str(args.out / f"{name}.parquet"), rows, face_size, test_fraction=0.0)
        print(f"{name}: {counts['test']} held-out faces from {len({r['image_id'] for r in rows})} photos")


if __name__ == "__main__":
    main()
