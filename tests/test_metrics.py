"""Image-quality metrics: PSNR/SSIM equal scikit-image's, LPIPS only from local weights, dlib identity/landmarks."""
from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from skimage import color
from skimage import metrics as skm
from skimage.io import imread

from dfdcore.evaluation import metrics
from dfdcore.face import landmarks
from tests.conftest import portrait, team_file

ASTRONAUT = portrait("astronaut.png")
IDENTITIES = "data/faces/identities"  # of the team set: 11 photos each of 5 people


def _rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(imread(path)[..., :3])


def _degrade(rgb: np.ndarray, blur: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blurred = cv2.GaussianBlur(rgb, (0, 0), blur).astype(np.float64)
    return np.clip(blurred + rng.normal(0, noise, rgb.shape), 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return _rgb(ASTRONAUT)


@pytest.fixture(scope="module")
def pairs(astronaut) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real-photo (reference, degraded) pairs of different sizes, shapes and degradations."""
    face = astronaut[20:220, 150:330]  # 200 × 180: non-square
    wide = astronaut[300:397, 0:251]  # odd sizes: 97 × 251
    return [(face, _degrade(face, 1.2, 6, 0)), (face, _degrade(face, 3.0, 0, 1)),
            (wide, _degrade(wide, 0.8, 15, 2))]


def _skimage_psnr_ssim(a: np.ndarray, b: np.ndarray, y_channel: bool) -> tuple[float, float]:
    kwargs = dict(data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    if y_channel:
        ya, yb = color.rgb2ycbcr(a)[..., 0], color.rgb2ycbcr(b)[..., 0]
        return skm.peak_signal_noise_ratio(ya, yb, data_range=255), skm.structural_similarity(ya, yb, **kwargs)
    return (skm.peak_signal_noise_ratio(a, b, data_range=255),
            skm.structural_similarity(a, b, channel_axis=-1, **kwargs))


# ----------------------------------------------------------------------------------------- PSNR / SSIM


@pytest.mark.parametrize("y_channel", [False, True], ids=["rgb", "y"])
def test_psnr_ssim_equal_scikit_image_on_real_photos(pairs, y_channel):
    for reference, degraded in pairs:
        want_psnr, want_ssim = _skimage_psnr_ssim(degraded, reference, y_channel)
        assert metrics.psnr(degraded, reference, y_channel=y_channel) == pytest.approx(want_psnr, abs=1e-6)
        assert metrics.ssim(degraded, reference, y_channel=y_channel) == pytest.approx(want_ssim, abs=1e-6)
    assert 0.3 < want_ssim < 0.99  # the pairs are neither trivial nor unrelated


def test_luma_equals_scikit_image_rgb2ycbcr(astronaut):
    y = metrics.luma(metrics.to_batch(astronaut))[0, 0].numpy()
    np.testing.assert_allclose(y, color.rgb2ycbcr(astronaut)[..., 0], atol=1e-9)
    assert 16 <= y.min() and y.max() <= 235


def test_identical_images_give_infinite_psnr_and_unit_ssim(astronaut):
    face = astronaut[:256, 128:384]
    for y_channel in (False, True):
        assert metrics.psnr(face, face.copy(), y_channel=y_channel) == float("inf")
        assert metrics.ssim(face, face.copy(), y_channel=y_channel) == pytest.approx(1.0, abs=1e-12)


def test_edge_cases_equal_scikit_image():
    flat_dark, flat_light = np.full((16, 16, 3), 40, np.uint8), np.full((16, 16, 3), 200, np.uint8)
    black, white = np.zeros((11, 11, 3), np.uint8), np.full((11, 11, 3), 255, np.uint8)  # the smallest size
    for a, b in ((flat_dark, flat_light), (black, white)):
        for y_channel in (False, True):
            want_psnr, want_ssim = _skimage_psnr_ssim(a, b, y_channel)
            assert metrics.psnr(a, b, y_channel=y_channel) == pytest.approx(want_psnr, abs=1e-6)
            assert metrics.ssim(a, b, y_channel=y_channel) == pytest.approx(want_ssim, abs=1e-6)
    assert metrics.psnr(black, white) == pytest.approx(0.0, abs=1e-12)


def test_batch_versions_agree_with_per_image(pairs):
    reference, _ = pairs[0]
    degraded = [reference, pairs[0][1], pairs[1][1]]
    a = torch.cat([metrics.to_batch(d) for d in degraded]).float()  # float32 input, as a restorer would give
    b = metrics.to_batch(reference).float().expand(len(degraded), -1, -1, -1)
    for y_channel in (False, True):
        psnrs, ssims = metrics.psnr_batch(a, b, y_channel), metrics.ssim_batch(a, b, y_channel)
        assert psnrs.shape == ssims.shape == (3,) and psnrs.dtype == torch.float64
        for i, d in enumerate(degraded):
            assert psnrs[i].item() == pytest.approx(metrics.psnr(d, reference, y_channel=y_channel), abs=1e-9)
            assert ssims[i].item() == pytest.approx(metrics.ssim(d, reference, y_channel=y_channel), abs=1e-9)
        assert psnrs[0] == float("inf") and ssims[0] == pytest.approx(1.0, abs=1e-12)


def test_inputs_are_checked():
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(image, np.zeros((32, 31, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        metrics.ssim(image, image.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        metrics.psnr_batch(torch.zeros(3, 32, 32), torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(image[:10], image[:10])


# ----------------------------------------------------------------------------------------- LPIPS


def test_lpips_unavailable_without_backbone_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for net, name in (("alex", "alexnet-owt-7be5be79.pth"), ("vgg", "vgg16-397923af.pth")):
        ok, reason = metrics.LPIPS.available(net)
        assert not ok and name in reason and str(tmp_path / "hub" / "checkpoints") in reason
        with pytest.raises(metrics.MetricUnavailable, match=name):
            metrics.LPIPS(net)
    assert not (tmp_path / "hub").exists()  # nothing fetched, nothing created
    assert metrics.LPIPS.available("squeezenet")[0] is False


def test_lpips_with_local_backbone(tmp_path, monkeypatch, astronaut):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("LPIPS tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    # Random weights of the right shapes: enough to check the wiring, not perceptual quality. Only the convolutional
    # features are read, so the test leaves out the real file's 230 MB of classifier weights.
    torch.manual_seed(0)
    features = torchvision.models.alexnet(weights=None).features.state_dict()
    torch.save({f"features.{key}": value for key, value in features.items()}, checkpoints / "alexnet-owt-7be5be79.pth")
    assert metrics.LPIPS.available("alex") == (True, "")
    assert metrics.LPIPS.available("vgg")[0] is False

    lpips = metrics.LPIPS("alex")
    face = astronaut[20:148, 150:278]
    a = torch.cat([metrics.to_batch(face), metrics.to_batch(_degrade(face, 2.0, 8, 0))])
    b = metrics.to_batch(face).expand(2, -1, -1, -1)
    distances = lpips(a, b)
    assert distances.shape == (2,)
    assert distances[0].item() == 0.0 and distances[1].item() > 0
    assert lpips.distance(face, face) == 0.0
    assert lpips.distance(face, np.ascontiguousarray(face[::-1])) > 0
    # the one-pass forward is the lpips package's own
    own = lpips.model((a / 127.5 - 1).float(), (b / 127.5 - 1).float()).flatten()
    torch.testing.assert_close(distances, own, atol=1e-6, rtol=1e-5)


def test_lpips_rejects_a_foreign_backbone_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"weight": torch.zeros(3)}, checkpoints / "alexnet-owt-7be5be79.pth")
    with pytest.raises(metrics.MetricUnavailable, match="features.0.weight"):
        metrics.LPIPS("alex")


# ----------------------------------------------------------------------------------------- identity


PEOPLE = ("John_Salley", "John_Savage", "John_Schneider", "John_Shimkus", "John_Simm")
PHOTOS_PER_PERSON = 6


@pytest.fixture(scope="module")
def descriptors() -> dict[str, list[np.ndarray]]:
    encoder = metrics.IdentityEncoder()
    folders = {person: team_file(f"{IDENTITIES}/{person}") for person in PEOPLE}
    return {person: [encoder.descriptor(_rgb(path)) for path in sorted(folder.iterdir())[:PHOTOS_PER_PERSON]]
            for person, folder in folders.items()}


def test_identity_distance_of_an_image_with_itself_is_zero():
    photo = _rgb(portrait("grace_hopper.jpg"))
    assert metrics.identity_distance(photo, photo.copy()) == 0.0
    descriptor = metrics.identity_descriptor(photo)
    assert descriptor.shape == (128,) and np.isfinite(descriptor).all()


def test_same_person_closer_than_different_people(descriptors):
    for person in PEOPLE:
        same = [np.linalg.norm(x - y) for x, y in itertools.combinations(descriptors[person], 2)]
        other = [np.linalg.norm(x - y) for x in descriptors[person]
                 for someone, theirs in descriptors.items() if someone != person for y in theirs]
        assert np.mean(same) < np.mean(other) - 0.3, (person, np.mean(same), np.mean(other))
        assert np.mean(np.less(same, metrics.SAME_PERSON_DISTANCE)) >= 0.8, (person, same)
        assert np.mean(np.less(other, metrics.SAME_PERSON_DISTANCE)) <= 0.1, (person, min(other))


def test_identity_distance_reads_both_faces_in_the_reference_box():
    photo = _rgb(portrait("obama2.jpg"))
    box = metrics.face_box(photo)
    shifted = np.roll(photo, 12, axis=1)  # a restoration that moved the face must not be re-detected
    assert metrics.identity_distance(shifted, photo) == metrics.identity_distance(shifted, photo, box)
    assert metrics.identity_distance(shifted, photo) > 0


def test_face_box_falls_back_to_the_whole_image():
    blank = np.full((120, 100, 3), 128, np.uint8)
    assert metrics.face_box(blank) == (0, 0, 99, 119)
    assert metrics.face_box(blank, whole_image_fallback=False) is None
    assert metrics.IdentityEncoder().descriptor(blank, whole_image_fallback=False) is None


# ----------------------------------------------------------------------------------------- landmarks


def test_landmark_distance_zero_when_identical_and_grows_with_shift():
    photo = _rgb(portrait("grace_hopper.jpg"))
    box = metrics.face_box(photo)
    reference = landmarks(photo, box)
    distances = [metrics.landmark_distance(np.roll(photo, shift, axis=1), reference, box) for shift in (0, 2, 4, 8)]
    assert distances[0] == 0.0
    assert all(d0 < d1 for d0, d1 in zip(distances, distances[1:])), distances
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        metrics.landmark_distance(photo, reference[:5], box)


# ----------------------------------------------------------------------------------------- one row


def test_face_metrics_row():
    target = _rgb(portrait("obama.jpg"))
    restored = _degrade(target, 1.5, 5, 0)
    row = metrics.face_metrics(restored, target)
    assert set(row) == {"psnr", "ssim", "psnr_y", "ssim_y", "lpips", "identity_distance", "landmark_distance"}
    assert row["psnr"] == pytest.approx(metrics.psnr(restored, target))
    assert row["ssim_y"] == pytest.approx(metrics.ssim(restored, target, y_channel=True))
    assert row["lpips"] is None
    assert 0 < row["identity_distance"] < metrics.SAME_PERSON_DISTANCE
    assert 0 < row["landmark_distance"] < 0.1

    same = metrics.face_metrics(target, target.copy(), box=metrics.face_box(target))
    assert same["psnr"] == float("inf") and same["ssim"] == pytest.approx(1.0)
    assert same["identity_distance"] == 0.0 and same["landmark_distance"] == 0.0
