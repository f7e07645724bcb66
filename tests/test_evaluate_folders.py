"""`dfd evaluate --pairs LQ_DIR HQ_DIR` and `--no-reference DIR` on folders made from the bundled portraits, with the
bundled model (dfd-pd-128), Prefect's local server and MLflow on SQLite; and the pairing and geometry they rest on."""
from __future__ import annotations

import io
import json
import math
import re

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from dfdcore.evaluation.folders import hq_face, match_pairs, photo_scale, to_hq_points
from dfdcore.evaluation.metrics import psnr
from dfdcore.io.images import read_rgb
from dfdcore.io.storage import Source
from tests.conftest import ASSETS

# Two portraits whose faces the bundled model restores better than bicubic under this degradation (0.9-1.1 dB).
NAMES = ("A000148-cse151a.jpg", "C001063-cse151a.jpg")
PORTRAITS = ASSETS / "portraits"  # the bundled portraits of members of Congress (public domain, ATTRIBUTION.md)


def degraded(rgb: np.ndarray, factor: int = 4) -> bytes:
    """A low-quality copy of an (H, W, 3) uint8 photo as JPEG bytes: blur σ 1, shrunk ×``factor``, JPEG 50."""
    height, width = rgb.shape[:2]
    small = cv2.resize(cv2.GaussianBlur(rgb, (0, 0), 1.0), (width // factor, height // factor),
                       interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", small[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 50])[1].tobytes()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """lq/ (degraded copies, .jpg) and hq/ (the originals, same names) of NAMES, and lq/ holds one photo more whose
    original is missing."""
    root = tmp_path_factory.mktemp("evaluate-folders")
    (root / "lq").mkdir()
    (root / "hq").mkdir()
    for name in NAMES:
        (root / "hq" / name).write_bytes((PORTRAITS / name).read_bytes())
        (root / "lq" / name).write_bytes(degraded(read_rgb(PORTRAITS / name)))
    (root / "lq" / "A000014-hainish.jpg").write_bytes(degraded(read_rgb(PORTRAITS / "A000014-hainish.jpg")))
    return root


def _run_id(output: str) -> str:
    found = re.search(r"mlflow\s+run ([0-9a-f]{32})", output)
    assert found, output
    return found[1]


def _rows(out, run_id: str) -> list[dict]:
    return pq.read_table(io.BytesIO((out / "metrics" / f"{run_id}.parquet").read_bytes())).to_pylist()


def test_pairs_match_by_name_and_say_why_a_file_is_left_alone():
    lq = [Source(f"/lq/{n}", n) for n in ("a.png", "b.jpg", "c.jpg", "c.png")]
    hq = [Source(f"/hq/{n}", n) for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")]
    matches = {m["image"]: m for m in match_pairs(lq, hq)}
    assert sorted(matches) == ["a", "b", "c", "d"]
    assert matches["a"]["lq"].relpath == "a.png" and matches["a"]["hq"].relpath == "a.jpg"
    assert matches["a"]["reason"] is None and matches["b"]["reason"] is None
    assert "LQ folder holds 2 files named c.*" in matches["c"]["reason"]
    assert matches["d"]["lq"] is None and matches["d"]["reason"].startswith("no LQ photo named d.*")


def test_lq_and_hq_must_be_one_picture_at_two_sizes():
    assert photo_scale((100, 50), (400, 200)) == (4.0, 4.0)
    with pytest.raises(ValueError, match="expected the same aspect ratio"):
        photo_scale((100, 50), (400, 400))
    # cv2.resize puts LQ pixel x's centre on HQ pixel s·x + (s − 1)/2: x 2 → 7 and y 5 → 16 at ×3.
    assert to_hq_points(np.array([[2.0, 5.0]]), (3.0, 3.0)).tolist() == [[7.0, 16.0]]


def test_the_hq_face_is_the_same_square_of_the_face_as_the_lq_one():
    from dfdcore.face import align_faces
    from dfdcore.face.align import align_face

    hq = read_rgb(PORTRAITS / NAMES[1])
    lq = cv2.resize(hq, (hq.shape[1] // 3, hq.shape[0] // 3), interpolation=cv2.INTER_AREA)
    scale = photo_scale((lq.shape[1], lq.shape[0]), (hq.shape[1], hq.shape[0]))
    [face] = align_faces(lq, face_size=128, detector="yunet+hog")
    one_pixel_off, _ = align_face(hq, to_hq_points(face.points5, scale) + 1, 128)
    aligned = psnr(hq_face(hq, face, scale), face.image)
    assert aligned > 30 and aligned > psnr(one_pixel_off, face.image) + 3  # measured 32.7 against 26.9 dB


def test_evaluate_pairs_scores_each_pair_and_beats_bicubic(prefect_server, folders, tmp_path):
    from dfd.cli import main

    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["evaluate", "--pairs", str(folders / "lq"), str(folders / "hq"),
                                       "-o", str(out), "--label", "bundled-pairs"])
    assert result.exit_code == 0, result.output
    run_id = _run_id(result.output)
    rows = {r["image"]: r for r in _rows(out, run_id)}
    assert sorted(rows) == sorted(n.removesuffix(".jpg") for n in (*NAMES, "A000014-hainish.jpg"))
    lonely = rows.pop("A000014-hainish")
    assert lonely["faces"] == 0 and lonely["reason"].startswith("no HQ photo named A000014-hainish.*")
    for row in rows.values():
        assert row["reason"] is None and row["faces"] == 1
        for name in ("psnr", "ssim", "identity_distance", "niqe", "photo_psnr", "bicubic_psnr", "bicubic_photo_psnr"):
            assert math.isfinite(row[name]), name
    restored = np.mean([r["psnr"] for r in rows.values()])
    bicubic = np.mean([r["bicubic_psnr"] for r in rows.values()])
    assert restored > bicubic + 0.3, (restored, bicubic)  # measured +0.98 dB

    run = MlflowClient().get_run(run_id)
    assert run.data.metrics["psnr"] == pytest.approx(restored) and run.data.metrics["scored_photos"] == 2
    assert run.data.metrics["bicubic_psnr"] == pytest.approx(bicubic)
    assert run.data.tags["evaluation"] == "pairs" and run.info.run_name == "bundled-pairs"
    assert {f.path for f in MlflowClient().list_artifacts(run_id)} >= {"samples.png", "metrics"}
    inputs = {i.dataset.name: json.loads(i.dataset.profile)["num_rows"] for i in run.inputs.dataset_inputs}
    assert inputs == {"lq_dir": len(NAMES) + 1, "hq_dir": len(NAMES)}  # the run's dataset inputs: both listings
    assert "not scored A000014-hainish: no HQ photo" in result.output
    compared = CliRunner().invoke(main, ["compare", run_id])
    assert compared.exit_code == 0 and f"{bicubic:.2f}" in compared.output.splitlines()[1], compared.output


def test_evaluate_without_reference_counts_faces_and_scores_naturalness(prefect_server, folders, tmp_path):
    from dfd.cli import main
    from dfdcore.io.images import write_image

    photos = tmp_path / "real"
    photos.mkdir()
    for name in NAMES:
        (photos / name).write_bytes((folders / "lq" / name).read_bytes())
    ramp = np.linspace(0, 255, 160 * 120, dtype=np.float64).reshape(120, 160)
    write_image(photos / "wall.png", np.dstack([ramp, ramp[::-1], np.full_like(ramp, 90)]).astype(np.uint8))
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["evaluate", "--no-reference", str(photos), "-o", str(out)])
    assert result.exit_code == 0, result.output
    run_id = _run_id(result.output)
    rows = {r["image"]: r for r in _rows(out, run_id)}
    assert sorted(rows) == sorted([*NAMES, "wall.png"])
    assert rows["wall.png"]["faces"] == 0 and rows["wall.png"]["reason"] == "no face found"
    for name in NAMES:
        row = rows[name]
        assert row["faces"] == 1 and row["reason"] is None
        assert math.isfinite(row["niqe"]) and math.isfinite(row["bicubic_niqe"])
        assert row["input_identity_distance"] < 0.6  # the restored face is still the person of the input
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics["faces"] == 2 and metrics["photos"] == 3 and "psnr" not in metrics
    assert "NIQE" in result.output and "not scored wall.png: no face found" in result.output


def test_evaluate_takes_one_source_of_photos_and_refuses_a_missing_folder(tmp_path):
    from dfd.cli import main

    both = CliRunner().invoke(main, ["evaluate", "--testset", str(tmp_path), "--no-reference", str(tmp_path)])
    assert both.exit_code == 2 and "exactly one of --testset, --pairs" in both.output
    missing = CliRunner().invoke(main, ["evaluate", "--no-reference", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such file or folder" in missing.output
    empty = CliRunner().invoke(main, ["evaluate", "--pairs", str(tmp_path), str(tmp_path)])
    assert empty.exit_code == 2 and "no photos in it" in empty.output
