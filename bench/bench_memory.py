"""Peak memory per input pixel of restoring one large photograph, by upscale factor — the figures behind
``dfdcore.restoration.memory`` (the default ``--max-pixels``).

Each (format, upscale) runs in its own child process; the figure is (peak RSS after − RSS before the restore) /
pixels, ``ru_maxrss``. The photo is a smooth random-texture 3000² image (no face: the cost measured is decoding,
detection, upscaling and encoding, which scale with pixels; each face adds a constant).

    .venv/bin/python bench/bench_memory.py --out bench/results/memory-per-pixel.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import os, resource, sys, time
import numpy as np
from PIL import Image
side, fmt, upscale, folder = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
path = os.path.join(folder, f"img_{side}.{fmt}")
if not os.path.exists(path):
    small = np.random.default_rng(0).integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize((side, side), Image.BICUBIC).save(path, quality=90)
import torch
torch.set_num_threads(1)
from dfdcore.restoration.bulk import RunOptions, restore_sources
from dfdcore.io.storage import Source
from dfdcore.restoration.restorer import IdentityModel, Restorer, RestoreOptions
restorer = Restorer(IdentityModel(512), RestoreOptions(upscale=upscale))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
started = time.perf_counter()
summary = restore_sources([Source(path, os.path.basename(path))], os.path.join(folder, f"out_{fmt}_{upscale}"),
                          restorer, RunOptions(force=True, max_pixels=10**10))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print({"side": side, "format": fmt, "upscale": upscale, "status": summary.rows[0]["status"],
       "bytes_per_pixel": (peak - before) / side**2, "peak_rss_bytes": peak, "seconds": time.perf_counter() - started})
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=3000)
    parser.add_argument("--out", default="bench/results/memory-per-pixel.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for upscale in (1, 2, 4):
            for fmt in ("jpg", "png"):
                result = subprocess.run([sys.executable, "-c", CHILD, str(args.side), fmt, str(upscale), folder],
                                        capture_output=True, text=True, check=True)
                rows.append(eval(result.stdout.strip().splitlines()[-1]))  # noqa: S307 - our own child's dict
                print(rows[-1])
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
