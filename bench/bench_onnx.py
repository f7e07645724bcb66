"""onnxruntime (CPU) vs PyTorch (CPU): faces/s of the exported DFDNet graph, file sizes, export time, agreement.

Random weights and a random K-entry dictionary at the given size (official: 512 px, ngf 64, K 512), exported with
``dfdcore.export.export_onnx``; inputs are the bundled sample photographs, detected and aligned, with their real
component boxes (repeated to fill a batch). Both runtimes get every core. Usage:

    python bench/bench_onnx.py                                              # official size, batches 1 and 4
    python bench/bench_onnx.py --face-size 128 --ngf 8 --k 16 --repeats 1   # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def bundled_faces(face_size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` aligned faces of the bundled photos (cycled): (count, 3, S, S) float32, (count, 4, 4) int64."""
    import dfdcore
    from dfdcore.face import align_faces
    from dfdcore.io import read_rgb
    from dfdcore.io.pixels import images_to_tensor

    photos = sorted((Path(dfdcore.__file__).parent / "assets").glob("*.jpg"))
    faces = [f for photo in photos for f in align_faces(read_rgb(photo), face_size=face_size)]
    faces = [faces[i % len(faces)] for i in range(count)]
    return images_to_tensor([f.image for f in faces]).numpy(), np.stack([f.boxes for f in faces]).astype(np.int64)


def timed(run, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls after one warm-up call."""
    run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--face-size", type=int, default=512)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="Where the .onnx files go (default: a temporary folder).")
    parser.add_argument("--out", default="bench/results/onnx.json")
    args = parser.parse_args()

    import onnxruntime as ort

    import dfdcore
    from dfdcore.export import export_onnx

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    model = dfdcore.random_generator(k=args.k, seed=0, face_size=args.face_size, ngf=args.ngf)
    faces, boxes = bundled_faces(args.face_size, max(args.batches))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dfd-onnx-bench-"))
    start = time.perf_counter()
    files = export_onnx(model, workdir / "dfdnet.onnx")
    export_seconds = time.perf_counter() - start
    sizes = {p.name: p.stat().st_size for p in files}
    print(f"exported in {export_seconds:.0f} s: {sizes}", flush=True)

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    start = time.perf_counter()
    session = ort.InferenceSession(str(workdir / "dfdnet.onnx"), options, providers=["CPUExecutionProvider"])
    load_seconds = time.perf_counter() - start

    rows = []
    for batch in args.batches:
        x, b = faces[:batch], boxes[:batch]
        tx, tb = torch.from_numpy(x), torch.from_numpy(b)
        with torch.inference_mode():
            expected = model(tx, tb).numpy()
            torch_s = timed(lambda: model(tx, tb), args.repeats)
        got = session.run(None, {"faces": x, "part_boxes": b})[0]
        ort_s = timed(lambda: session.run(None, {"faces": x, "part_boxes": b}), args.repeats)
        row = {"batch": batch, "torch_seconds": torch_s, "onnxruntime_seconds": ort_s,
               "torch_faces_per_s": batch / min(torch_s), "onnxruntime_faces_per_s": batch / min(ort_s),
               "max_abs_difference": float(np.abs(got - expected).max())}
        rows.append(row)
        print(json.dumps(row), flush=True)

    result = {"face_size": args.face_size, "ngf": args.ngf, "k": args.k, "threads": threads,
              "machine": f"{platform.machine()}, {threads} cores (shared with other work while measured)",
              "torch": torch.__version__, "onnxruntime": ort.__version__,
              "export_seconds": export_seconds, "session_load_seconds": load_seconds, "file_bytes": sizes,
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
