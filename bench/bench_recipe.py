"""Training recipes compared on the same faces for the same steps: which one learns restoration on a CPU?

Each recipe is a set of ``TrainConfig`` overrides over one base configuration (the demo's small network: 128-px
faces, ngf 8, random VGG, global batch 8, Adam lr 1e-3 with cosine decay over ``--steps``, pixel MSE only). A recipe
trains in this process (no Ray, no MLflow: the recipe is what is measured, not the plumbing) and is validated every
``--val-every`` steps on fixed degraded copies of the held-out faces, beside the bicubic baseline — and on the
training faces too, to tell under-fitting from over-fitting.

    python bench/bench_recipe.py --faceset dfd-results/demo/train/faceset.parquet \
        --dictionary dfd-results/demo/dictionary/dictionary.safetensors --degradation moderate \
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

RECIPES: dict[str, dict] = {
    # The demo before residual learning: batch 2, pixel + perceptual + adversarial from the first step.
    "plain": dict(residual=False, batch_size=2, perceptual_weight=1.0, adversarial_weight=0.1),
    "residual": dict(),
    "residual+vgg": dict(train_vgg=True, grad_clip=1.0),
    "residual+vgg+augment": dict(train_vgg=True, grad_clip=1.0, augment=1.0),
    "residual+vgg+augment+ema": dict(train_vgg=True, grad_clip=1.0, augment=1.0, ema_decay=0.99),
}


def _scores(trainer: Trainer, on_training_faces: bool = False) -> dict[str, float]:
    if not on_training_faces:
        return trainer.validate()
    view = Trainer.__new__(Trainer)  # the same trainer, validated on its training faces (cached separately)
    view.__dict__ = trainer.__dict__ | {"held_out": trainer.faces, "_validation": getattr(trainer, "_seen", None)}
    scores = view.validate()
    trainer._seen = view._validation
    return scores


def run(base: TrainConfig, name: str, val_every: int) -> dict:
    cfg = replace(base, **RECIPES[name])
    trainer = Trainer(cfg)
    curve, train_seconds = [], 0.0
    while trainer.step < cfg.steps:
        tick = time.perf_counter()
        for _ in range(min(val_every, cfg.steps - trainer.step)):
            trainer.train_step()
        train_seconds += time.perf_counter() - tick
        held_out, seen = _scores(trainer), _scores(trainer, on_training_faces=True)
        curve.append({"step": trainer.step, "seconds": train_seconds, **held_out,
                      **{f"train_{k}": v for k, v in seen.items()}})
        print(f"{name:>26} step {trainer.step:5d} {train_seconds:6.0f} s  held-out PSNR {held_out['val_psnr']:.2f} "
              f"(bicubic {held_out['bicubic_psnr']:.2f}) SSIM {held_out['val_ssim']:.3f} "
              f"({held_out['bicubic_ssim']:.3f}) ID {held_out['val_identity_distance']:.3f} "
              f"({held_out['bicubic_identity_distance']:.3f}) | training faces PSNR {seen['val_psnr']:.2f} "
              f"(bicubic {seen['bicubic_psnr']:.2f})", flush=True)
    return {"recipe": name, "overrides": RECIPES[name], "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faceset", required=True)
    parser.add_argument("--dictionary", required=True)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--degradation", default="moderate")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--val-every", type=int, default=150)
    parser.add_argument("--val-pairs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = TrainConfig(faceset=args.faceset, dictionary=args.dictionary, out=tmp, face_size=128, ngf=8, d_dim=8,
                           random_vgg=True, degradation=args.degradation, steps=args.steps, batch_size=8, lr=1e-3,
                           lr_schedule="cosine", constant_fraction=0.0, residual=True, perceptual_weight=0.0,
                           adversarial_weight=0.0, val_pairs=args.val_pairs)
        results = [run(base, name, args.val_every) for name in args.recipes.split(",")]
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "torch": torch.__version__, "threads": args.threads},
              "command": "python bench/bench_recipe.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg_end": os.getloadavg(),
              "total_seconds": time.perf_counter() - started, "results": results}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
