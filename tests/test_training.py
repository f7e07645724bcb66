"""Training in one process: faceset tables, samples, the step, checkpoints and resume."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dfdcore.data.degrade import DegradationConfig
from dfdcore.data.faceset import FaceSet, assign_split, training_sample
from dfdcore.training import TrainConfig, Trainer, latest_checkpoint
from tests.conftest import SMALL


def small_train_config(root, out, **overrides) -> TrainConfig:
    values = dict(faceset=str(root / "faceset.parquet"), dictionary=str(root / "dictionary.safetensors"),
                  out=str(out), face_size=SMALL.face_size, ngf=SMALL.ngf, random_vgg=True, steps=50,
                  batch_size=2, d_dim=8, seed=0)
    return TrainConfig(**(values | overrides))


def test_split_is_per_photo_and_independent_of_order():
    ids = [f"photo{i}" for i in range(10)]
    split = assign_split(ids, 0.2, seed=1)
    assert sum(v == "test" for v in split.values()) == 2
    assert assign_split(list(reversed(ids)), 0.2, seed=1) == split
    assert assign_split(ids, 0.2, seed=2) != split
    assert assign_split(["only"], 0.5) == {"only": "train"}


def test_faceset_faces_and_landmarks_agree(training_data):
    faces = FaceSet(str(training_data / "faceset.parquet"), "train")
    assert len(faces) == 7 and faces.face_size == 128
    image, lm68 = faces.face(0)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    # On an aligned face the eyes sit in the upper half, left of centre for the image-left eye.
    left_eye, right_eye = lm68[36:42].mean(0), lm68[42:48].mean(0)
    assert left_eye[0] < 64 < right_eye[0] and 25 < left_eye[1] < 64
    test_keys = {FaceSet(str(training_data / "faceset.parquet"), "test").key(i) for i in range(2)}
    assert not test_keys & {faces.key(i) for i in range(len(faces))}


def test_samples_are_reproducible_and_flips_keep_boxes_on_their_part(training_data):
    faces = FaceSet(str(training_data / "faceset.parquet"), "train")
    reference = DegradationConfig.preset("reference")
    a = training_sample(faces, 3, seed=5, degradation=reference)
    b = training_sample(faces, 3, seed=5, degradation=reference)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])
    plain = training_sample(faces, 3, 5, reference, flip_probability=0.0)
    flipped = training_sample(faces, 3, 5, reference, flip_probability=1.0)
    # The flipped target is the mirror of the plain one (same jitter: same seed and position) ...
    assert np.abs(flipped[1][:, ::-1].astype(int) - plain[1].astype(int)).max() <= 1
    # ... and its left-eye box is the mirror of the plain right-eye box (x → S − 1 − x, within one pixel).
    mirrored = 127 - plain[2][1, [2, 0]]
    assert (flipped[2][0, [0, 2]] - mirrored).abs().max() <= 1
    assert torch.equal(flipped[2][0, [1, 3]], plain[2][1, [1, 3]])


def test_a_few_steps_lower_the_loss(training_data, tmp_path):
    trainer = Trainer(small_train_config(training_data, tmp_path, lr=1e-3, adversarial_weight=0.0))
    before = trainer.validation_loss()
    for _ in range(15):
        trainer.train_step()
    after = trainer.validation_loss()
    assert after["val_pixel"] < 0.8 * before["val_pixel"], (before, after)
    assert after["val_perceptual"] < before["val_perceptual"], (before, after)


def test_resume_gives_the_next_step_of_an_uninterrupted_run(training_data, tmp_path):
    straight = Trainer(small_train_config(training_data, tmp_path / "a"))
    losses = [straight.train_step() for _ in range(4)]

    cfg = small_train_config(training_data, tmp_path / "b")
    first = Trainer(cfg)
    for _ in range(3):
        first.train_step()
    uri = first.save()
    assert latest_checkpoint(cfg.out) == uri
    del first
    resumed = Trainer(cfg)
    resumed.load(latest_checkpoint(cfg.out))
    assert resumed.step == 3
    next_step = resumed.train_step()
    for key in ("loss_g", "loss_d", "pixel", "perceptual", "grad_norm_g", "grad_norm_d"):
        assert next_step[key] == pytest.approx(losses[3][key], rel=1e-5, abs=1e-7), key
    # A fresh trainer without the checkpoint would take a different step.
    assert Trainer(cfg).train_step()["loss_g"] != pytest.approx(losses[3]["loss_g"], rel=1e-3)


def test_exported_generator_loads_and_restores_like_the_trainer(training_data, tmp_path):
    from dfdcore.api import load_generator

    trainer = Trainer(small_train_config(training_data, tmp_path))
    for _ in range(2):
        trainer.train_step()
    path = trainer.export_generator(tmp_path / "generator.safetensors")
    loaded = load_generator(path, training_data / "dictionary.safetensors")
    pairs = trainer.fixed_pairs(2)
    lq = torch.stack([torch.from_numpy(p[0]).permute(2, 0, 1).float() / 127.5 - 1 for p in pairs])
    boxes = torch.stack([p[2] for p in pairs])
    with torch.no_grad():
        assert torch.allclose(loaded(lq, boxes).clamp(-1, 1), trainer.restore_eval(lq, boxes), atol=1e-5)
    assert loaded.provenance["random_weights"] is False


def test_config_refuses_what_cannot_work(training_data, tmp_path):
    with pytest.raises(ValueError, match="multiple of workers"):
        small_train_config(training_data, tmp_path, batch_size=3, workers=2)
    with pytest.raises(ValueError, match="VGG19 needs ImageNet weights"):
        small_train_config(training_data, tmp_path, random_vgg=False)
    cfg = small_train_config(training_data, tmp_path)
    assert cfg.lr_factor(0) == 1.0 and cfg.lr_factor(cfg.steps) == 0.0
    assert 0 < cfg.lr_factor(cfg.steps // 2) < 1
    assert TrainConfig.from_dict(dataclasses.asdict(cfg) | {"unknown": 1}) == cfg


def test_residual_training_starts_at_bicubic_and_validation_scores_beside_it(training_data, tmp_path):
    trainer = Trainer(small_train_config(training_data, tmp_path, residual=True, val_pairs=6, lr=5e-3))
    start = trainer.validate()
    # A zero head returns the LQ: the model's figures are bicubic's, to the digit.
    for name in ("psnr", "ssim", "identity_distance"):
        assert start[f"val_{name}"] == pytest.approx(start[f"bicubic_{name}"], abs=1e-9), name
    pairs, _ = trainer.validation_pairs()
    assert len(pairs) == 6 and {p["image_id"] for p in pairs} == {trainer.held_out.key(i)[0] for i in range(2)}
    for _ in range(2):
        trainer.train_step()
    after = trainer.validate()
    assert after["val_psnr"] != start["val_psnr"] and after["bicubic_psnr"] == start["bicubic_psnr"]


def test_warm_up_leaves_the_discriminator_alone_and_ema_lags_the_generator(training_data, tmp_path):
    cfg = small_train_config(training_data, tmp_path, adversarial_start=2, ema_decay=0.9, steps=10)
    trainer = Trainer(cfg)
    d_start = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
    g_start = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    logs = [trainer.train_step() for _ in range(2)]
    assert all(log["adversarial"] == 0 and log["grad_norm_d"] == 0 for log in logs)
    assert all(torch.equal(v, d_start[k]) for k, v in trainer.discriminator.state_dict().items())
    third = trainer.train_step()
    assert third["grad_norm_d"] > 0 and third["adversarial"] != 0
    assert any(not torch.equal(v, d_start[k]) for k, v in trainer.discriminator.state_dict().items())
    # The EMA copy moved from the start, but less far than the generator itself.
    key = "up4.4.weight"
    live = (trainer.generator.state_dict()[key] - g_start[key]).norm()
    average = (trainer.ema.state_dict()[key] - g_start[key]).norm()
    assert 0 < average < live
    # What is exported is the EMA copy, and a resumed trainer gets it back.
    trainer.save()
    resumed = Trainer(cfg)
    resumed.load(latest_checkpoint(cfg.out))
    assert torch.equal(resumed.ema.state_dict()[key], trainer.ema.state_dict()[key])
    assert trainer.model is trainer.ema


def test_trained_encoder_keeps_a_frozen_yardstick(training_data, tmp_path):
    trainer = Trainer(small_train_config(training_data, tmp_path, train_vgg=True, adversarial_weight=0.0))
    conv = trainer.generator.VggExtract.model.features[0].weight
    before = conv.detach().clone()
    loss_layer = trainer.perceptual.layers[0].weight.detach().clone()
    trainer.train_step()
    assert not torch.equal(conv, before)
    assert torch.equal(trainer.perceptual.layers[0].weight, loss_layer)
    assert not trainer.generator.VggExtract.RGB_mean.requires_grad


def test_recipe_settings_are_checked(training_data, tmp_path):
    with pytest.raises(ValueError, match="lr_schedule"):
        small_train_config(training_data, tmp_path, lr_schedule="step")
    with pytest.raises(ValueError, match="best_metric"):
        small_train_config(training_data, tmp_path, best_metric="loss")
    with pytest.raises(ValueError, match="ema_decay"):
        small_train_config(training_data, tmp_path, ema_decay=1.0)
    cosine = small_train_config(training_data, tmp_path, lr_schedule="cosine", constant_fraction=0.0, steps=100)
    assert cosine.lr_factor(0) == 1.0 and cosine.lr_factor(50) == pytest.approx(0.5) and cosine.lr_factor(100) == 0
    warm = small_train_config(training_data, tmp_path, adversarial_start=5)
    assert not warm.adversarial_at(4) and warm.adversarial_at(5)
    assert not small_train_config(training_data, tmp_path, adversarial_weight=0.0).adversarial_at(10)


def test_augmented_faces_move_their_landmarks_with_them(training_data):
    from dfdcore.data.faceset import augment_face

    faces = FaceSet(str(training_data / "faceset.parquet"), "train")
    image, lm68 = faces.face(0)
    warped, moved = augment_face(image, lm68, 1.0, np.random.default_rng(3))
    assert warped.shape == image.shape and not np.array_equal(warped, image)
    assert np.abs(moved - lm68).max() > 1  # the warp is not a no-op
    # The pixels around the left-eye centre moved to where its landmarks went (up to interpolation).
    def patch(img, centre):
        x, y = np.round(centre).astype(int)
        return img[y - 3:y + 4, x - 3:x + 4].astype(float).mean(axis=(0, 1))
    assert np.abs(np.sort(patch(warped, moved[36:42].mean(0))) - np.sort(patch(image, lm68[36:42].mean(0)))).max() < 25
    same, unmoved = augment_face(image, lm68, 0.0, np.random.default_rng(3))
    assert np.array_equal(same, image) and np.allclose(unmoved, lm68)


def test_restore_warns_when_the_models_own_validation_was_worse_than_bicubic(training_data, tmp_path):
    from click.testing import CliRunner

    from dfd.cli import main
    from dfdcore.api import trained_validation
    from dfdcore.evaluation.pairs import worse_than_bicubic
    from tests.conftest import portrait

    trainer = Trainer(small_train_config(training_data, tmp_path, residual=True))
    worse = {"val_psnr": 19.0, "bicubic_psnr": 20.5, "val_ssim": 0.6, "bicubic_ssim": 0.5, "step": 3}
    better = worse | {"val_psnr": 21.0}
    bad = trainer.export_generator(tmp_path / "bad.safetensors", worse)
    good = trainer.export_generator(tmp_path / "good.safetensors", better)
    assert trained_validation(bad) == worse and trained_validation(training_data / "faceset.parquet") is None
    assert worse_than_bicubic(worse) == ["PSNR 19.000 < bicubic 20.500"] and worse_than_bicubic(better) == []

    photo = str(portrait("grace_hopper.jpg"))
    args = ["restore", photo, "--dictionary", str(training_data / "dictionary.safetensors"), "--upscale", "1"]
    warned = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "a"), "--weights", str(bad)])
    assert warned.exit_code == 0, warned.output
    assert "worse than bicubic" in warned.output and "PSNR 19.000 < bicubic 20.500" in warned.output
    quiet = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "b"), "--weights", str(good)])
    assert quiet.exit_code == 0 and "worse than bicubic" not in quiet.output


def test_faceset_keeps_a_split_chosen_by_the_caller(tmp_path):
    """Held-out people (``dfd train --held-out``): rows that carry a split keep it, the rest are split per photo."""
    from dfdcore.data.faceset import write_faceset
    from dfdcore.io.images import encode_png

    face = encode_png(np.zeros((8, 8, 3), np.uint8))
    rows = [{"image_id": f"p{i}", "face_index": 0, "uri": f"train/{i}.jpg", "face": face, "lm68": [0.0] * 136}
            for i in range(6)]
    rows += [{"image_id": f"q{i}", "face_index": 0, "uri": f"held/{i}.jpg", "face": face, "lm68": [0.0] * 136,
              "split": "test"} for i in range(3)]
    rows = [r | {"split": "train"} if r["uri"].startswith("train/") else r for r in rows]
    counts = write_faceset(str(tmp_path / "f.parquet"), rows, 8, test_fraction=0.5)
    assert counts == {"train": 6, "test": 3}
    held = FaceSet(str(tmp_path / "f.parquet"), "test")
    assert sorted(held.key(i)[0] for i in range(len(held))) == ["q0", "q1", "q2"]
