"""Face descriptors per second: dlib's face-recognition ResNet called once per face (dlib's Python API) against the
PyTorch port (dfdcore.evaluation.dlib_resnet, weights read from the same .dat file) in batches of 1, 8 and 32, on
the same 150-px face chips; with each one's max abs difference from dlib.

    python bench/bench_identity.py [--faces 64] [--threads 1] [--device cpu]

Chips: dlib.get_face_chip (5 landmarks, padding 0.25) of the faces in dfdcore/assets' sample photos and, where
present, of shared/data/pd-faces (DFD_SHARED, default ../shared), each also mirrored, until --faces chips.
Wall time is what the table's rate uses; CPU seconds (all of the process's threads) are shown beside it, since a
shared machine's wall time moves with its load.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import dlib
import numpy as np
import torch

from dfdcore.evaluation.dlib_resnet import DlibFaceEmbedder
from dfdcore.face.models import face_recognizer, frontal_detector, shape_predictor
from dfdcore.io import read_rgb

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DFD_SHARED", REPO.parent / "shared"))
BATCHES = (1, 8, 32)


def face_chips(count: int) -> list[np.ndarray]:
    """``count`` 150-px chips (and mirror images) of the bundled sample photos, then of the pd-faces set."""
    photos = sorted(p for p in (REPO / "dfdcore" / "assets").iterdir() if p.suffix in (".jpg", ".png"))
    photos += sorted((SHARED / "data" / "pd-faces" / "congress-hainish-225x275").glob("*.jpg"))
    chips: list[np.ndarray] = []
    for path in photos:
        rgb = read_rgb(path)
        for box in frontal_detector()(rgb, 0):
            chip = dlib.get_face_chip(rgb, shape_predictor(5)(rgb, box), size=150, padding=0.25)
            chips += [chip, np.ascontiguousarray(chip[:, ::-1])]
        if len(chips) >= count:
            return chips[:count]
    raise SystemExit(f"only {len(chips)} face chips found (set DFD_SHARED for more photos); use --faces {len(chips)}")


def timed(run) -> tuple[np.ndarray, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = run()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chips = face_chips(args.faces)
    recognizer = face_recognizer()
    recognizer.compute_face_descriptor(chips[0])  # warm-up
    reference, wall, cpu = timed(lambda: np.array([recognizer.compute_face_descriptor(c) for c in chips]))
    rows = [("dlib, one call per face", len(chips) / wall, cpu / len(chips), 0.0)]

    model = DlibFaceEmbedder.from_dlib_file().to(args.device)
    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).to(args.device)

    def port(size: int) -> np.ndarray:
        with torch.inference_mode():
            out = torch.cat([model(part) for part in batch.split(size)])
        if out.device.type == "cuda":
            torch.cuda.synchronize()
        return out.cpu().numpy()

    for size in BATCHES:
        port(size)  # warm-up
        got, wall, cpu = timed(lambda: port(size))
        name = f"torch port, batch {size} ({args.device}, {args.threads} thread{'s' * (args.threads > 1)})"
        rows.append((name, len(chips) / wall, cpu / len(chips), float(np.abs(got - reference).max())))

    print(f"{len(chips)} face chips, torch {torch.__version__}, dlib {dlib.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"| {'model':<40} | descriptors/s | CPU ms/descriptor | max abs diff vs dlib |")
    print(f"|{'-' * 42}|---------------|-------------------|----------------------|")
    for name, rate, cpu_each, diff in rows:
        print(f"| {name:<40} | {rate:13.1f} | {cpu_each * 1000:17.1f} | {diff:20.2e} |")


if __name__ == "__main__":
    main()
