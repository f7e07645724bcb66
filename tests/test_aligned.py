"""`dfd restore --aligned`: already-aligned face crops (made here from the bundled portraits) are restored whole, at
their own size × --upscale, with their landmarks read against the template and their format kept."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dfd.restore_commands import restore
from dfdcore.face import align_faces
from dfdcore.face.pipeline import FIVE_OF_68, align_crop, plausible_landmarks, resize_face, template_landmarks
from dfdcore.io.images import decode_image, read_rgb
from dfdcore.io.pixels import uint8_to_unit
from dfdcore.restoration.manifest import read_manifest
from dfdcore.restoration.restorer import IdentityModel, RestoreOptions, Restorer

from .conftest import portrait

SIZES = (256, 700)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return -10 * math.log10(float(np.mean((np.asarray(a, np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """{name: path}: FFHQ-aligned crops of two portraits at 256 and 700 px, and a crop of a photo's background."""
    folder = tmp_path_factory.mktemp("aligned")
    paths = {}
    for name in ("grace_hopper.jpg", "obama.jpg"):
        [face] = align_faces(read_rgb(portrait(name)), face_size=max(SIZES))
        for size in SIZES:
            crop = cv2.resize(face.image, (size, size), interpolation=cv2.INTER_AREA)
            paths[f"{name[:-4]}_{size}"] = folder / f"{name[:-4]}_{size}.png"
            Image.fromarray(crop).save(paths[f"{name[:-4]}_{size}"])
    # the top-left corner of Grace Hopper's portrait: flag and wall, no face at any scale
    background = cv2.resize(read_rgb(portrait("grace_hopper.jpg"))[:96, :96], (300, 300), interpolation=cv2.INTER_CUBIC)
    paths["background"] = folder / "background.png"
    Image.fromarray(background).save(paths["background"])
    return paths


def restore_one(restorer: Restorer, path):
    image = decode_image(path.read_bytes(), name=path.name)
    [(_, result)] = restorer.restore_images([(path.name, image)])
    assert not isinstance(result, Exception), result
    return image, result


@pytest.mark.parametrize("size", SIZES)
def test_identity_returns_the_crop_at_its_size_with_detected_landmarks(crops, size):
    restorer = Restorer(IdentityModel(512), RestoreOptions(upscale=1, aligned=True))
    image, result = restore_one(restorer, crops[f"grace_hopper_{size}"])
    assert result.restored.shape == image.rgb.shape == (size, size, 3)
    # only the resize to 512 and back (bicubic up, area down or the reverse) separates them
    assert psnr(result.restored, image.rgb) > 40 and np.abs(result.restored - image.rgb).mean() < 1.5 / 255
    [face] = result.faces
    assert face.landmarks_source == "detected" and result.note == "aligned input; landmarks: detected"
    assert face.image.shape == (512, 512, 3) and plausible_landmarks(face.landmarks68, 512)
    # the crop is FFHQ-aligned: its eyes and nose lie on the template, in the crop's own pixels
    template5 = template_landmarks(size)[FIVE_OF_68]
    assert np.abs(face.points5 - template5).max() < 0.06 * size
    x1, y1, x2, y2 = face.detection.box
    assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size and math.isfinite(face.detection.score)


def test_upscale_multiplies_the_crop_size(crops):
    restorer = Restorer(IdentityModel(512), RestoreOptions(upscale=2, aligned=True))
    image, result = restore_one(restorer, crops["obama_256"])
    assert result.restored.shape == (512, 512, 3)
    # the 256 crop was enlarged to the model's 512 and the identity face is the output: a bicubic ×2 of the crop
    bicubic = cv2.resize(image.rgb, (512, 512), interpolation=cv2.INTER_CUBIC)
    assert psnr(np.clip(bicubic, 0, 1), result.restored) > 45


def test_a_crop_without_a_face_is_restored_on_the_template(crops):
    restorer = Restorer(IdentityModel(512), RestoreOptions(upscale=1, aligned=True))
    image, result = restore_one(restorer, crops["background"])
    [face] = result.faces
    assert face.landmarks_source in ("template box", "template") and math.isnan(face.detection.score)
    assert result.note == f"aligned input; landmarks: {face.landmarks_source}"
    assert result.restored.shape == (300, 300, 3) and psnr(result.restored, image.rgb) > 40
    # the box it was read in is the template's, in the crop's pixels
    assert face.detection.box == pytest.approx((300 * 86 / 512, 300 * 139 / 512, 300 * 415 / 512,
                                                300 * 464 / 512), abs=2)


def test_unusable_landmarks_fall_back_to_the_template():
    # a flat grey crop: dlib's predictor still draws a shape; a broken one must not reach the network
    flat = np.full((200, 200, 3), 128, np.uint8)
    face = align_crop(flat, 128)
    assert face.landmarks_source in ("template box", "template")
    if face.landmarks_source == "template":
        np.testing.assert_allclose(face.landmarks68, template_landmarks(128))
    broken = template_landmarks(128).copy()
    broken[:, 0] = 5.0  # every point on one column
    assert plausible_landmarks(template_landmarks(128), 128) and not plausible_landmarks(broken, 128)


def test_a_small_random_dfdnet_changes_the_face(crops, small_generator):
    # no colour match: the network's own output, untouched, must be the whole output
    restorer = Restorer(small_generator, RestoreOptions(upscale=1, aligned=True, color_match="none"))
    for name in ("grace_hopper_256", "obama_700", "background"):
        image, result = restore_one(restorer, crops[name])
        assert result.restored.shape == image.rgb.shape
        size = image.rgb.shape[0]
        inside = slice(size // 4, 3 * size // 4)  # the face's middle on the template
        # identity stays within 0.005 here; the random network moves the middle by 0.17 to 0.34
        assert np.abs(result.restored[inside, inside] - image.rgb[inside, inside]).mean() > 0.05, name
        # what the network saw is the whole crop at its face size, and what it made is the whole output
        np.testing.assert_array_equal(result.faces[0].image, resize_face(image.rgb8, 128, 128))
        np.testing.assert_allclose(result.restored, resize_face(uint8_to_unit(result.restored_faces[0]), size,
                                                                size), atol=1e-6)


def test_cli_writes_each_crop_at_its_size_and_format_and_records_the_faces(tmp_path, crops):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("grace_hopper_700", "background"):
        (folder / f"{name}.png").write_bytes(crops[name].read_bytes())
    grey = read_rgb(crops["obama_256"])[..., 0].astype(np.uint16) * 257 + 3  # 16-bit, below 8-bit resolution
    cv2.imwrite(str(folder / "deep.png"), grey)
    rgba = np.dstack([read_rgb(crops["obama_256"]), np.full((256, 256), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "clear.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(restore, [str(folder), "-o", str(out), "--model", "identity", "--aligned",
                                          "--upscale", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "4 restored, 0 without a face" in result.output
    with Image.open(out / "restored_imgs" / "grace_hopper_700.png") as restored:
        assert restored.size == (700, 700) and restored.mode == "RGB"
    with Image.open(out / "restored_imgs" / "deep.png") as restored:
        assert restored.size == (256, 256) and restored.mode.startswith("I")  # still 16-bit greyscale
    with Image.open(out / "restored_imgs" / "clear.png") as restored:
        assert restored.mode == "RGBA" and restored.size == (256, 256)
        assert np.abs(np.asarray(restored)[..., 3].astype(int) - 200).max() <= 1  # alpha resized, not lost
    rows = {r["relpath"]: r for r in read_manifest(str(out / "manifest.parquet")).values()}
    assert {r["status"] for r in rows.values()} == {"ok"} and all(r["n_faces"] == 1 for r in rows.values())
    face = rows["grace_hopper_700.png"]["faces"][0]
    lm68 = np.array(face["lm68"]).reshape(68, 2)  # in the crop's pixels
    assert np.abs(lm68 - template_landmarks(700)).mean() < 0.05 * 700
    assert math.isfinite(face["det_score"]) and math.isnan(rows["background.png"]["faces"][0]["det_score"])
    assert rows["grace_hopper_700.png"]["note"] == "aligned input; landmarks: detected"
    assert rows["background.png"]["note"].startswith("aligned input; landmarks: template")


def test_aligned_and_draw_box_change_the_config_hash():
    base = RestoreOptions()
    hashes = {o.config_hash({"model": "identity"}) for o in (base, RestoreOptions(aligned=True),
                                                             RestoreOptions(draw_box=True))}
    assert len(hashes) == 3


def test_every_detector_is_a_choice_of_the_options_and_the_cli():
    import typing

    from dfdcore.face.detect import DETECTORS

    detector = next(p for p in restore.params if p.name == "detector")
    assert tuple(detector.type.choices) == DETECTORS
    assert typing.get_args(typing.get_type_hints(RestoreOptions)["detector"]) == DETECTORS
    assert RestoreOptions().min_score is None and detector.default() == RestoreOptions().detector
