"""Fit dfd's NIQE model (not the published NIQE parameters) on pristine pd-faces training faces.

Reads the aligned 128-px faces of a faceset's training split whose photo lies in a pd-faces folder (US Congress
portraits, public domain), fits the multivariate Gaussian of their sharpest patches' features
(``dfdcore.evaluation.niqe.fit_niqe``) and writes it — by default over the model shipped with dfd. Checks that no
person (the Bioguide ID of the file name) of the fit is also among the faceset's held-out pd-faces faces, and prints
the count of faces and patches used. The shipped ``dfdcore/assets/niqe-dfd-pd-faces-128.npz`` was made with:

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/fit_niqe.py /work/real/train/faceset.parquet
"""
from __future__ import annotations

import argparse
import io
import re
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfdcore.data.faceset import FaceSet  # noqa: E402
from dfdcore.evaluation.niqe import DEFAULT_MODEL_FILE, DEFAULT_PATCH, DEFAULT_SHARPNESS, fit_niqe  # noqa: E402
from dfdcore.io.storage import read_bytes  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "dfdcore" / "assets" / DEFAULT_MODEL_FILE
PERSON = re.compile(r"^([A-Z]\d{6})")  # pd-faces files are named by the person's Bioguide ID


def pd_faces_rows(faceset: str, marker: str) -> tuple[set[tuple[str, int]], set[str], set[str]]:
    """(keys of the training faces whose photo path holds ``marker``, their people, the held-out such people)."""
    table = pq.read_table(io.BytesIO(read_bytes(faceset)), columns=["image_id", "face_index", "uri", "split"])
    keys, train_people, test_people = set(), set(), set()
    for row in table.to_pylist():
        if marker not in row["uri"]:
            continue
        person = PERSON.match(Path(row["uri"]).name)
        person = person.group(1) if person else row["uri"]
        if row["split"] == "train":
            keys.add((row["image_id"], row["face_index"]))
            train_people.add(person)
        else:
            test_people.add(person)
    return keys, train_people, test_people


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("faceset", help="faceset .parquet (dfd train's faceset.parquet) of 128-px faces")
    parser.add_argument("-o", "--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--marker", default="/pd-faces/", help="faces whose photo path holds this")
    parser.add_argument("--patch", type=int, default=DEFAULT_PATCH)
    parser.add_argument("--sharpness", type=float, default=DEFAULT_SHARPNESS)
    args = parser.parse_args()

    keys, people, held_out = pd_faces_rows(args.faceset, args.marker)
    if people & held_out:
        raise SystemExit(f"people both in training and held out: {sorted(people & held_out)[:10]}")
    faces = FaceSet(args.faceset, "train")
    if faces.face_size != 128:
        raise SystemExit(f"{args.faceset}: expected 128-px faces, got {faces.face_size}")
    chosen = [i for i in range(len(faces)) if faces.key(i) in keys]
    start = time.perf_counter()
    source = (f"dfd's NIQE fit (not the published NIQE parameters): pd-faces training faces, 128-px aligned crops, "
              f"of {Path(args.faceset).name}; {args.patch}-px patches at >= {args.sharpness} of each face's "
              f"sharpest; bench/fit_niqe.py")
    model = fit_niqe((faces.face(i)[0] for i in chosen), args.patch, sharpness=args.sharpness, source=source)
    model.save(args.output)
    print(f"faces {model.images} ({len(people)} people; {len(held_out)} held-out people excluded), "
          f"patches {model.patches} of {args.patch} px (of {model.images * (128 // args.patch) ** 2}), "
          f"{time.perf_counter() - start:.1f} s → {args.output} ({Path(args.output).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
