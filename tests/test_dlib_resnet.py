"""The PyTorch port of dlib's face-recognition ResNet (weights read from dlib's own .dat file) gives dlib's
descriptors: on the bundled portraits always (each face's chip, shifted crops and mirror images), and on 100+ faces
of the team's public-domain set when DFD_SHARED names it."""
from __future__ import annotations

import copy
import functools

import dlib
import numpy as np
import pytest
import torch

from dfdcore.evaluation.dlib_resnet import (DlibFaceEmbedder, DlibFormatError, default_model_path, read_dlib_layers,
                                           read_dlib_network)
from dfdcore.face.models import face_recognizer, frontal_detector, shape_predictor
from dfdcore.io import read_rgb

from .conftest import ASSETS, team_file

MAX_ABS_DIFF = 1e-4
PD_FACES = "data/pd-faces/congress-hainish-225x275"  # of the team set: 225x275 portraits, faces ~150 px
PD_FACE_COUNT = 100
# A 170-px chip at padding 0.35 has the scale of dlib's 150-px chip at padding 0.25 (170 / 1.7 == 150 / 1.5 px per
# unit of dlib's face template), so its 150-px crops are that chip shifted by up to 10 px each way.
WIDE_SIZE, WIDE_PADDING, SHIFTS = 170, 0.35, ((0, 0), (0, 20), (20, 20))


@pytest.fixture(scope="module")
def embedder() -> DlibFaceEmbedder:
    torch.set_num_threads(1)
    return DlibFaceEmbedder.from_dlib_file()


def _shapes(rgb: np.ndarray, upsample: int) -> list[dlib.full_object_detection]:
    return [shape_predictor(5)(rgb, box) for box in frontal_detector()(rgb, upsample)]


def _chips(rgb: np.ndarray, shape: dlib.full_object_detection, variants: bool) -> list[np.ndarray]:
    """dlib's 150-px chip of the face; with ``variants`` also shifted crops, and the mirror image of each."""
    chips = [dlib.get_face_chip(rgb, shape, size=150, padding=0.25)]
    if variants:
        wide = dlib.get_face_chip(rgb, shape, size=WIDE_SIZE, padding=WIDE_PADDING)
        chips += [wide[y:y + 150, x:x + 150] for y, x in SHIFTS]
        chips += [chip[:, ::-1] for chip in chips]
    return [np.ascontiguousarray(chip) for chip in chips]


def _compare(embedder: DlibFaceEmbedder, chips: list[np.ndarray]) -> float:
    """Max abs difference between dlib's per-chip descriptors and the port's, run in batches of 32."""
    expected = np.array([face_recognizer().compute_face_descriptor(chip) for chip in chips])
    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        got = torch.cat([embedder(part) for part in batch.split(32)]).numpy()
    assert got.shape == expected.shape == (len(chips), 128)
    return float(np.abs(got - expected).max())


@functools.cache
def _bundled_chips() -> tuple[np.ndarray, ...]:
    chips = []
    for path in sorted(p for p in ASSETS.iterdir() if p.suffix in (".jpg", ".png")):
        rgb = read_rgb(path)
        for shape in _shapes(rgb, upsample=0):  # one face in each
            chips += _chips(rgb, shape, variants=True)
    return tuple(chips)


def test_descriptors_equal_dlib_on_bundled_faces(embedder):
    chips = _bundled_chips()
    assert len(chips) == 6 * 8  # the 6 sample photos; per face its chip, 3 shifted crops and their mirror images
    assert _compare(embedder, list(chips)) < MAX_ABS_DIFF


def test_descriptors_equal_dlib_on_team_faces(embedder):
    folder = team_file(PD_FACES)
    chips = []
    for path in sorted(folder.glob("*.jpg")):
        rgb = read_rgb(path)
        shapes = _shapes(rgb, upsample=0) or _shapes(rgb, upsample=1)
        if shapes:
            chips += _chips(rgb, shapes[0], variants=False)
        if len(chips) == PD_FACE_COUNT:
            break
    assert len(chips) == PD_FACE_COUNT, f"only {len(chips)} faces found in {folder}"
    assert _compare(embedder, chips) < MAX_ABS_DIFF


def test_batches_are_independent(embedder):
    """Each chip's descriptor is the same alone as in a batch, and float64 weights change it by < 1e-5."""
    batch = torch.from_numpy(np.stack(_bundled_chips()[:5])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        together = embedder(batch)
        alone = torch.cat([embedder(chip[None]) for chip in batch])
        precise = copy.deepcopy(embedder).double()(batch.double())
    torch.testing.assert_close(alone, together, atol=1e-6, rtol=0)
    torch.testing.assert_close(precise.float(), together, atol=1e-5, rtol=0)


def test_weights_are_read_from_the_file(embedder):
    loss, layers = read_dlib_layers(default_model_path())
    assert loss["name"] == "loss_metric_2" and abs(loss["distance_threshold"] - 0.6) < 1e-6
    kinds = [layer.kind for layer in layers]
    assert kinds.count("con") == kinds.count("affine") == 29 and kinds.count("add_prev") == 14
    state = read_dlib_network(default_model_path())
    np.testing.assert_allclose(state["mean"].numpy(), [122.782, 117.001, 104.298], rtol=1e-6)
    assert state["stem.weight"].shape == (32, 3, 7, 7) and state["fc.weight"].shape == (128, 256)
    assert sorted(state) == sorted(embedder.state_dict())
    for name, value in embedder.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_bad_input_and_files_raise(embedder, tmp_path):
    with pytest.raises(ValueError, match=r"\(B, 3, 150, 150\)"):
        embedder(torch.zeros(1, 3, 160, 160))
    data = open(default_model_path(), "rb").read()
    (tmp_path / "truncated.dat").write_bytes(data[:len(data) // 2])
    with pytest.raises(DlibFormatError, match="file ends"):
        read_dlib_layers(tmp_path / "truncated.dat")
    (tmp_path / "other.dat").write_bytes(b"\x01\x02" + data[2:])
    with pytest.raises(DlibFormatError, match="not a dlib loss_metric network"):
        read_dlib_layers(tmp_path / "other.dat")


def test_the_identity_metric_uses_the_port_and_equals_dlibs_own_call():
    """IdentityEncoder (dfd evaluate, validation) gives dlib's compute_face_descriptor(image, shape) to 1e-4."""
    import dlib

    from dfdcore.evaluation.metrics import IdentityEncoder, face_box
    from dfdcore.io.images import decode_image
    from tests.conftest import portrait

    encoder = IdentityEncoder()
    for name in ("obama.jpg", "biden.jpg", "grace_hopper.jpg"):
        rgb = np.ascontiguousarray(decode_image(portrait(name).read_bytes(), name=name).rgb8)
        box = face_box(rgb)
        ours = encoder.descriptor(rgb, box)
        shape = shape_predictor(5)(rgb, dlib.rectangle(*(int(v) for v in box)))
        theirs = np.array(face_recognizer().compute_face_descriptor(rgb, shape, 0))
        assert np.abs(ours - theirs).max() < 1e-4, name
