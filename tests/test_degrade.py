"""The synthetic degradation model (dfdcore.data.degrade): steps alone, then the sampled pipeline and its presets."""
from __future__ import annotations

import json
import math
from fractions import Fraction

import cv2
import numpy as np
import pytest

from dfdcore.data.degrade import (
    PRESETS,
    DegradationConfig,
    Degraded,
    add_noise,
    color_jitter,
    degrade,
    downsample,
    gaussian_blur,
    gaussian_kernel,
    jpeg,
    motion_blur,
    motion_kernel,
    to_gray,
    upsample,
)


def textured(size: int = 128, seed: int = 0) -> np.ndarray:
    """A face-sized RGB image: smooth colour structure plus fine luminance grain (chroma grain JPEG would blur away
    at any quality, through its chroma subsampling)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = 128 + 60 * np.sin(2 * np.pi * 3 * x)[..., None] * np.cos(2 * np.pi * 2 * y)[..., None] * [1.0, 0.7, 0.4]
    return np.clip(base + rng.normal(0, 25, (size, size, 1)), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255 ** 2 / mse)


def high_freq(img: np.ndarray) -> float:
    """Mean squared horizontal + vertical neighbour difference."""
    f = img.astype(np.float64)
    return float(np.mean(np.diff(f, axis=0) ** 2) + np.mean(np.diff(f, axis=1) ** 2))


# ------------------------------------------------------------------ steps alone

@pytest.mark.parametrize("size, r", [(128, 2.0), (128, 2.1), (128, 3.2), (128, 4.7), (128, 10.0), (100, 6.4),
                                     (66, 2.2), (81, 2.7), (512, 9.9)])  # 66 / 2.2 is 29.999… in floating point
def test_downsample_side_is_floor_of_size_over_factor(size, r):
    out = downsample(textured(size), r)
    side = math.floor(Fraction(size) / Fraction(str(r)))
    assert out.shape == (side, side, 3) and out.dtype == np.uint8
    assert upsample(out, size).shape == (size, size, 3)


@pytest.mark.parametrize("sigma", [2, 5, 10])
def test_noise_std_matches_sigma_on_flat_grey(sigma):
    flat = np.full((256, 256, 3), 128, np.uint8)
    out = add_noise(flat, sigma, np.random.default_rng(0))
    measured = (out.astype(np.float64) - 128).std()
    # rounding to integers adds variance 1/12 (Sheppard); otherwise σ within 2 %
    assert measured == pytest.approx(math.sqrt(sigma ** 2 + 1 / 12), rel=0.02)
    assert abs((out.astype(np.float64) - 128).mean()) < 0.05 * sigma


def test_noise_clamps_at_0_and_255():
    rng = np.random.default_rng(1)
    black = add_noise(np.zeros((128, 128, 3), np.uint8), 5, rng)
    white = add_noise(np.full((128, 128, 3), 255, np.uint8), 5, rng)
    # without clamping about half the pixels would fall outside; rint(x) <= 0 for x < 0.5: P = Φ(0.1) ≈ 0.54
    assert 0.5 < np.mean(black == 0) < 0.6 and black.mean() > 1.5
    assert 0.5 < np.mean(white == 255) < 0.6 and white.mean() < 253.5


def test_jpeg_lower_quality_loses_more():
    img = textured()
    p40, p80 = psnr(img, jpeg(img, 40)), psnr(img, jpeg(img, 80))
    assert p40 < p80 - 3.0
    assert p80 < 45  # both lose something
    assert jpeg(img, 40).shape == img.shape and jpeg(img, 40).dtype == np.uint8


def test_jpeg_keeps_channel_order():
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 200
    out = jpeg(red, 60).astype(np.int64)
    assert abs(out[..., 0].mean() - 200) < 3 and out[..., 2].mean() < 3


def test_gaussian_blur_keeps_mean_and_removes_high_frequencies_more_with_larger_sigma():
    img = textured()
    mild, strong = gaussian_blur(img, 15, 0.8), gaussian_blur(img, 15, 2.0)
    for out in (mild, strong):
        assert out.shape == img.shape and out.dtype == np.uint8
        assert abs(out.astype(np.float64).mean() - img.astype(np.float64).mean()) < 0.5
    hf = high_freq(img), high_freq(mild), high_freq(strong)
    assert hf[2] < 0.5 * hf[1] and hf[1] < 0.5 * hf[0]


@pytest.mark.parametrize("size", [7, 15, 35])
def test_motion_kernel_is_a_normalised_centred_kernel(size):
    rng = np.random.default_rng(size)
    kernels = [motion_kernel(size, rng) for _ in range(6)]
    centre = (size - 1) / 2
    for k in kernels:
        assert k.shape == (size, size) and k.dtype == np.float64
        assert k.sum() == pytest.approx(1.0, abs=1e-12) and k.min() >= 0
        rows, cols = np.mgrid[0:size, 0:size]
        assert (k * rows).sum() == pytest.approx(centre, abs=1e-6)
        assert (k * cols).sum() == pytest.approx(centre, abs=1e-6)
        assert not np.allclose(k, k.T)            # anisotropic
        assert np.count_nonzero(k > 1e-3) < 0.6 * size * size  # a path, not a blob
    assert all(not np.allclose(a, b) for i, a in enumerate(kernels) for b in kernels[i + 1:])


def test_motion_kernel_rejects_even_sizes():
    with pytest.raises(ValueError, match="odd"):
        motion_kernel(8, np.random.default_rng(0))


def test_motion_blur_keeps_mean_and_smooths():
    img = textured()
    out = motion_blur(img, motion_kernel(15, np.random.default_rng(3)))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert abs(out.astype(np.float64).mean() - img.astype(np.float64).mean()) < 0.5
    assert high_freq(out) < 0.5 * high_freq(img)


def test_anisotropic_gaussian_kernel():
    k = gaussian_kernel(41, 1.0, 6.0, 0.3)
    assert k.sum() == pytest.approx(1.0) and k.min() >= 0
    assert not np.allclose(k, k.T)
    assert np.allclose(gaussian_kernel(41, 3.0, 3.0, 1.0), gaussian_kernel(41, 3.0, 3.0, 0.0))


def test_color_jitter_factors_in_range_and_effects():
    img = textured(64)
    rng = np.random.default_rng(5)
    for _ in range(40):
        out, f = color_jitter(img, 0.3, 0.3, 0.3, rng)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert all(0.7 <= f[name] <= 1.3 for name in ("brightness", "contrast", "saturation"))
        assert sorted(f["order"]) == ["brightness", "contrast", "saturation"]
    # brightness alone scales pixels
    out, f = color_jitter(img, 0.3, 0.0, 0.0, np.random.default_rng(6))
    assert f["contrast"] is None and f["order"] == ["brightness"]
    assert out.astype(np.float64).mean() == pytest.approx(img.mean() * f["brightness"], rel=0.02)
    # saturation alone keeps the grey level
    grey = to_gray(img)
    out, _ = color_jitter(grey, 0.0, 0.0, 0.3, np.random.default_rng(7))
    assert np.abs(out.astype(int) - grey.astype(int)).max() <= 1


# ------------------------------------------------------------------ the sampled pipeline

def test_degrade_shapes_dtypes_and_json_params():
    img = textured()
    for name in PRESETS:
        for index in range(4):
            d = degrade(img, DegradationConfig.preset(name), seed=0, index=index)
            assert isinstance(d, Degraded)
            assert d.lq.shape == d.target.shape == (128, 128, 3)
            assert d.lq.dtype == d.target.dtype == np.uint8
            assert json.loads(json.dumps(d.params)) == d.params
            assert d.params["preset"] == name


def test_degrade_is_reproducible_and_index_dependent():
    img = textured()
    a, b = degrade(img, seed=11, index=3), degrade(img, seed=11, index=3)
    assert a.lq.tobytes() == b.lq.tobytes() and a.target.tobytes() == b.target.tobytes()
    assert a.params == b.params
    c = degrade(img, seed=11, index=4)
    assert c.lq.tobytes() != a.lq.tobytes() and c.params != a.params
    assert degrade(img, seed=12, index=3).lq.tobytes() != a.lq.tobytes()


def test_degrade_leaves_input_unchanged_and_owns_its_outputs():
    img = textured()
    before = img.copy()
    for index in range(6):
        d = degrade(img, seed=0, index=index)
        assert np.shares_memory(d.lq, img) is False and np.shares_memory(d.target, img) is False
    assert np.array_equal(img, before)
    plain = DegradationConfig(name="none", jitter_p=0, blur_p=0, downsample_p=0, noise_p=0, jpeg_p=0)
    d = degrade(img, plain, seed=0, index=0)
    assert np.array_equal(d.target, img) and np.array_equal(d.lq, img)
    d.target[:] = 0
    assert np.array_equal(img, before)


def test_reference_probabilities_and_ranges():
    img = textured(64)
    ps = [degrade(img, seed=2024, index=i).params for i in range(300)]
    blurred = [p for p in ps if p["blur"] is not None]
    frac = {
        "blur": len(blurred) / len(ps),
        "gaussian": sum(p["blur"] == "gaussian" for p in blurred) / len(blurred),
        "noise": np.mean([p["noise_sigma"] is not None for p in ps]),
        "jpeg": np.mean([p["jpeg_quality"] is not None for p in ps]),
        "scale": np.mean([p["scale"] is not None for p in ps]),
    }
    assert frac["blur"] == pytest.approx(0.9, abs=0.06)
    assert frac["gaussian"] == pytest.approx(0.65, abs=0.08)
    assert frac["noise"] == pytest.approx(0.9, abs=0.06)
    assert frac["jpeg"] == pytest.approx(0.6, abs=0.08)
    assert frac["scale"] == pytest.approx(0.95, abs=0.04)
    assert {p["blur"] for p in blurred} == {"gaussian", "motion"}
    for p in ps:
        assert all(0.7 <= p["jitter"][k] <= 1.3 for k in ("brightness", "contrast", "saturation"))
        if p["blur"] == "gaussian":
            assert p["kernel_size"] in range(3, 36, 2) and 0.3 <= p["sigma"] <= 2.0
            assert round(p["sigma"] * 10) == pytest.approx(p["sigma"] * 10, abs=1e-9)
        if p["blur"] == "motion":
            assert p["kernel_size"] in range(7, 36, 2)
        if p["scale"] is not None:
            assert 2.0 <= p["scale"] <= 10.0 and round(p["scale"] * 10) == pytest.approx(p["scale"] * 10, abs=1e-9)
        if p["noise_sigma"] is not None:
            assert isinstance(p["noise_sigma"], int) and 1 <= p["noise_sigma"] <= 10
        if p["jpeg_quality"] is not None:
            assert 40 <= p["jpeg_quality"] <= 80
    # the draws cover their ranges rather than sticking to one value
    assert len({p["noise_sigma"] for p in ps}) == 11 and len({p["jpeg_quality"] for p in ps}) > 30


def test_degrade_lowers_quality_on_average():
    img = textured()
    ds = [degrade(img, seed=5, index=i) for i in range(10)]
    assert np.mean([psnr(d.target, d.lq) for d in ds]) < 30
    assert any(not np.array_equal(d.target, img) for d in ds)  # colour jitter changes the target


def test_gfpgan_preset_ranges_and_difference_from_reference():
    img = textured(96)
    cfg = DegradationConfig.preset("gfpgan")
    ps = [degrade(img, cfg, seed=1, index=i).params for i in range(80)]
    for p in ps:
        assert p["blur"] in ("gaussian", "anisotropic") and p["kernel_size"] == 41
        sigmas = [p["sigma"]] if p["blur"] == "gaussian" else [p["sigma_x"], p["sigma_y"]]
        assert all(0.1 <= s <= 10 for s in sigmas)
        assert 0.8 <= p["scale"] <= 8 and 0 <= p["noise_sigma"] <= 20 and 60 <= p["jpeg_quality"] <= 100
        assert p["jitter"] is None
        assert p["shift"] is None or all(abs(s) <= 20 for s in p["shift"])
    assert {p["blur"] for p in ps} == {"gaussian", "anisotropic"}
    assert 0.15 < np.mean([p["shift"] is not None for p in ps]) < 0.45
    assert any(p["scale"] < 1 for p in ps) and any(p["scale"] > 6 for p in ps)
    ref = degrade(img, seed=1, index=0)
    gfp = degrade(img, cfg, seed=1, index=0)
    assert ref.params != gfp.params and ref.lq.tobytes() != gfp.lq.tobytes()


def test_gray_converts_both_images():
    cfg = DegradationConfig(name="grey", gray_p=1.0)
    d = degrade(textured(), cfg, seed=0, index=0)
    assert d.params["gray"] is True
    for out in (d.lq, d.target):
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


@pytest.mark.parametrize("bad", [
    np.zeros((128, 128), np.uint8),
    np.zeros((128, 128, 4), np.uint8),
    np.zeros((128, 128, 3), np.float32),
    np.zeros((128, 96, 3), np.uint8),
    np.zeros((8, 8, 3), np.uint8),
    [[0, 0, 0]],
])
def test_bad_inputs_raise(bad):
    with pytest.raises(ValueError, match="expected"):
        degrade(bad, seed=0, index=0)


def test_bad_config_and_preset_raise():
    with pytest.raises(ValueError, match="unknown degradation preset"):
        DegradationConfig.preset("realesrgan")
    with pytest.raises(ValueError, match="probabilities"):
        DegradationConfig(blur_p=1.5)
    with pytest.raises(ValueError, match="odd"):
        DegradationConfig(gaussian_sizes=(4,))
    with pytest.raises(ValueError, match="resample"):
        DegradationConfig(resample="lanczos")
    assert DegradationConfig.preset("reference") == DegradationConfig()


def test_degraded_photo_is_smaller_reproducible_and_worse():
    from dfdcore.data.degrade import degrade_photo
    from dfdcore.evaluation.metrics import psnr
    from dfdcore.face.paste import upscale_image

    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), (0, 0), 2)
    low = degrade_photo(photo, 3, seed=1)
    assert low.shape == (30, 40, 3) and low.dtype == np.uint8
    assert np.array_equal(low, degrade_photo(photo, 3, seed=1))
    assert not np.array_equal(low, degrade_photo(photo, 3, seed=2))  # the noise follows the seed
    back = (upscale_image(low.astype(np.float32) / 255, 3) * 255).round().clip(0, 255).astype(np.uint8)
    assert psnr(back, photo) < 35
    with pytest.raises(ValueError, match="factor"):
        degrade_photo(photo, 8)


def test_cli_offers_every_degradation_preset():
    from dfd.lifecycle import DEGRADATIONS

    assert DEGRADATIONS == PRESETS


def test_mild_is_milder_than_moderate_and_blind_reaches_both_ends():
    """The mild preset keeps most of the face (it tests doing no harm); the blind one draws from ×1 to ×8."""
    img = textured()

    def mean_error(name: str) -> float:
        pairs = [degrade(img, DegradationConfig.preset(name), seed=3, index=i) for i in range(24)]
        return float(np.mean([np.abs(p.lq.astype(float) - p.target.astype(float)).mean() for p in pairs]))

    assert mean_error("mild") < 0.75 * mean_error("moderate")  # measured 0.66 on this texture
    scales = [degrade(img, DegradationConfig.preset("blind"), seed=3, index=i).params["scale"] for i in range(200)]
    drawn = [s for s in scales if s is not None]
    assert min(drawn) < 1.5 and max(drawn) > 6.0
