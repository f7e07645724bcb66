"""Training quality is behaviour: the demo's recipe, shortened, must not fall below bicubic, and what a run keeps is
never worse than where it started.

The demo's model once collapsed to 8.9 dB (bicubic 23.9) and no test noticed: these tests train through the same
path the demo takes (its ``train_config``, Ray Train with two DDP workers) on the bundled portraits."""
from __future__ import annotations

import dataclasses
import json

import pytest

from dfdcore.io.storage import read_bytes
from tests.test_training import small_train_config

QUALITY_STEPS = 200
MAX_DROP_DB = 0.3  # no validation may fall further below bicubic than this


def _validate_file(cfg, generator: str) -> dict:
    """Validation figures of an exported generator on the run's own validation pairs."""
    from dfdcore.api import load_generator
    from dfdcore.training import Trainer

    trainer = Trainer(dataclasses.replace(cfg, ema_decay=0.99))
    trainer.ema = load_generator(generator, cfg.dictionary)  # restore_eval validates the EMA slot: this file
    return trainer.validate()


def test_the_demo_recipe_shortened_stays_above_bicubic_and_keeps_a_model_no_worse_than_its_start(training_data,
                                                                                                  tmp_path):
    from dfd.flows.demo import DemoConfig, train_config
    from dfd.tasks.train import best_uris, fit, validation_history

    demo = DemoConfig(steps=QUALITY_STEPS, val_every=50, val_pairs=12)
    cfg = dataclasses.replace(train_config(demo, str(tmp_path / "run"), str(training_data / "dictionary.safetensors")),
                              faceset=str(training_data / "faceset.parquet"))
    assert cfg.workers == 2 and cfg.residual and cfg.pixel_criterion == "psnr"  # the demo's recipe, as shipped
    fit(cfg, max_failures=0)

    history = validation_history(cfg.out)
    assert [h["step"] for h in history] == [0, 50, 100, 150, 200]
    start = history[0]
    assert start["val_psnr"] == pytest.approx(start["bicubic_psnr"], abs=1e-6)  # a residual model starts at bicubic
    for h in history:
        assert h["val_psnr"] >= h["bicubic_psnr"] - MAX_DROP_DB, h
    # It learns: the best validation beats bicubic (measured +0.2 to +0.3 dB at 150 steps on this faceset).
    best_generator, best_figures = best_uris(cfg.out)
    best = json.loads(read_bytes(best_figures))
    assert best["val_psnr"] == max(h["val_psnr"] for h in history)
    assert best["val_psnr"] > best["bicubic_psnr"] + 0.05, best
    # The exported (and registered) file is the model those figures describe, and no worse than step 0.
    exported = _validate_file(cfg, best_generator)
    assert exported["val_psnr"] == pytest.approx(best["val_psnr"], abs=0.02)
    assert exported["val_psnr"] >= start["val_psnr"]


def test_a_diverging_run_keeps_its_step_0_model_and_says_so(training_data, tmp_path):
    """A learning rate far too high wrecks the model: the keeper holds on to step 0 and the summary warns."""
    from dfd.tasks.train import best_uris, divergence_warning, fit, validation_history

    cfg = small_train_config(training_data, tmp_path / "run", steps=6, batch_size=2, lr=0.5, residual=True,
                             perceptual_weight=0.0, adversarial_weight=0.0, val_every=3, val_pairs=4,
                             checkpoint_every=6, sample_every=100, log_every=1)
    fit(cfg, max_failures=0)
    history = validation_history(cfg.out)
    assert [h["step"] for h in history] == [0, 3, 6]
    assert min(h["val_psnr"] - h["bicubic_psnr"] for h in history[1:]) < -1.0  # it did diverge
    best = json.loads(read_bytes(best_uris(cfg.out)[1]))
    assert best["step"] == 0 and best["val_psnr"] == pytest.approx(best["bicubic_psnr"], abs=1e-6)
    exported = _validate_file(cfg, best_uris(cfg.out)[0])
    assert exported["val_psnr"] == pytest.approx(history[0]["val_psnr"], abs=1e-4)
    warning = divergence_warning(history)
    assert "diverged" in warning and "below bicubic" in warning
    assert divergence_warning(history[:1]) == ""
