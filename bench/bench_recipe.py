"""Training recipes compared on the same faces for the same wall time: which one learns restoration on a CPU?

Each recipe is a set of ``TrainConfig`` overrides over one base configuration (the demo's small network by default).
A recipe trains in this process (no Ray, no MLflow: the recipe is what is measured, not the plumbing) and is validated
every ``--val-every`` steps on fixed degraded copies of the held-out faces, beside the bicubic baseline.

    python bench/bench_recipe.py --faceset F.parquet --dictionary D.safetensors --seconds 240 \
        --out bench/results/recipes-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace

import torch

from dfdcore.training import TrainConfig, Trainer

# Overrides of the base configuration; "today" is the demo's recipe before residual learning.
RECIPES: dict[str, dict] = {
    "today": dict(lr=1e-3),
    "residual": dict(lr=1e-3, residual=True),
    "residual-warmup": dict(lr=1e-3, residual=True, adversarial_start=10**9),
    "residual-pixel": dict(lr=1e-3, residual=True, adversarial_weight=0.0, perceptual_weight=0.0),
    "residual-warmup-ema": dict(lr=1e-3, residual=True, adversarial_start=10**9, ema_decay=0.99),
    "residual-warmup-lr2e-4": dict(lr=2e-4, residual=True, adversarial_start=10**9),
}


def run(base: TrainConfig, name: str, seconds: float, val_every: int) -> dict:
    cfg = replace(base, **RECIPES[name])
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    curve, started = [], time.perf_counter()
    first = trainer.validate()
    curve.append({"step": 0, "seconds": 0.0, **first})
    train_seconds = 0.0
    while train_seconds < seconds and trainer.step < cfg.steps:
        tick = time.perf_counter()
        for _ in range(val_every):
            trainer.train_step()
        train_seconds += time.perf_counter() - tick
        curve.append({"step": trainer.step, "seconds": train_seconds, **trainer.validate()})
        last = curve[-1]
        print(f"{name:>24} step {trainer.step:5d}  {train_seconds:6.0f} s  PSNR {last['val_psnr']:.2f} "
              f"(bicubic {last['bicubic_psnr']:.2f})  SSIM {last['val_ssim']:.3f} ({last['bicubic_ssim']:.3f})  "
              f"ID {last['val_identity_distance']:.3f} ({last['bicubic_identity_distance']:.3f})", flush=True)
    return {"recipe": name, "overrides": RECIPES[name], "curve": curve,
            "wall_seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faceset", required=True)
    parser.add_argument("--dictionary", required=True)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seconds", type=float, default=240, help="training seconds per recipe (validation excluded)")
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--val-pairs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10**6, help="schedule length (the lr decays over it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = TrainConfig(faceset=args.faceset, dictionary=args.dictionary, out=tmp, face_size=128, ngf=8, d_dim=8,
                           random_vgg=True, steps=args.steps, batch_size=args.batch_size, val_pairs=args.val_pairs)
        results = [run(base, name, args.seconds, args.val_every) for name in args.recipes.split(",")]
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "torch": torch.__version__, "threads": args.threads},
              "command": "python bench/bench_recipe.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
              "loadavg_end": os.getloadavg(), "results": results}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
