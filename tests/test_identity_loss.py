"""The identity loss term: dlib descriptors of restored vs target aligned faces, differentiable, through training."""
from __future__ import annotations

import cv2
import dlib
import numpy as np
import torch

from dfdcore.data.faceset import FaceSet
from dfdcore.evaluation.metrics import face_embeddings, shape_predictor
from dfdcore.io.pixels import images_to_tensor
from dfdcore.training import Trainer
from dfdcore.training.identity import IdentityLoss, face_chips, template_chip_box
from tests.test_training import small_train_config


def test_the_chip_of_an_aligned_face_is_dlibs_chip(training_data):
    """The fixed template box cuts the chip dlib cuts from the face's own landmarks: same descriptor within a
    fraction of dlib's same-person threshold (0.6)."""
    faces = FaceSet(str(training_data / "faceset.parquet"), "train")
    distances = []
    for i in range(4):
        image, _ = faces.face(i)
        shape = shape_predictor(5)(image, dlib.rectangle(12, 20, 116, 124))  # the face's own 5 points
        theirs = face_embeddings(dlib.get_face_chip(image, shape, size=150, padding=0.25)[None])[0]
        chip = face_chips(images_to_tensor([image]), template_chip_box(128))[0].permute(1, 2, 0)
        ours = face_embeddings(chip.round().clamp(0, 255).to(torch.uint8).numpy()[None])[0]
        distances.append(float(np.linalg.norm(ours - theirs)))
    print("template chip vs dlib chip, descriptor distance:", distances)
    assert max(distances) < 0.12, distances  # measured 0.058–0.085


def test_identity_loss_is_zero_on_the_target_and_its_gradient_restores_identity(training_data):
    faces = FaceSet(str(training_data / "faceset.parquet"), "train")
    hq = images_to_tensor([faces.face(i)[0] for i in range(2)])
    blurred = images_to_tensor([cv2.GaussianBlur(faces.face(i)[0], (0, 0), 3) for i in range(2)])
    loss = IdentityLoss(128)
    assert float(loss(hq, hq)) == 0.0
    restored = blurred.clone().requires_grad_(True)
    start = loss(restored, hq)
    assert start > 0.05
    optimiser = torch.optim.Adam([restored], lr=0.01)
    for _ in range(10):
        optimiser.zero_grad()
        loss(restored, hq).backward()
        optimiser.step()
    assert float(loss(restored, hq).detach()) < 0.5 * float(start.detach())
    assert not any(p.requires_grad for p in loss.parameters())  # dlib's network never trains


def test_training_with_the_identity_term_logs_it(training_data, tmp_path):
    trainer = Trainer(small_train_config(training_data, tmp_path, residual=True, identity_weight=0.1,
                                         adversarial_weight=0.0, perceptual_weight=0.0))
    logged = trainer.train_step()
    assert logged["identity"] > 0.01  # a zero head returns the LQ: a real distance from the HQ
    plain = Trainer(small_train_config(training_data, tmp_path / "plain", residual=True))
    assert plain.identity is None and plain.train_step()["identity"] == 0.0


def test_the_identity_term_waits_for_its_start(training_data, tmp_path):
    """``identity_start``: a pixel-only warm-up, then the identity term joins the generator's loss."""
    trainer = Trainer(small_train_config(training_data, tmp_path, residual=True, identity_weight=0.1,
                                         identity_start=2, adversarial_weight=0.0, perceptual_weight=0.0))
    assert [trainer.train_step()["identity"] > 0.01 for _ in range(3)] == [False, False, True]
