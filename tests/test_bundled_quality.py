"""The bundled model's quality is behaviour: on the bundled portraits (people dfd-pd-128 never saw in training) it
must beat bicubic under the moderate degradation and must not make a mild input worse (a blind restorer's first
duty). The thresholds sit below the figures measured on all 121 held-out faces (docs/model-card.md), with room for
the smaller sample here; a retrained or re-bundled model that gets worse fails."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dfdcore
from dfdcore.data.degrade import DegradationConfig
from dfdcore.data.faceset import FaceSet, faces_from_photos, write_faceset
from dfdcore.evaluation.pairs import aggregate, degraded_pairs, metric_rows, restore_pairs
from dfdcore.io.storage import list_images
from dfdcore.restoration.restorer import ModelSpec

PORTRAITS = Path(dfdcore.__file__).parent / "assets" / "portraits"
PHOTOS = 36   # every third or so of the 121 portraits: 60 s of dlib and the model on two cores
PAIRS = 48


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> FaceSet:
    sources = list_images([str(PORTRAITS)])
    chosen = sources[:: max(1, len(sources) // PHOTOS)][:PHOTOS]
    rows, skipped = faces_from_photos(chosen, face_size=128)
    assert len(rows) >= PHOTOS - 2, skipped
    uri = str(tmp_path_factory.mktemp("quality") / "faceset.parquet")
    write_faceset(uri, rows, face_size=128, test_fraction=0.0)
    return FaceSet(uri, None)  # all of them: none was in the bundled model's training


def scores(faces: FaceSet, degradation: str) -> tuple[dict, dict]:
    """(bicubic, dfd-pd-128) mean metrics on ``PAIRS`` seeded pairs of ``degradation``."""
    pairs = degraded_pairs(faces, PAIRS, seed=99, config=DegradationConfig.preset(degradation))
    model = ModelSpec().resolved().build()
    restored = list(restore_pairs(model, pairs))
    bicubic = aggregate(metric_rows([p["lq"] for p in pairs], pairs))
    return bicubic, aggregate(metric_rows(restored, pairs))


def test_the_bundled_model_beats_bicubic_under_the_moderate_degradation(faces):
    bicubic, model = scores(faces, "moderate")
    print("moderate", {k: round(bicubic[k], 4) for k in bicubic}, {k: round(model[k], 4) for k in model})
    assert model["psnr"] >= bicubic["psnr"] + 0.8
    assert model["ssim"] > bicubic["ssim"] + 0.02
    assert model["identity_distance"] < bicubic["identity_distance"]
    assert model["landmark_distance"] < bicubic["landmark_distance"]


def test_the_bundled_model_does_not_make_a_mild_input_worse(faces):
    bicubic, model = scores(faces, "mild")
    print("mild", {k: round(bicubic[k], 4) for k in bicubic}, {k: round(model[k], 4) for k in model})
    assert model["psnr"] >= bicubic["psnr"]
    assert model["ssim"] >= bicubic["ssim"]
    # measured (v3): +0.0016 here (48 pairs), −0.0002 on the 121 held-out faces (v2: +0.0027 / +0.002); the first
    # bundled model, trained on ×2–10 only, was +0.012 there: this tolerance fails a model that drifts like it did
    assert model["identity_distance"] <= bicubic["identity_distance"] + 0.005
    assert np.isfinite(model["niqe"]) and model["niqe"] <= bicubic["niqe"]
