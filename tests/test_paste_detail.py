"""`--paste correction` (the default): a large, sharp face is not softened to the model's 128 pixels, and small faces
come out as `--paste face` makes them (bench/bench_paste_detail.py measures it on held-out portraits)."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from dfdcore.io.images import decode_image
from dfdcore.restoration.restorer import ModelSpec, RestoreOptions, Restorer

from .conftest import portrait


@pytest.fixture(scope="module")
def bundled():
    spec = ModelSpec().resolved()  # the bundled dfd-pd-128, as `dfd restore` uses it by default
    # all of the model's change: these tests are about how it is pasted (tests/test_strength.py: how much of it)
    return Restorer(spec.build(), RestoreOptions(upscale=1, strength=1.0), batch_size=4)


def _face_psnr(restorer: Restorer, image, reference: np.ndarray) -> dict[str, float]:
    """PSNR (dB, 0-255) against ``reference`` over the pasted faces' footprint, for each paste mode."""
    faces = restorer.find_faces(image)
    assert faces, "the portrait should have a face"
    restored = restorer.restore_faces(faces)
    figures = {}
    for mode in ("face", "correction"):
        restorer.options = dataclasses.replace(restorer.options, paste=mode)
        out = restorer.compose(image, faces, restored).restored
        figures[mode] = out
    changed = np.abs(figures["face"] - image.rgb).max(axis=2) > 2 / 255  # where pasting a face changed the photo
    assert changed.mean() > 0.01
    return {mode: float(10 * np.log10(1 / np.mean((np.clip(out, 0, 1) - reference)[changed] ** 2)))
            for mode, out in figures.items()}


def test_a_large_sharp_face_keeps_its_detail(bundled):
    image = decode_image(portrait("obama.jpg").read_bytes(), name="obama.jpg")
    side = 128 / np.sqrt(abs(np.linalg.det(bundled.find_faces(image)[0].matrix[:, :2])))
    assert side > 256, f"the test needs a face well above the model's 128 px, got {side:.0f}"
    psnr = _face_psnr(bundled, image, image.rgb)  # a clean photo: the best output is the input itself
    assert psnr["correction"] >= psnr["face"] + 6.0, psnr
    assert psnr["correction"] >= 38.0, psnr


def test_on_a_face_near_the_model_size_the_restoration_is_kept(bundled):
    """Where the crop holds about all the photo's detail, the added detail is only the crop's resampling loss: the
    model's change to the face stays (correction and face differ far less than either differs from the input)."""
    image = decode_image(portrait("obama.jpg").read_bytes(), name="obama.jpg")
    small = cv2.resize(image.rgb, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)  # square ~ the model's size
    data = cv2.imencode(".png", np.rint(small[..., ::-1] * 255).astype(np.uint8))[1].tobytes()
    shrunk = decode_image(data, name="small.png")
    faces = bundled.find_faces(shrunk)
    side = 128 / np.sqrt(abs(np.linalg.det(faces[0].matrix[:, :2])))
    assert side < 160, f"the test needs a face near the model's 128 px, got {side:.0f}"
    restored = bundled.restore_faces(faces)
    outputs = {}
    for mode in ("face", "correction"):
        bundled.options = dataclasses.replace(bundled.options, paste=mode)
        outputs[mode] = np.clip(bundled.compose(shrunk, faces, restored).restored, 0, 1)
    changed = np.abs(outputs["face"] - shrunk.rgb).max(axis=2) > 2 / 255
    model_change = np.abs(outputs["face"] - shrunk.rgb)[changed].mean()
    between = np.abs(outputs["correction"] - outputs["face"])[changed].mean()
    assert between < 0.75 * model_change, (between, model_change)  # measured 0.0054 against 0.0098
