"""Background upsamplers on the CPU: seconds per input megapixel of bicubic, Lanczos and random full-size SR nets.

The nets are the released Real-ESRGAN sizes with random weights (speed does not depend on them): RRDBNet ×4
(64 features, 23 blocks, growth 32; RealESRGAN_x4plus) and SRVGGNetCompact ×4 (64 features, 32 convs;
realesr-general-x4v3), saved as checkpoints and loaded through ``load_background_upsampler``. Input: a crop of
grace_hopper.jpg. Usage:

    python bench/bench_background.py                 # 256² input, tile 256, ×4
    python bench/bench_background.py --size 64       # smoke run
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dfdcore.arch.sr import RRDBNet, SRVGGNetCompact
from dfdcore.io import read_rgb
from dfdcore.io.pixels import uint8_to_unit
from dfdcore.restoration.background import upscale_background

PHOTO = Path(__file__).resolve().parents[1] / "dfdcore" / "assets" / "grace_hopper.jpg"


def seconds(run, repeats: int) -> float:
    """Best of ``repeats`` timed calls after one warm-up (on a shared machine the best is the least disturbed)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="side of the square input crop")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--out", default="bench/results/background.json")
    args = parser.parse_args()
    rgb = np.ascontiguousarray(uint8_to_unit(read_rgb(PHOTO))[:args.size, :args.size])
    megapixels = args.size ** 2 / 1e6
    rows = {}
    for name in ("bicubic", "lanczos"):
        rows[name] = seconds(functools.partial(upscale_background, rgb, args.scale, name), 20) / megapixels
    with tempfile.TemporaryDirectory() as folder:
        nets = {"rrdbnet_x4plus": RRDBNet(64, 23, 32), "srvgg_general_x4v3": SRVGGNetCompact(64, 32, 4)}
        for name, net in nets.items():
            path = Path(folder) / f"{name}.pth"
            torch.save({"params_ema": net.state_dict()}, path)
            run = functools.partial(upscale_background, rgb, args.scale, str(path), tile=args.tile)
            rows[name] = seconds(run, 1) / megapixels  # the warm-up call loads the file; loading is not timed
    result = {"input": f"{args.size}x{args.size}", "scale": args.scale, "tile": args.tile,
              "seconds_per_input_megapixel": rows, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "load_average": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
