"""Training in one process: faceset tables, samples, the step, checkpoints and resume."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dfdcore.faceset import FaceSet, assign_split, training_sample
from dfdcore.degrade import DegradationConfig
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
