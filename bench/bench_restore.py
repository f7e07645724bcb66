"""Whole-photograph restoration throughput: the bundled sample photos through `restore_sources` with
--batch-size 1 and 8 (random weights at the official size, K=512 dictionaries), each in a fresh child process.

    python bench/bench_restore.py --out bench/results/restore-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).parent
sys.path.insert(0, str(BENCH))
from bench_generator import machine, prepare  # noqa: E402


def child(args) -> dict:
    import torch

    import dfdcore
    from dfdcore.io.storage import Source
    from dfdcore.restoration.bulk import restore_sources
    from dfdcore.restoration.restorer import RestoreOptions, Restorer

    torch.set_num_threads(args.threads)
    tag = f"{args.face_size}_{args.ngf}_{args.k}"
    model = dfdcore.load_generator(args.cache / f"weights_{args.face_size}_{args.ngf}.pth",
                                   args.cache / f"dictionary_{tag}.safetensors")
    photos = sorted(p for p in (Path(dfdcore.__file__).parent / "assets").iterdir() if p.suffix in (".png", ".jpg"))
    # The same photo may appear several times (its manifest row is simply rewritten); outputs do not collide.
    sources = [Source(str(p), f"{i:03d}_{p.name}") for i, p in enumerate(photos * args.copies)]
    restorer = Restorer(model, RestoreOptions(upscale=2), batch_size=args.batch)
    runs = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(dir=args.cache) as out:
            started = time.perf_counter()
            summary = restore_sources(sources, out, restorer)
            runs.append(time.perf_counter() - started)
    seconds = min(runs)
    return {"batch": args.batch, "images": summary.images, "faces": summary.faces, "seconds": seconds, "runs": runs,
            "images_per_second": summary.images / seconds, "faces_per_second": summary.faces / seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30,
            "loadavg": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--face-size", type=int, default=512)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--copies", type=int, default=3, help="each sample photo this many times (9 images)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=BENCH / ".cache")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        args.batch = args.child
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    prepare(args.cache, args.face_size, args.ngf, args.k)
    results = []
    for batch in (1, 8):
        cmd = [sys.executable, __file__, "--face-size", str(args.face_size), "--ngf", str(args.ngf), "--k",
               str(args.k), "--copies", str(args.copies), "--repeats", str(args.repeats), "--threads",
               str(args.threads), "--cache", str(args.cache), "--child", str(batch)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"batch {batch} failed")
        r = json.loads(line[0][7:])
        results.append(r)
        print(f"batch {batch}: {r['images']} images, {r['faces']} faces in {r['seconds']:.1f} s = "
              f"{r['images_per_second']:.3f} images/s, {r['faces_per_second']:.3f} faces/s, "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB (loadavg {r['loadavg'][0]:.2f})", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine(), "config": vars(args) | {"cache": str(args.cache),
                                        "out": str(args.out)}, "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
