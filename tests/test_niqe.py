"""NIQE with dfd's own pd-faces fit: it ranks real aligned faces (the bundled portraits) above their blurred, noisy
and JPEG-damaged copies, is deterministic, and says what it expected when given what it cannot score."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from dfdcore.evaluation import niqe
from dfdcore.evaluation.niqe import NiqeModel, default_niqe_model, fit_niqe, mscn, niqe_score

DISTORTIONS = ("blur", "noise", "jpeg")


@pytest.fixture(scope="module")
def faces(portraits_dir) -> list[tuple[np.ndarray, np.ndarray]]:
    """The bundled portraits' faces, detected and aligned to 128 px as for a faceset: [(RGB uint8, lm68)]."""
    from dfdcore.data.faceset import faces_from_photos
    from dfdcore.io.images import decode_png
    from dfdcore.io.storage import list_images

    rows, _ = faces_from_photos(list_images([str(portraits_dir)]), 128)
    assert len(rows) >= 8
    return [(decode_png(r["face"]), np.asarray(r["lm68"], np.float64).reshape(68, 2)) for r in rows]


def distort(rgb: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    if kind == "blur":
        return cv2.GaussianBlur(rgb, (0, 0), 2.0)
    if kind == "noise":  # σ 15/255 of the range
        noisy = rgb + np.random.default_rng(seed).normal(0.0, 15.0, rgb.shape)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 10])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])


def test_default_model_scores_real_faces_more_natural_than_damaged_copies(faces):
    model = default_niqe_model()
    assert model.patch == 32 and "not the published" in model.source
    pristine = np.array([niqe_score(face) for face, _ in faces])
    means = {"pristine": pristine.mean()}
    for kind in DISTORTIONS:
        damaged = np.array([niqe_score(distort(face, kind, seed=i)) for i, (face, _) in enumerate(faces)])
        means[kind] = damaged.mean()
        assert damaged.mean() > pristine.mean() + 1.0, (kind, means)
        assert np.mean(damaged > pristine) >= 0.75, (kind, damaged, pristine)
    print("mean NIQE (dfd fit): " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()))
    assert np.isfinite(pristine).all() and (pristine >= 0).all()


def test_score_is_deterministic_and_reads_grey_or_rgb(faces):
    face = faces[0][0]
    assert niqe_score(face) == niqe_score(face.copy())
    grey = np.round(face.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    assert niqe_score(grey) == pytest.approx(niqe_score(face), rel=0.05)  # luma rounded to uint8: nearly the same
    features, sharpness = niqe.patch_features(niqe.to_gray(face), 32)
    assert features.shape == (16, 36) and sharpness.shape == (16,) and np.isfinite(features).all()


def test_a_fit_is_reproducible_and_survives_save_and_load(faces, tmp_path):
    images = [face for face, _ in faces]
    a, b = fit_niqe(images, source="test"), fit_niqe(iter(images), source="test")
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.cov, b.cov)
    assert a.images == len(images) and 2 <= a.patches <= 16 * len(images)
    assert np.allclose(a.cov, a.cov.T) and np.linalg.eigvalsh(a.cov).min() > -1e-9
    a.save(tmp_path / "m.npz")
    loaded = NiqeModel.load(tmp_path / "m.npz")
    assert np.array_equal(loaded.mean, a.mean) and np.array_equal(loaded.cov, a.cov)
    assert (loaded.patch, loaded.source, loaded.images, loaded.patches) == (32, "test", a.images, a.patches)
    assert niqe_score(images[0], loaded) == niqe_score(images[0], a)
    # A looser sharpness threshold keeps more patches.
    assert fit_niqe(images, sharpness=0.0).patches == 16 * len(images) > a.patches


def test_shipped_model_is_a_proper_gaussian():
    model = default_niqe_model()
    assert model.mean.shape == (36,) and model.cov.shape == (36, 36)
    assert np.allclose(model.cov, model.cov.T) and np.linalg.eigvalsh(model.cov).min() > -1e-9
    assert 0 < model.patches <= 16 * model.images


def test_shape_fits_recover_known_distributions():
    rng = np.random.default_rng(1)
    gauss, laplace = rng.normal(0, 0.5, 200_000), rng.laplace(0, 1.0, 200_000)
    shape, variance = niqe.fit_ggd(gauss)
    assert shape == pytest.approx(2.0, abs=0.05) and variance == pytest.approx(0.25, rel=0.02)
    assert niqe.fit_ggd(laplace)[0] == pytest.approx(1.0, abs=0.05)
    shape, mean, left, right = niqe.fit_aggd(gauss)
    assert shape == pytest.approx(2.0, abs=0.05) and abs(mean) < 0.01 and left == pytest.approx(right, rel=0.02)
    skewed = np.where(gauss < 0, gauss * 0.5, gauss)  # narrower left side: mean to the right
    shape, mean, left, right = niqe.fit_aggd(skewed)
    assert mean > 0.05 and left == pytest.approx(right / 4, rel=0.05)
    assert all(np.isfinite(niqe.fit_aggd(np.abs(gauss))))  # one side empty


def test_mscn_of_a_flat_image_is_zero_and_its_score_finite():
    flat = np.full((128, 128), 97.0)
    coefficients, sigma = mscn(flat)
    assert coefficients.shape == (128, 128) and np.isfinite(coefficients).all()
    assert np.abs(coefficients).max() < 1e-9 and np.abs(sigma).max() < 1e-6
    assert np.isfinite(niqe_score(np.full((128, 128, 3), 97, np.uint8)))


def test_bad_input_says_what_was_expected():
    with pytest.raises(ValueError, match=r"at least 32×64.*got 40×40"):
        niqe_score(np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match=r"uint8.*float64"):
        niqe_score(np.zeros((128, 128, 3), np.float64))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 3\).*\(128, 128, 4\)"):
        niqe_score(np.zeros((128, 128, 4), np.uint8))
    with pytest.raises(ValueError, match="even and at least 8"):
        niqe.patch_features(np.zeros((128, 128)), 31)
    with pytest.raises(ValueError, match="at least 2 sharp patches"):
        fit_niqe([])
    with pytest.raises(ValueError, match=r"mean \(36,\).*got \(3,\)"):
        NiqeModel(np.zeros(3), np.eye(3), 32, "wrong")


def test_evaluation_rows_and_table_carry_niqe(faces):
    from dfd.lifecycle import METRIC_LABELS
    from dfdcore.evaluation.pairs import HIGHER_IS_BETTER, METRIC_COLUMNS, metric_rows

    assert "niqe" in METRIC_COLUMNS and "niqe" not in HIGHER_IS_BETTER and ("niqe", "NIQE↓") in METRIC_LABELS
    (face, lm68), blurred = faces[0], distort(faces[0][0], "blur")
    rows = metric_rows([face, blurred], [{"pair": 0, "hq": face, "lm68": lm68}, {"pair": 1, "hq": face, "lm68": lm68}])
    assert [r["niqe"] for r in rows] == [niqe_score(face), niqe_score(blurred)]
    assert rows[0]["niqe"] < rows[1]["niqe"]
