"""Named training recipes for ``dfd train --preset``: option values under their CLI names (underscored).

A preset fills the options the user did not give; every flag given on the command line wins. The values are
dfd's measured recipes (bench/RESULTS.md, "Training recipe" and "Real faces"), not the paper's undocumented ones.
"""
from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    # This 2-core CPU, ~2 hours alone (2.2–2.6 steps of 8 faces a second, measured on 5,214 real faces on 2026-12-07;
    # an earlier estimate of 3.3 was optimistic): 128-px faces,
    # a narrow network, residual pixel-only learning (the adversarial and random-VGG perceptual terms did not help
    # at this scale), the random VGG trained, light augmentation for a few thousand faces, EMA, per-image log-MSE,
    # the paper's ×2–10 degradation.
    "cpu-128": dict(face_size=128, ngf=8, d_dim=8, batch_size=8, workers=2, steps=16_000, lr=1e-3,
                    lr_schedule="cosine", constant_fraction=0.0, residual=True, train_vgg=True, augment=0.5,
                    grad_clip=1.0, ema_decay=0.999, pixel_criterion="psnr", perceptual_weight=0.0,
                    adversarial_weight=0.0, degradation="reference", val_every=500, val_pairs=32,
                    checkpoint_every=500, sample_every=500),
    # The paper's full size on one GPU: 512-px faces, ImageNet VGG19 (frozen, --vgg-weights), pixel + perceptual
    # from the start, the multi-scale SN adversarial term after a 20 % warm-up, mixed precision.
    "gpu-512": dict(face_size=512, ngf=64, d_dim=64, batch_size=8, workers=1, gpu=True, steps=100_000, lr=2e-4,
                    lr_schedule="cosine", constant_fraction=0.01, residual=True, grad_clip=1.0, ema_decay=0.999,
                    pixel_criterion="mse", perceptual_weight=1.0, adversarial_weight=0.1,
                    adversarial_start=20_000, degradation="reference", val_every=2000, val_pairs=64,
                    checkpoint_every=2000, sample_every=1000),
}


def preset_values(name: str) -> dict[str, object]:
    """The option values of preset ``name`` (a copy), or ValueError naming the presets there are."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return dict(PRESETS[name])
