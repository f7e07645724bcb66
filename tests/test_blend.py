"""Paste-back with a landmark-shaped mask and colour matching (issue 27): the mask's shape and smoothness, colour
matching in CIELAB, and both on real bundled photos through the Restorer."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from dfdcore.evaluation.seams import delta_e00, face_metrics, skin_in_image
from dfdcore.face import align_faces
from dfdcore.face.blend import FEATHER, GROW, MASKS, face_outline, landmark_mask, prepare_faces, skin_region
from dfdcore.face.colour import COLOR_MATCHES, from_lab, match_colour, to_lab
from dfdcore.face.paste import face_mask, face_to_image_matrix, paste_faces, upscale_image, warp_weight
from dfdcore.io import read_rgb
from dfdcore.io.images import decode_image
from dfdcore.restoration.restorer import RestoreOptions, Restorer

from .conftest import portrait

TINT = np.array([6.0, 9.0, -7.0], np.float32)  # Lab shift of the "restored" faces: lighter, redder, bluer


@pytest.fixture(scope="module")
def obama():
    rgb = read_rgb(portrait("obama.jpg"))
    return rgb, {size: align_faces(rgb, face_size=size)[0] for size in (128, 512)}


def _tinted(face_rgb: np.ndarray) -> np.ndarray:
    """(S, S, 3) float RGB in [0, 1] shifted by TINT in Lab."""
    return from_lab(to_lab(face_rgb) + TINT)


def _distance_to_outline(points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, S) distance of each pixel to the outline polygon (0 inside), and whether it lies inside it."""
    u, v = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    contour = points.astype(np.float32).reshape(-1, 1, 2)
    signed = np.array([[cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x in u[0, ::4]]
                       for y in v[::4, 0]])
    return np.maximum(-signed, 0), signed >= 0  # on a 4-pixel grid: the exact test is slow in Python


@pytest.mark.parametrize("size", [128, 512])
def test_landmark_mask_is_zero_outside_the_grown_outline_and_one_inside(obama, size):
    face = obama[1][size]
    mask = landmark_mask(face.landmarks68, size)
    outside, inside = _distance_to_outline(face_outline(face.landmarks68), size)
    grid = mask[::4, ::4]
    assert grid[outside > GROW * size + 1.5].max() == 0
    assert grid[inside].min() > 0.97
    assert grid[inside].size > 0.2 * grid.size  # the outline is the face, not a speck
    # between: falls off with the distance, halfway down about half way out
    middle = (outside > 0.4 * GROW * size) & (outside < 0.6 * GROW * size)
    assert 0.3 < grid[middle].mean() < 0.7


@pytest.mark.parametrize("size", [128, 512])
def test_landmark_mask_is_smooth_and_has_no_square_corners(obama, size):
    face = obama[1][size]
    mask = landmark_mask(face.landmarks68, size)
    steepest = 1.5 / (FEATHER * size)  # a smoothstep over FEATHER·S rises at most 1.5 per FEATHER·S
    jumps = max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max())
    assert jumps <= steepest + 0.02, jumps
    assert size < 512 or jumps < 0.05
    assert mask[0, 0] == mask[0, -1] == mask[-1, 0] == mask[-1, -1] == 0
    # The weight actually pasted (times the square's own fade) is 0 all along the crop's edge, and its 0.5 level
    # line is no square: the part of the crop above half weight is far smaller than the square's.
    rgb = obama[0]
    matrix = face_to_image_matrix(face.matrix, 1)
    square = face_mask(size, matrix, rgb.shape[:2])
    pasted = square * mask
    edge = np.concatenate([pasted[0], pasted[-1], pasted[:, 0], pasted[:, -1]])
    assert edge.max() == 0
    assert (pasted > 0.5).mean() < 0.7 * (square > 0.5).mean()


def test_skin_region_leaves_out_eyes_and_mouth(obama):
    face = obama[1][128]
    skin = skin_region(face.landmarks68, 128)
    for centre in (face.landmarks68[36:42].mean(0), face.landmarks68[42:48].mean(0), face.landmarks68[48:60].mean(0)):
        x, y = np.round(centre).astype(int)
        assert not skin[y, x]
    x, y = np.round(face.landmarks68[[2, 30]].mean(0)).astype(int)  # a cheek, between jaw and nose
    assert skin[y, x] and 0.2 < skin.mean() < 0.6


@pytest.mark.parametrize("method", ["mean-std", "low-freq"])
def test_colour_match_moves_a_tinted_face_to_the_input_colour(obama, method):
    face = obama[1][128]
    original = face.image.astype(np.float32) / 255
    tinted = _tinted(original)
    region = skin_region(face.landmarks68, 128)
    before = to_lab(tinted)[region].mean(0) - to_lab(original)[region].mean(0)
    assert np.abs(before - TINT).max() < 1.0  # the tint is there (clipping aside)
    matched = match_colour(tinted, original, region, method)
    after = to_lab(matched)[region].mean(0) - to_lab(original)[region].mean(0)
    assert np.abs(after).max() < 0.5, after
    # the face itself is kept: matching an untinted face changes next to nothing
    same = match_colour(original, original, region, method)
    assert np.abs(same - original).max() < 1 / 255  # the Lab round trip of cv2 alone moves up to ~0.5/255
    with pytest.raises(ValueError, match="colour match must be one of"):
        match_colour(tinted, original, region, "histogram")


class TintModel(nn.Module):
    """Returns the aligned faces shifted by TINT in Lab: a face model that changes colour and nothing else."""

    face_size = 128
    provenance = {"model": "tint", "random_weights": False}

    def forward(self, faces: torch.Tensor, part_boxes: torch.Tensor) -> torch.Tensor:
        rgb = ((faces.permute(0, 2, 3, 1).numpy() + 1) / 2).astype(np.float32)
        tinted = np.stack([_tinted(face) for face in rgb])
        return torch.from_numpy(tinted * 2 - 1).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def tinted_photo():
    """A bundled portrait, its faces found once and "restored" by TintModel (the restorer composes them below)."""
    image = decode_image(portrait("grace_hopper.jpg").read_bytes())
    restorer = Restorer(TintModel(), RestoreOptions(upscale=1))
    faces = restorer.find_faces(image)
    return image, restorer, faces, restorer.restore_faces(faces)


@pytest.mark.parametrize("mask", MASKS)
def test_colour_match_lowers_the_colour_shift_of_a_tinted_face_on_a_real_photo(tinted_photo, mask):
    image, restorer, faces, restored = tinted_photo
    face, errors = faces[0], {}
    matrix = face_to_image_matrix(face.matrix, 1)
    (x0, y0, x1, y1), _ = warp_weight(128, matrix, image.rgb.shape[:2])
    region = skin_in_image(face, 128, matrix, (x0, y0, x1, y1), image.rgb.shape[:2])
    for colour in COLOR_MATCHES:
        restorer.options = RestoreOptions(upscale=1, color_match=colour, mask=mask, strength=1.0)
        result = restorer.compose(image, faces, restored)
        errors[colour] = delta_e00(result.restored[y0:y1, x0:x1], image.rgb[y0:y1, x0:x1], region)
    assert errors["none"][1] > 5  # the tint shows: ΔE00 of the skin's mean colour
    for colour in ("mean-std", "low-freq"):
        assert errors[colour][0] < 0.6 * errors["none"][0], errors
        assert errors[colour][1] < 0.2 * errors["none"][1], errors


def test_landmarks_mask_leaves_less_seam_than_the_square_on_a_real_photo():
    """The bundled model on a degraded bundled portrait: the seam ratio along the landmark mask's border is lower
    than along the square's (1.020 against 1.027 measured). Over all 81 faces of bench/bench_seams.py the difference
    is -0.006 ± 0.004 and four of the nine portraits go the other way (bench/RESULTS.md, "Seams and colour shift
    (issue 27)"): this pins the measured direction on one photo; it is no proof of a rule."""
    from dfdcore.restoration.restorer import ModelSpec

    rgb = read_rgb(portrait("biden.jpg"))
    shrink = 512 / max(rgb.shape[:2])  # as bench/bench_seams.py: a 512-px portrait, ÷4 and back
    rgb = cv2.resize(rgb, (round(rgb.shape[1] * shrink), round(rgb.shape[0] * shrink)), interpolation=cv2.INTER_AREA)
    small = cv2.resize(rgb, (rgb.shape[1] // 4, rgb.shape[0] // 4), interpolation=cv2.INTER_AREA)
    degraded = cv2.resize(small, rgb.shape[1::-1], interpolation=cv2.INTER_CUBIC)
    image = decode_image(cv2.imencode(".png", degraded[..., ::-1])[1].tobytes())
    restorer = Restorer(ModelSpec().build(), RestoreOptions(upscale=2))
    faces = restorer.find_faces(image)
    restored = restorer.restore_faces(faces)
    reference = upscale_image(image.rgb, 2)
    seams = {}
    for mask in MASKS:
        restorer.options = RestoreOptions(upscale=2, mask=mask, color_match="mean-std", strength=1.0)
        output = restorer.compose(image, faces, restored).restored
        seams[mask] = face_metrics(faces[0], restored[0].shape[0], output, reference, 2, mask)["seam"]
    assert seams["landmarks"] < seams["square"], seams


def test_a_face_cut_by_the_photo_edge_keeps_its_border_out_with_both_options():
    rgb = read_rgb(portrait("grace_hopper.jpg"))
    face = align_faces(rgb, face_size=128)[0]
    x_cut = int(face.points5[2:4, 0].mean())  # through the image-left eye: the crop is partly the aligner's black
    photo = np.ascontiguousarray(rgb[:, x_cut:])
    found = align_faces(photo, face_size=128)
    assert len(found) == 1, "the cut face is still found (its landmarks place it half outside the photo)"
    cut = found[0]
    background = upscale_image(photo, 2).astype(np.float32) / 255
    pairs, shapes = prepare_faces([cut], [cut.image], 2, background.shape[:2], "landmarks", "mean-std")
    pasted, weight = paste_faces(background, pairs, shapes=shapes, return_mask=True)
    assert (weight > 0.5).sum() > 1000
    assert np.array_equal(pasted[weight == 0], background[weight == 0])
    # The unchanged face, colour-matched to itself, pasted back: along the cut edge, where the crop is the
    # aligner's black, nothing gets darker (resampling alone moves pixels a little either way; black would
    # darken by ~0.4 there).
    footprint = cv2.warpAffine(np.ones((128, 128), np.float32), pairs[0][1], background.shape[1::-1],
                               flags=cv2.INTER_NEAREST) > 0
    band = np.zeros_like(footprint)
    band[:, :6] = True
    darker = (background - pasted)[band & footprint]
    assert darker.size > 100 and darker.mean() < 0.01 and darker.max() < 0.1, (darker.mean(), darker.max())


def test_options_are_checked_and_part_of_the_configuration():
    from dfd import options as cli

    assert cli.COLOR_MATCHES == COLOR_MATCHES and cli.MASKS == MASKS
    assert (cli.DEFAULT_COLOR_MATCH, cli.DEFAULT_MASK) == (RestoreOptions().color_match, RestoreOptions().mask)
    from dfdcore.restoration.restorer import PASTE_MODES

    assert cli.PASTE_MODES == PASTE_MODES and cli.DEFAULT_PASTE == RestoreOptions().paste
    hashes = {RestoreOptions(mask=m, color_match=c).config_hash({"model": "x"}) for m in MASKS for c in COLOR_MATCHES}
    assert len(hashes) == len(MASKS) * len(COLOR_MATCHES)
    with pytest.raises(ValueError, match="RestoreOptions.mask must be one of"):
        RestoreOptions(mask="circle")
    with pytest.raises(ValueError, match="RestoreOptions.color_match must be one of"):
        RestoreOptions(color_match="histogram")
    with pytest.raises(ValueError, match=r"expected a \(16, 16\) shape mask"):
        paste_faces(np.zeros((32, 32, 3)), [(np.zeros((16, 16, 3)), np.eye(2, 3))], shapes=[np.ones((8, 8))])


def test_dfd_restore_takes_both_options_and_a_change_is_new_work(tmp_path):
    import shutil

    from click.testing import CliRunner

    from dfd.cli import main
    from dfdcore.restoration.manifest import read_manifest

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    shutil.copy(portrait("astronaut.png"), folder / "astronaut.png")

    def restore(*options):
        result = CliRunner().invoke(main, ["restore", str(folder), "-o", str(out), "--model", "identity",
                                           "--upscale", "1", *options], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        [row] = read_manifest(str(out / "manifest.parquet")).values()
        return row, result.output

    default, _ = restore()
    old, said = restore("--mask", "square", "--color-match", "none")
    assert "1 restored" in said and old["config_hash"] != default["config_hash"]  # new work, not skipped
    assert "0 restored" in restore("--mask", "square", "--color-match", "none")[1]
    result = CliRunner().invoke(main, ["restore", str(folder), "-o", str(out), "--mask", "circle"])
    assert result.exit_code == 2 and "'circle' is not one of 'square', 'landmarks'" in result.output


def test_a_black_and_white_photo_stored_as_rgb_gets_no_tint_from_the_model():
    """The bundled model, trained on colour faces, tints a grey face faintly (measured: up to 6-10 levels in the
    restored crop); pasted with a colour match, the face of a grey photo stays grey. A colour photo keeps its
    colour (the check is on the crop, not the options)."""
    from dfdcore.face.colour import is_grey
    from dfdcore.restoration.restorer import ModelSpec

    rgb = read_rgb(portrait("biden.jpg"))
    grey = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    small = cv2.resize(grey, (grey.shape[1] // 4, grey.shape[0] // 4), interpolation=cv2.INTER_AREA)
    restorer = Restorer(ModelSpec().build(), RestoreOptions(upscale=4, strength=1.0))
    chroma = {}
    for match in ("none", "mean-std"):
        image = decode_image(cv2.imencode(".jpg", small[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
        faces = restorer.find_faces(image)
        restored = restorer.restore_faces(faces)
        assert is_grey(faces[0].image) and not is_grey(restored[0]), "the model should tint this grey face"
        restorer.options = RestoreOptions(upscale=4, strength=1.0, color_match=match)
        out = np.rint(restorer.compose(image, faces, restored).restored * 255)
        chroma[match] = float((out.max(axis=2) - out.min(axis=2)).max())
    assert chroma["none"] >= 3 and chroma["mean-std"] <= 1, chroma  # rounding may leave one level
    assert not is_grey(read_rgb(portrait("biden.jpg"))[100:228, 100:228])
