"""Generator throughput and peak memory: literal (official algorithm) vs fast path, with K-entry dictionaries.

One run measures, each configuration in a fresh child process (so peak RSS is that configuration's own):
  literal  b=1   the official algorithm step by step (whole dictionary AdaIN-renormalised per face)
  fast     b=1   dfd's factored matching, float32 dictionary
  no-dict  b=1   the same network with the dictionary step switched off (fidelity 0)
  fast     b=8
  fast16   b=1   float16 dictionary (chosen entries compared with the float32 run)
Inputs are the bundled sample photographs, detected and aligned, with their real component boxes.
Weights and dictionaries are random (official sizes); they are written to files first and loaded through
load_generator as a user would. Usage:

    python bench/bench_generator.py                 # official size, K=512, CPU (GPU too when available)
    python bench/bench_generator.py --face-size 128 --ngf 8 --k 16 --repeats 1   # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

CONFIGS = [("literal", 1, "float32"), ("fast", 1, "float32"), ("no-dict", 1, "float32"), ("fast", 8, "float32"),
           ("fast", 1, "float16")]


def prepare(cache: Path, face_size: int, ngf: int, k: int) -> None:
    """Random weights, a random K-entry dictionary and aligned sample faces, written once to ``cache``."""
    import dfdcore
    from dfdcore.face import align_faces
    from dfdcore.io import read_rgb

    cache.mkdir(parents=True, exist_ok=True)
    tag = f"{face_size}_{ngf}_{k}"
    if not (cache / f"dictionary_{tag}.safetensors").exists():
        print(f"writing random dictionary K={k} ...", flush=True)
        config = dfdcore.GeneratorConfig(face_size=face_size, ngf=ngf)
        dfdcore.ComponentDictionary.random(config, k=k, seed=0).save(cache / f"dictionary_{tag}.safetensors")
    if not (cache / f"weights_{face_size}_{ngf}.pth").exists():
        torch.manual_seed(0)
        model = dfdcore.DFDNet(dfdcore.GeneratorConfig(face_size=face_size, ngf=ngf))
        dfdcore.save_checkpoint(model, cache / f"weights_{face_size}_{ngf}.pth")
    if not (cache / f"faces_{face_size}.npz").exists():
        assets = Path(dfdcore.__file__).parent / "assets"
        faces = [f for p in sorted(assets.glob("*.[jp][pn]g")) for f in align_faces(read_rgb(p), face_size)]
        np.savez(cache / f"faces_{face_size}.npz", images=np.stack([f.image for f in faces]),
                 boxes=np.stack([f.boxes for f in faces]))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def child(args) -> dict:
    """Measure one configuration in this process."""
    import dfdcore
    from dfdcore.arch import literal_forward, raw_dictionary
    from dfdcore.io.pixels import images_to_tensor

    torch.set_num_threads(args.threads)
    tag = f"{args.face_size}_{args.ngf}_{args.k}"
    data = np.load(args.cache / f"faces_{args.face_size}.npz")
    reps = -(-args.batch // len(data["images"]))
    faces = images_to_tensor(list(np.concatenate([data["images"]] * reps)[: args.batch])).to(args.device)
    boxes = torch.from_numpy(np.concatenate([data["boxes"]] * reps)[: args.batch])
    started = time.perf_counter()
    model = dfdcore.load_generator(args.cache / f"weights_{args.face_size}_{args.ngf}.pth",
                                   args.cache / f"dictionary_{tag}.safetensors", device=args.device,
                                   dict_dtype=getattr(torch, args.dtype))
    all_faces = images_to_tensor(list(data["images"])).to(args.device)
    all_boxes = torch.from_numpy(data["boxes"])
    if args.path == "literal":
        raw = raw_dictionary(dfdcore.ComponentDictionary.load(args.cache / f"dictionary_{tag}.safetensors"),
                             args.device)
        model.bank = None  # the literal path uses the raw dictionary only
        run = lambda f=faces, b=boxes: literal_forward(model, raw, f, b)  # noqa: E731
    else:
        if args.path == "no-dict":
            model.fidelity = 0.0
        run = lambda f=faces, b=boxes: model.restore(f, b)  # noqa: E731
    load_seconds = time.perf_counter() - started
    times = []
    with torch.inference_mode():
        for i in range(args.repeats + 1):  # the first run warms up
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
        chosen = run(all_faces, all_boxes)[1]  # untimed: the entries chosen for every sample face
    per_face = float(np.median(times)) / args.batch
    result = {"path": args.path, "batch": args.batch, "dtype": args.dtype, "device": args.device,
              "seconds_per_face": per_face, "faces_per_second": 1 / per_face, "runs": times,
              "load_seconds": load_seconds, "peak_rss_gib": peak_rss_gib(),
              "chosen": chosen.tolist(), "loadavg": os.getloadavg()}
    if args.device.startswith("cuda"):
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "platform": platform.platform()}
    try:
        model = [l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")]
        info["cpu"] = model[0].split(":", 1)[1].strip()
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, IndexError, ValueError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--face-size", type=int, default=512)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    parser.add_argument("--devices", default=None, help="comma list; default cpu (+cuda when available)")
    parser.add_argument("--child", nargs=4, metavar=("PATH", "BATCH", "DTYPE", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        args.path, args.batch, args.dtype, args.device = args.child[0], int(args.child[1]), *args.child[2:]
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    prepare(args.cache, args.face_size, args.ngf, args.k)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for path, batch, dtype in CONFIGS:
            cmd = [sys.executable, __file__, "--face-size", str(args.face_size), "--ngf", str(args.ngf),
                   "--k", str(args.k), "--repeats", str(args.repeats), "--threads", str(args.threads),
                   "--cache", str(args.cache), "--child", path, str(batch), dtype, device]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"child {path} b={batch} {dtype} {device} failed")
            results.append(json.loads(line[0][7:]))
            r = results[-1]
            print(f"{device:5} {path:8} b={batch} {dtype:8} {r['seconds_per_face']:7.3f} s/face "
                  f"{r['faces_per_second']:6.3f} faces/s  peak RSS {r['peak_rss_gib']:5.2f} GiB "
                  f"(load {r['load_seconds']:.1f} s, loadavg {r['loadavg'][0]:.2f})", flush=True)
    summary = summarise(results)
    print(json.dumps(summary, indent=2))
    report = {"machine": machine(), "config": {"face_size": args.face_size, "ngf": args.ngf, "k": args.k,
                                                "threads": args.threads, "repeats": args.repeats},
              "results": results, "summary": summary}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


def summarise(results: list[dict]) -> dict:
    summary = {}
    for device in sorted({r["device"] for r in results}):
        by = {(r["path"], r["batch"], r["dtype"]): r for r in results if r["device"] == device}
        fast, literal, plain = by[("fast", 1, "float32")], by[("literal", 1, "float32")], by[("no-dict", 1, "float32")]
        half = by[("fast", 1, "float16")]
        same = np.array(half["chosen"]) == np.array(fast["chosen"])
        summary[device] = {
            "fast_over_no_dict_time": fast["seconds_per_face"] / plain["seconds_per_face"],
            "fast_over_literal_speed": fast["faces_per_second"] / literal["faces_per_second"],
            "batch8_over_batch1_speed": by[("fast", 8, "float32")]["faces_per_second"] / fast["faces_per_second"],
            "peak_rss_gib_float32": fast["peak_rss_gib"], "peak_rss_gib_float16": half["peak_rss_gib"],
            "float16_same_entries": f"{int(same.sum())}/{same.size}",
            "literal_fast_same_entries": f"{int((np.array(literal['chosen']) == np.array(fast['chosen'])).sum())}/"
                                         f"{same.size}",
        }
    return summary


if __name__ == "__main__":
    main()
