"""`--strength auto` (the default): the bundled model does not make an already sharp face worse, and still restores a
blurred one (bench/bench_paste_gate.py measures it on held-out portraits; these are the bundled ones)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

import dfdcore

from dfdcore.face.strength import AUTO, auto_strength, check_strength, detail_ratio, scale_change
from dfdcore.io.images import decode_image
from dfdcore.restoration.restorer import IdentityModel, ModelSpec, RestoreOptions, Restorer

from .conftest import portrait

# held-out pd-faces portraits (people the bundled model never saw: flows/demo.py), faces ~150-350 px
BUNDLED = Path(dfdcore.__file__).parent / "assets" / "portraits"
PHOTOS = ("A000148-civicsense.jpg", "A000370-cse151a.jpg", "B001260-civicsense.jpg", "A000014-hainish.jpg")


def degrade(rgb8: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """clean: JPEG 95; mild: blur σ 1, noise σ 2/255, JPEG 85; heavy: ×6 down and bicubic up, noise σ 3/255, JPEG 75
    (bench/bench_paste_detail.py's photo-level degradations)."""
    rng = np.random.default_rng(seed)
    image = rgb8.astype(np.float32) / 255.0
    if kind == "mild":
        image = cv2.GaussianBlur(image, (0, 0), 1.0) + rng.normal(0, 2 / 255, image.shape).astype(np.float32)
    elif kind == "heavy":
        h, w = image.shape[:2]
        small = cv2.resize(image, (w // 6, h // 6), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        image = image + rng.normal(0, 3 / 255, image.shape).astype(np.float32)
    pixels = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    quality = {"clean": 95, "mild": 85, "heavy": 75}[kind]
    return cv2.imdecode(cv2.imencode(".jpg", pixels[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1],
                        cv2.IMREAD_COLOR)[..., ::-1].copy()


def face_psnr(output: np.ndarray, clean: np.ndarray, region: np.ndarray) -> float:
    error = (np.clip(output, 0, 1) * 255 - clean.astype(np.float64))[region]
    return float(10 * np.log10(255.0 ** 2 / np.mean(error ** 2)))


@pytest.fixture(scope="module")
def figures():
    """{kind: {"input" | "auto" | "full": mean face PSNR (dB) against the clean photo, "strength": mean auto
    strength}} over PHOTOS, the bundled model at --upscale 1."""
    spec = ModelSpec().resolved()
    restorer = Restorer(spec.build(), RestoreOptions(upscale=1), batch_size=4)
    rows = {kind: [] for kind in ("clean", "mild", "heavy")}
    for index, name in enumerate(PHOTOS):
        clean = decode_image((BUNDLED / name).read_bytes(), name=name).rgb8
        for kind, found in rows.items():
            degraded = degrade(clean, kind, seed=index)
            image = decode_image(cv2.imencode(".png", degraded[..., ::-1])[1].tobytes(), name=name)
            faces = restorer.find_faces(image)[:1]
            assert faces, f"{name} ({kind}) should have a face"
            restored = restorer.restore_faces(faces)
            outputs = {}
            for strength in (AUTO, 1.0):
                restorer.options = dataclasses.replace(restorer.options, strength=strength)
                outputs[strength] = restorer.compose(image, faces, restored)
            # where the model's full change moved the photo: the face the paste writes
            region = np.abs(outputs[1.0].restored - image.rgb).max(axis=2) > 1 / 255
            assert region.mean() > 0.01
            found.append({"input": face_psnr(image.rgb, clean, region),
                          "auto": face_psnr(outputs[AUTO].restored, clean, region),
                          "full": face_psnr(outputs[1.0].restored, clean, region),
                          "strength": outputs[AUTO].strengths[0]})
    return {kind: {key: float(np.mean([row[key] for row in found])) for key in found[0]}
            for kind, found in rows.items()}


def test_a_clean_face_is_left_nearly_as_it_is(figures):
    clean = figures["clean"]
    assert clean["strength"] < 0.15, clean
    assert clean["auto"] >= clean["full"] + 2.0, clean  # measured: the full change costs 2-5 dB on clean faces
    assert clean["auto"] >= clean["input"] - 0.3, clean


def test_a_mildly_degraded_face_is_not_made_worse(figures):
    mild = figures["mild"]
    assert mild["auto"] >= mild["input"] - 0.01, mild
    assert mild["auto"] >= mild["full"] - 0.01, mild


def test_a_heavily_degraded_face_keeps_its_restoration(figures):
    heavy = figures["heavy"]
    assert heavy["strength"] > 0.6, heavy
    assert heavy["full"] > heavy["input"] + 0.1, heavy  # the model helps these ...
    assert heavy["auto"] - heavy["input"] >= 0.8 * (heavy["full"] - heavy["input"]), heavy  # ... and auto keeps it


def test_the_detail_ratio_falls_as_a_face_is_blurred():
    image = decode_image(portrait("obama.jpg").read_bytes(), name="obama.jpg")
    restorer = Restorer(IdentityModel(face_size=128), RestoreOptions(upscale=1))
    crop = restorer.find_faces(image)[0].image  # (S, S, 3) uint8, the aligned face the model would see
    ratios = [detail_ratio(cv2.GaussianBlur(crop, (0, 0), sigma) if sigma else crop) for sigma in (0, 0.7, 1.2, 2)]
    assert all(a > b for a, b in zip(ratios, ratios[1:])), ratios
    assert auto_strength(crop) < 0.2 and auto_strength(cv2.GaussianBlur(crop, (0, 0), 1.2)) > 0.8, ratios
    assert detail_ratio(np.full((64, 64, 3), 128, np.uint8)) == 0.0  # flat: nothing to keep, restore fully
    with pytest.raises(ValueError, match=r"expected an \(S, S, 3\) aligned face"):
        detail_ratio(np.zeros((64, 32, 3), np.uint8))


def test_strength_values_are_checked_and_scale_the_change():
    assert check_strength("AUTO") == AUTO and check_strength("0.25") == 0.25 and check_strength(1) == 1.0
    for bad in ("sharp", -0.1, 1.5, None):
        with pytest.raises(ValueError, match="must be 'auto' or a number in"):
            RestoreOptions(strength=bad)
    assert RestoreOptions(strength="0.5").strength == 0.5
    hashes = {RestoreOptions(strength=s).config_hash({"model": "x"}) for s in (AUTO, 0.5, 1.0)}
    assert len(hashes) == 3  # a strength changes the outputs: a rerun with another one redoes them
    crop = np.zeros((16, 16, 3), np.uint8)
    restored = np.full((16, 16, 3), 200, np.uint8)
    assert scale_change(crop, restored, 1.0) is restored
    assert np.allclose(scale_change(crop, restored, 0.25), 50.0) and np.allclose(scale_change(crop, restored, 0), 0)


def test_restore_records_each_face_strength_and_says_which_faces_it_left(tmp_path):
    from click.testing import CliRunner

    from dfd.restore_commands import restore
    from dfdcore.io.images import read_rgb
    from dfdcore.restoration.manifest import read_manifest

    folder = tmp_path / "in"
    folder.mkdir()
    clean = read_rgb(BUNDLED / PHOTOS[0])
    (folder / "clean.png").write_bytes(cv2.imencode(".png", clean[..., ::-1])[1].tobytes())
    (folder / "heavy.png").write_bytes(cv2.imencode(".png", degrade(clean, "heavy", 0)[..., ::-1])[1].tobytes())
    result = CliRunner().invoke(restore, [str(folder), "-o", str(tmp_path / "out"), "--upscale", "1", "--ext", "png"])
    assert result.exit_code == 0, result.output
    assert "unchanged  1 of those faces were already sharp" in result.output, result.output
    rows = {row["relpath"]: row for row in read_manifest(str(tmp_path / "out" / "manifest.parquet")).values()}
    assert [face["strength"] for face in rows["clean.png"]["faces"]] == [0.0]
    assert rows["heavy.png"]["faces"][0]["strength"] > 0.6
    # the sharp face was left as it was: the output is the input, to the bit
    assert np.array_equal(read_rgb(tmp_path / "out" / "restored_imgs" / "clean.png"), clean)
    assert not np.array_equal(read_rgb(tmp_path / "out" / "restored_imgs" / "heavy.png"), degrade(clean, "heavy", 0))
