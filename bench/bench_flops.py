"""Floating-point operations per face of the official-size networks, counted by torch's FlopCounterMode (matrix
products and convolutions; elementwise work is left out), for the capacity model in docs/scale.md.

    python bench/bench_flops.py --out bench/results/flops.json

Counted: the DFDNet generator forward at 512 px (random weights, K = 512 random dictionaries at the official shapes);
the VGG19 feature extractor at 512 px (what the dictionary build runs per selected face); the 3-scale spectral-norm
discriminator at 512 px (D width 64). A training step is estimated from these as 3 × (generator + VGG for the
perceptual loss on output and target + discriminator on real and fake): a backward pass costs about twice a
forward, and the frozen VGG and the discriminator's real branch run forward only — stated as an estimate.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--face-size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "flops.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    from dfdcore.api import random_generator
    from dfdcore.arch.discriminator import MultiScaleSNDiscriminator
    from dfdcore.arch.vgg_weights import load_vgg
    from dfdcore.components import part_boxes

    size = args.face_size
    generator_rng = torch.Generator().manual_seed(0)
    faces = torch.rand(1, 3, size, size, generator=generator_rng) * 2 - 1
    landmarks = torch.rand(1, 68, 2, generator=generator_rng) * (size * 0.5) + size * 0.25
    boxes = part_boxes(landmarks, face_size=size)
    generator = random_generator(k=512, face_size=size, ngf=64).eval()
    vgg, _, _ = load_vgg(None, width=64, random_seed=0)
    discriminator = MultiScaleSNDiscriminator(size, 64, 3).eval()
    started = time.perf_counter()
    result = {"face_size": size,
              "generator_forward": count(lambda: generator(faces, boxes)),
              "vgg19_features": count(lambda: vgg(faces)),
              "discriminator_forward": count(lambda: discriminator(faces))}
    g, v, d = result["generator_forward"], result["vgg19_features"], result["discriminator_forward"]
    # estimate: backward ≈ 2 × forward for G and D(fake); VGG frozen but backpropagated through on the output
    result["training_step_per_image_estimate"] = 3 * g + 2 * v + v + 3 * d + d
    result["seconds_to_count"] = time.perf_counter() - started
    print(json.dumps({k: (f"{v / 1e9:.1f} GFLOP" if isinstance(v, int) and k != "face_size" else v)
                      for k, v in result.items()}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
