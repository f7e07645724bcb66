"""Half precision on real faces: the generator at fp32, bf16 and fp16 (``--precision``), its speed and its difference
to the fp32 output.

The bundled model (dfd-pd-128, 128-px faces) on the bundled public-domain portraits (dfdcore/assets/portraits/:
real faces, detected and aligned as `dfd restore` does them), under ``dfdcore.restoration.precision.autocast`` —
the code path of `dfd restore --precision`. Per precision:

- generator faces/s at batch 1 and 8 over the first --timing-faces faces, --repeats rounds, the precisions taking
  turns within each round so that a load spike on a shared machine hits them alike: each forward call is timed
  (wall clock and this process's CPU time), and the best call and the median call are reported — on a machine
  shared with other work the best call is the estimate of the unshared speed, the median what the sharing left;
- against the fp32 output of every aligned face, as the 8-bit face that is pasted back: max and mean absolute
  difference (levels of 255), PSNR over all faces pooled and for the worst face, and how many of the
  (face, scale, part) dictionary entries were chosen differently.

    python bench/bench_precision.py --out bench/results/precision-cpu.json
    python bench/bench_precision.py --portraits 4 --timing-faces 2 --repeats 1     # smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).parent
sys.path.insert(0, str(BENCH))
from bench_generator import machine  # noqa: E402


def aligned_portraits(count: int, face_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every face of the first ``count`` bundled portraits (name order), aligned as `dfd restore` aligns them →
    faces (N, S, S, 3) uint8, part boxes (N, 4, 4) int64, and the portrait of each face."""
    import dfdcore
    from dfdcore.face import align_faces
    from dfdcore.io import read_rgb

    paths = sorted((Path(dfdcore.__file__).parent / "assets" / "portraits").glob("*.jpg"))[:count]
    found = [(p.name, f) for p in paths for f in align_faces(read_rgb(p), face_size)]
    if not found:
        raise SystemExit(f"no face found in the first {count} portraits")
    return (np.stack([f.image for _, f in found]), np.stack([f.boxes for _, f in found]),
            [name for name, _ in found])


def restore_at(model, faces: torch.Tensor, boxes: torch.Tensor, precision: str, batch: int
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    """Faces (N, 3, S, S) in [-1, 1] and boxes (N, 4, 4) through ``model`` at ``precision``, ``batch`` at a time →
    restored (N, S, S, 3) uint8 (what is pasted back), chosen entries (N, 4 scales, 4 parts), and for each forward
    call its (wall, CPU) seconds per face."""
    from dfdcore.io.pixels import tensor_to_images
    from dfdcore.restoration.precision import autocast

    restored, chosen, calls = [], [], []
    with torch.inference_mode():
        for start in range(0, len(faces), batch):
            started, cpu_started = time.perf_counter(), time.process_time()
            with autocast(faces.device.type, precision):
                out, picked = model.restore(faces[start:start + batch], boxes[start:start + batch])
            out = out.float()
            if out.is_cuda:
                torch.cuda.synchronize()
            n = len(out)
            calls.append(((time.perf_counter() - started) / n, (time.process_time() - cpu_started) / n))
            restored.append(tensor_to_images(out))
            chosen.append(picked.numpy())
    return np.concatenate(restored), np.concatenate(chosen), calls


def psnr(mse: float) -> float:
    """PSNR in dB of 8-bit images with mean squared error ``mse`` (inf when equal)."""
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def differences(reference: np.ndarray, other: np.ndarray, chosen_ref: np.ndarray, chosen: np.ndarray) -> dict:
    """``other`` against ``reference``, both (N, S, S, 3) uint8: max / mean absolute difference in levels, PSNR pooled
    over all faces and of the worst face, and the dictionary choices (N, 4, 4) that differ."""
    diff = other.astype(np.float64) - reference.astype(np.float64)
    per_face_mse = (diff ** 2).reshape(len(diff), -1).mean(axis=1)
    return {"max_abs": float(np.abs(diff).max()), "mean_abs": float(np.abs(diff).mean()),
            "psnr_db": psnr(float(per_face_mse.mean())), "worst_face_psnr_db": psnr(float(per_face_mse.max())),
            "faces_changed": int((np.abs(diff).reshape(len(diff), -1).max(axis=1) > 0).sum()),
            "entries_changed": int((chosen_ref != chosen).sum()), "entries": int(chosen_ref.size)}


def summary(calls: list[tuple[float, float]]) -> dict:
    """(wall, CPU) seconds per face of many forward calls → the best call (closest to an unshared machine: other
    people's work only ever slows a call down) and the median call (what this shared machine gave typically)."""
    wall, cpu = np.array([c[0] for c in calls]), np.array([c[1] for c in calls])
    return {"calls": len(calls), "best_seconds_per_face": float(wall.min()), "faces_per_second": float(1 / wall.min()),
            "median_seconds_per_face": float(np.median(wall)), "median_faces_per_second": float(1 / np.median(wall)),
            "best_cpu_seconds_per_face": float(cpu.min()), "median_cpu_seconds_per_face": float(np.median(cpu))}


def timings(model, faces, boxes, precisions, repeats: int, batches: tuple[int, ...]) -> dict:
    """Per (precision, batch), ``summary`` of every forward call over ``faces`` in ``repeats`` rounds, after one
    warm-up; within a round the precisions take turns, so a load spike hits them alike."""
    for precision in precisions:
        for batch in batches:
            restore_at(model, faces[:batch], boxes[:batch], precision, batch)  # warm-up (allocations, kernels)
    calls: dict[str, list[tuple[float, float]]] = {}
    for round_ in range(repeats):
        for precision in precisions:
            for batch in batches:
                mine = restore_at(model, faces, boxes, precision, batch)[2]
                calls.setdefault(f"{precision}/b{batch}", []).extend(mine)
                print(f"  round {round_ + 1}: {precision} batch {batch}: best call {min(c[0] for c in mine):.3f} "
                      f"s/face (loadavg {os.getloadavg()[0]:.1f})", flush=True)
    return {key: summary(mine) | {"runs": mine} for key, mine in calls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundled", default="dfd-pd-128", help="the bundled model to run")
    parser.add_argument("--random-weights", action="store_true",
                        help="a random network of --face-size / --ngf / --k instead (speed at another size; its "
                             "differences are a random network's, not a restorer's)")
    parser.add_argument("--face-size", type=int, default=512)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--portraits", type=int, default=121, help="the first N bundled portraits (121: all)")
    parser.add_argument("--timing-faces", type=int, default=16, help="faces timed per (precision, batch) and round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.precisions[0] != "fp32":
        parser.error("the first of --precisions is the reference: fp32")

    from dfdcore.io.pixels import images_to_tensor
    from dfdcore.restoration.restorer import ModelSpec

    torch.set_num_threads(args.threads)
    spec = (ModelSpec(random_weights=True, face_size=args.face_size, ngf=args.ngf, k=args.k, device=args.device)
            if args.random_weights else ModelSpec(bundled=args.bundled, device=args.device))
    model = spec.build().eval()
    started = time.perf_counter()
    images, boxes, names = aligned_portraits(args.portraits, model.config.face_size)
    print(f"{len(images)} faces from {len(set(names))} portraits aligned in {time.perf_counter() - started:.0f} s",
          flush=True)
    faces, boxes = images_to_tensor(images).to(args.device), torch.from_numpy(boxes)
    batches = tuple(args.batches)
    timed = timings(model, faces[:args.timing_faces], boxes[:args.timing_faces], args.precisions, args.repeats,
                    batches)
    outputs = {p: restore_at(model, faces, boxes, p, max(batches)) for p in args.precisions}
    reference, chosen_ref = outputs["fp32"][:2]
    rows = []
    for precision in args.precisions:
        row = {"precision": precision, **{f"b{b}": timed[f"{precision}/b{b}"] for b in batches}}
        row.update(differences(reference, outputs[precision][0], chosen_ref, outputs[precision][1]))
        # the difference pass, every face at the largest batch: a second, larger timing sample (precisions one after
        # another, so less fair under a changing load)
        row[f"all_faces_b{max(batches)}"] = summary(outputs[precision][2])
        rows.append(row)
        print(f"{precision}: " + ", ".join(f"batch {b} {row[f'b{b}']['faces_per_second']:.1f} faces/s best, "
                                           f"{row[f'b{b}']['median_faces_per_second']:.1f} median" for b in batches)
              + f"; vs fp32: max {row['max_abs']:.0f} levels, mean {row['mean_abs']:.4f}, PSNR {row['psnr_db']:.1f} dB "
              f"(worst face {row['worst_face_psnr_db']:.1f} dB), {row['faces_changed']}/{len(images)} faces changed, "
              f"{row['entries_changed']}/{row['entries']} entries chosen differently", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        model_files = {k: v for k, v in model.provenance.items() if k in ("bundled", "checkpoint_sha256",
                                                                          "dictionary_sha256", "random_weights")}
        report = {"machine": machine(), "model": model_files, "loadavg_end": os.getloadavg(), "faces": len(images),
                  "portraits": len(set(names)), "config": vars(args) | {"out": str(args.out)}, "results": rows}
        args.out.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
