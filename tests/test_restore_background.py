"""`dfd restore --bg-upsampler`: the wiring of dfdcore.restoration.background into the Restorer (the module itself is
tested in test_background.py): the background changes with the upsampler, the pasted faces do not, a model file is
loaded once per Restorer and its content is part of the configuration."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dfd.restore_commands import restore
from dfdcore.arch.sr import SRVGGNetCompact
from dfdcore.face.blend import prepare_faces
from dfdcore.face.paste import face_to_image_matrix, paste_faces
from dfdcore.io.images import decode_image
from dfdcore.io.pixels import uint8_to_unit
from dfdcore.restoration import background
from dfdcore.restoration.background import upscale_background
from dfdcore.restoration.restorer import IdentityModel, RestoreOptions, Restorer

from .conftest import portrait

PHOTO = "grace_hopper.jpg"


def sr_model_file(path, seed: int):
    """A tiny random ×2 Real-ESRGAN compact net saved as a plain state dict, as its releases are."""
    torch.manual_seed(seed)
    net = SRVGGNetCompact(num_feat=4, num_conv=1, scale=2)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def face_weight():
    """(H·2, W·2) blend weight of the photo's pasted faces, under the default mask as the Restorer pastes them,
    and the decoded photo."""
    image = decode_image(portrait(PHOTO).read_bytes(), name=PHOTO)
    options = RestoreOptions(upscale=2)
    restorer = Restorer(IdentityModel(512), options)
    faces = restorer.find_faces(image)
    _, shapes = prepare_faces(faces, [f.image for f in faces], 2, (1024, 1024), options.mask, options.color_match)
    pairs = [(uint8_to_unit(f.image), face_to_image_matrix(f.matrix, 2)) for f in faces]
    _, weight = paste_faces(np.zeros((1024, 1024, 3), np.float32), pairs, return_mask=True, shapes=shapes)
    assert len(faces) == 1 and (weight > 0.9999).mean() > 0.05
    return image, weight


def run_restore(folder, out, *extra):
    result = CliRunner().invoke(restore, [str(folder), "-o", str(out), "--model", "identity", "--ext", "png",
                                          *map(str, extra)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result, np.asarray(Image.open(out / "restored_imgs" / "grace_hopper.png"), np.float64) / 255


@pytest.fixture()
def photo_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(portrait(PHOTO), folder / PHOTO)
    return folder


def test_lanczos_changes_the_background_and_not_the_face(tmp_path, photo_folder, face_weight):
    image, weight = face_weight
    _, bicubic = run_restore(photo_folder, tmp_path / "bicubic")
    _, lanczos = run_restore(photo_folder, tmp_path / "lanczos", "--bg-upsampler", "lanczos")
    face, outside = weight > 0.9999, weight == 0
    assert np.abs(lanczos - bicubic)[face].max() <= 1 / 255 + 1e-9  # the same face, up to 8-bit rounding
    difference = np.abs(lanczos - bicubic)[outside]
    assert difference.mean() > 1e-3 and (difference > 1.5 / 255).mean() > 0.05
    # away from the face the output is the background module's Lanczos enlargement
    expected = np.clip(upscale_background(image.rgb, 2, "lanczos"), 0, 1)
    assert np.abs(lanczos - expected)[outside].max() <= 0.5 / 255 + 1e-6


def test_a_model_file_upscales_the_background_and_its_content_is_in_the_config(tmp_path, photo_folder,
                                                                               face_weight):
    _, weight = face_weight
    model = sr_model_file(tmp_path / "sr-x2.pth", seed=1)
    _, bicubic = run_restore(photo_folder, tmp_path / "bicubic")
    out = tmp_path / "model"
    _, first = run_restore(photo_folder, out, "--bg-upsampler", model, "--bg-tile", 64)
    face, outside = weight > 0.9999, weight == 0
    assert np.abs(first - bicubic)[face].max() <= 1 / 255 + 1e-9
    assert np.abs(first - bicubic)[outside].mean() > 0.01  # a random net adds its own residual
    again, _ = run_restore(photo_folder, out, "--bg-upsampler", model, "--bg-tile", 64)
    assert "0 restored" in again.output and "1 already done" in again.output
    sr_model_file(model, seed=2)  # retrained at the same path: another configuration
    redone, second = run_restore(photo_folder, out, "--bg-upsampler", model, "--bg-tile", 64)
    assert "1 restored" in redone.output and np.abs(second - first)[outside].mean() > 0.01


def test_the_model_is_loaded_once_per_restorer(tmp_path):
    model = sr_model_file(tmp_path / "sr.pth", seed=0)
    background._cached_model.cache_clear()
    restorer = Restorer(IdentityModel(128), RestoreOptions(upscale=2, bg_upsampler=str(model)))
    images = [(name, decode_image(portrait(name).read_bytes(), name=name)) for name in (PHOTO, "astronaut.png")]
    results = [result for _, result in restorer.restore_images(images)]
    assert all(r.restored.shape == (1024, 1024, 3) for r in results)
    assert background._cached_model.cache_info().misses == 1


def test_a_bad_model_file_is_refused_before_any_work(tmp_path, photo_folder):
    bad = tmp_path / "not-a-model.pth"
    bad.write_bytes(b"not a checkpoint")
    for spec in (bad, tmp_path / "missing.pth"):
        result = CliRunner().invoke(restore, [str(photo_folder), "-o", str(tmp_path / "out"), "--model", "identity",
                                              "--bg-upsampler", str(spec)])
        assert result.exit_code == 2 and "--bg-upsampler" in result.output, result.output
        assert not (tmp_path / "out" / "restored_imgs").exists()
