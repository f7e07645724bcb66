"""Paste-back of aligned faces: pixel-centre geometry, round-trip fidelity on real photos, borders, order."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from dfdcore.face import align_face, align_faces, detect_faces, landmarks
from dfdcore.face.paste import face_to_image_matrix, paste_faces, upscale_image
from dfdcore.io import read_rgb

from .conftest import PORTRAITS, portrait, team_path

GROUPS = team_path("data/faces/groups")
# The bundled portraits, and the team set's group photos with at least one face (dogs.jpg has none) when given.
PHOTOS = [*PORTRAITS.values(), *sorted(p for p in (GROUPS.glob("*.*") if GROUPS else [])
                                       if p.suffix in (".jpg", ".png") and p.name != "dogs.jpg")]
# Median PSNR (dB) of the aligned faces pasted back unchanged, against the photo (upscale 1) or its bicubic 2×
# upscale (upscale 2), inside the pasted regions.
FIDELITY = {1: 38.0, 2: 37.0}


def _similarity(angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def _psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """PSNR in dB on the 0..255 scale over the (H, W) boolean ``region``."""
    return float(10 * np.log10(255.0 ** 2 / np.mean((a[region] - b[region]) ** 2)))


def _window(face_size: int, face_to_image: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Box (x0, y0, x1, y1), clipped to the image, holding the whole pasted square with a 2-pixel margin."""
    corners = np.array([[0, 0, 1], [face_size, 0, 1], [0, face_size, 1], [face_size, face_size, 1]]) @ face_to_image.T
    lo, hi = np.floor(corners.min(0)).astype(int) - 2, np.ceil(corners.max(0)).astype(int) + 2
    return max(lo[0], 0), max(lo[1], 0), min(hi[0], shape[1]), min(hi[1], shape[0])


@pytest.fixture(scope="module")
def aligned_photos():
    return [(path, rgb, align_faces(rgb, face_size=512)) for path in PHOTOS for rgb in [read_rgb(path)]]


def _identity_psnrs(aligned_photos, upscale: int, shift: float = 0.0) -> list[float]:
    """Per face: paste the aligned face back unchanged, PSNR where its blend weight exceeds 0.5."""
    psnrs = []
    for _, rgb, faces in aligned_photos:
        reference = upscale_image(rgb, upscale).astype(np.float32)
        for face in faces:
            matrix = face_to_image_matrix(face.matrix, upscale)
            matrix[:, 2] += shift
            # A window that holds the whole face square pastes exactly as the full photo would, and keeps the
            # test fast on the large photos.
            x0, y0, x1, y1 = _window(face.image.shape[0], matrix, reference.shape[:2])
            local = matrix.copy()
            local[:, 2] -= (x0, y0)
            window = reference[y0:y1, x0:x1]
            pasted, weight = paste_faces(window, [(face.image.astype(np.float32), local)], return_mask=True)
            psnrs.append(_psnr(pasted, window, weight > 0.5))
    return psnrs


@pytest.mark.parametrize("upscale", [2, 3, 4])
@pytest.mark.parametrize("interpolation", [cv2.INTER_LINEAR, cv2.INTER_CUBIC])
def test_resize_puts_pixel_centre_x_at_s_x_plus_half_s_minus_1(upscale, interpolation):
    # The centroid of an upsampled impulse sits where its pixel centre went (both kernels are symmetric).
    impulse = np.zeros((9, 9), np.float32)
    impulse[4, 3] = 1
    up = cv2.resize(impulse, (9 * upscale, 9 * upscale), interpolation=interpolation)
    xs = np.arange(9 * upscale)
    centroid = (up.sum(0) * xs).sum() / up.sum()
    assert centroid == pytest.approx(upscale * 3 + (upscale - 1) / 2, abs=1e-5)


@pytest.mark.parametrize("upscale", [1, 2, 3])
def test_face_to_image_matrix_lands_on_the_upscaled_pixel_the_face_pixel_came_from(upscale):
    height, width, size = 60, 80, 48
    ys, xs = np.mgrid[:height, :width].astype(np.float32)
    align = _similarity(0.3, 1.4, (-20.0, -5.0))  # photo → face
    # Ramps hold their own coordinates, and bilinear resampling is exact on them: the face pixel's value is the
    # photo point it was sampled from, the upscaled ramp's value the photo point each upscaled pixel shows.
    came_from = [cv2.warpAffine(r, align, (size, size), flags=cv2.INTER_LINEAR) for r in (xs, ys)]
    upscaled = [cv2.resize(r, (width * upscale, height * upscale), interpolation=cv2.INTER_LINEAR) for r in (xs, ys)]
    matrix = face_to_image_matrix(align, upscale)
    u, v = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    target = np.stack([u, v, np.ones_like(u)], -1) @ matrix.T
    map_x, map_y = target[..., 0].astype(np.float32), target[..., 1].astype(np.float32)
    lands_on = [cv2.remap(r, map_x, map_y, cv2.INTER_LINEAR, borderValue=-1000) for r in upscaled]
    inside = (map_x >= 1) & (map_y >= 1) & (map_x <= width * upscale - 2) & (map_y <= height * upscale - 2)
    inside &= (came_from[0] >= 1) & (came_from[1] >= 1)
    assert inside.mean() > 0.3
    for got, expected in zip(lands_on, came_from):
        assert np.abs(got - expected)[inside].max() < 1e-3


def test_face_to_image_matrix_inverts_the_alignment():
    align = _similarity(-0.7, 3.2, (100.0, -40.0))
    back = face_to_image_matrix(align, 1)
    assert np.allclose(back[:, :2] @ align[:, :2], np.eye(2))
    assert np.allclose(back[:, :2] @ align[:, 2] + back[:, 2], 0)


def test_upscale_image_keeps_layout_and_dtype():
    rng = np.random.default_rng(0)
    for image in (rng.integers(0, 256, (5, 7), dtype=np.uint8), rng.integers(0, 65536, (5, 7, 1), dtype=np.uint16),
                  rng.random((5, 7, 3), dtype=np.float32)):
        up = upscale_image(image, 3)
        assert up.shape == (15, 21) + image.shape[2:] and up.dtype == image.dtype
        same = upscale_image(image, 1)
        assert np.array_equal(same, image) and not np.shares_memory(same, image)
    with pytest.raises(ValueError, match="integer upscale factor >= 1, got 1.5"):
        upscale_image(image, 1.5)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) numeric background, got \(4, 4\)"):
        paste_faces(np.zeros((4, 4)), [])
    with pytest.raises(ValueError, match=r"face 0: expected an \(S, S, 3\) image, got shape \(4, 5, 3\)"):
        paste_faces(np.zeros((4, 4, 3)), [(np.zeros((4, 5, 3)), np.eye(2, 3))])
    with pytest.raises(ValueError, match=r"singular"):
        face_to_image_matrix(np.zeros((2, 3)))


@pytest.mark.parametrize("upscale", [1, 2])
def test_unchanged_faces_paste_back_onto_the_photo(aligned_photos, upscale):
    psnrs = _identity_psnrs(aligned_photos, upscale)
    assert len(psnrs) >= (50 if GROUPS else len(PORTRAITS))  # every portrait's face; 50 and more with the groups
    assert np.median(psnrs) >= FIDELITY[upscale], f"median {np.median(psnrs):.2f} dB over {len(psnrs)} faces"


@pytest.mark.parametrize("upscale", [1, 2])
def test_half_pixel_misplacement_fails_the_fidelity_bar(aligned_photos, upscale):
    # Proves the bar above is tight enough to catch a pixel-centre error (s·x instead of s·x + (s − 1)/2 is
    # such an error, of (s − 1)/2 pixels).
    psnrs = _identity_psnrs(aligned_photos, upscale, shift=0.5)
    assert np.median(psnrs) < FIDELITY[upscale] - 2, f"median {np.median(psnrs):.2f} dB"


@pytest.mark.parametrize("upscale", [1, 2])
def test_face_cut_by_the_photo_edge_does_not_darken_it(upscale):
    rgb = read_rgb(portrait("grace_hopper.jpg"))
    points = landmarks(rgb, detect_faces(rgb)[0].box, points=5)
    # Cut the photo through the image-left eye and above the eyes: the aligned face is then mostly the
    # aligner's black (constant-0) border, which must stay out of the result.
    x_cut, y_cut = int(points[2:4, 0].mean()), int(points[:4, 1].mean()) - 40
    photo = np.ascontiguousarray(rgb[y_cut:, x_cut:])
    crop, align = align_face(photo, points - (x_cut, y_cut), face_size=512)
    assert (crop.max(-1) == 0).mean() > 0.4
    background = upscale_image(photo, upscale).astype(np.float32)
    face = crop.astype(np.float32)
    background_before, face_before = background.copy(), face.copy()
    matrix = face_to_image_matrix(align, upscale)
    pasted, weight = paste_faces(background, [(face, matrix)], return_mask=True)

    assert np.array_equal(background, background_before) and np.array_equal(face, face_before)
    assert pasted.dtype == np.float32 and pasted is not background
    assert np.array_equal(pasted[weight == 0], background[weight == 0])
    assert (weight > 0.5).mean() > 0.2
    # Along the cut edges, where the face square covers the photo, nothing may get darker: resampling alone
    # moves single pixels by ≲ 12 levels either way (measured), the black border by up to ~110.
    footprint = cv2.warpAffine(np.ones((512, 512), np.float32), matrix, background.shape[1::-1],
                               flags=cv2.INTER_NEAREST) > 0
    band = np.zeros_like(footprint)
    band[:3 * upscale], band[:, :3 * upscale] = True, True
    darker = (background - pasted)[band & footprint]
    assert darker.size > 1000 and darker.mean() < 0.5 and darker.max() < 12


def test_later_faces_are_pasted_over_earlier_ones():
    background = np.full((120, 120, 3), 10, np.float32)
    first = (np.full((64, 64, 3), 50, np.float32), _similarity(0.0, 1.0, (10.0, 10.0)))
    second = (np.full((64, 64, 3), 200, np.float32), _similarity(0.1, 1.0, (40.0, 35.0)))
    alone = [paste_faces(background, [face], return_mask=True)[1] for face in (first, second)]
    overlap = (alone[0] == 1) & (alone[1] == 1)
    assert overlap.sum() > 100
    for order, expected in (([first, second], 200), ([second, first], 50)):
        pasted, weight = paste_faces(background, order, return_mask=True)
        assert np.allclose(pasted[overlap], expected) and np.allclose(weight[overlap], 1)
        assert np.all(pasted[:5, :5] == 10) and np.all(weight[:5, :5] == 0)
    assert np.all(background == 10)


def test_faces_outside_the_image_are_skipped():
    background = np.full((30, 30, 3), 7, np.float32)
    face = np.full((16, 16, 3), 99, np.float32)
    pasted = paste_faces(background, [(face, _similarity(0.0, 1.0, (100.0, 100.0)))])
    assert np.array_equal(pasted, background)
