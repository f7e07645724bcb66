"""The evaluate flow on a paired test set (Prefect's local server, MLflow on SQLite) and `dfd compare`."""
from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from dfdcore.evaluation.metrics import psnr, ssim
from dfdcore.evaluation.pairs import METRIC_COLUMNS, make_pairs, read_pairs
from dfdcore.restoration.restorer import ModelSpec


def test_pairs_are_reproducible_from_held_out_faces(training_data, tmp_path):
    faceset = str(training_data / "faceset.parquet")
    assert make_pairs(faceset, str(tmp_path / "a.parquet"), seed=3) == 2
    make_pairs(faceset, str(tmp_path / "b.parquet"), seed=3)
    make_pairs(faceset, str(tmp_path / "c.parquet"), seed=4)
    a, meta = read_pairs(str(tmp_path / "a.parquet"))
    b, _ = read_pairs(str(tmp_path / "b.parquet"))
    c, _ = read_pairs(str(tmp_path / "c.parquet"))
    assert meta["face_size"] == "128" and meta["seed"] == "3"
    assert all((x["lq"] == y["lq"]).all() and (x["hq"] == y["hq"]).all() for x, y in zip(a, b))
    assert any((x["lq"] != y["lq"]).any() for x, y in zip(a, c))
    assert all(psnr(p["lq"], p["hq"]) < 40 for p in a)  # the LQ really is degraded


def test_evaluate_identity_equals_bicubic_and_a_random_model_is_worse(prefect_server, training_data, tmp_path):
    from dfd.cli import main
    from dfd.flows.evaluate import evaluate

    testset = str(tmp_path / "testset")
    identity = evaluate(ModelSpec(name="identity"), testset, faceset=str(training_data / "faceset.parquet"))
    pairs_bytes = (tmp_path / "testset" / "pairs.parquet").read_bytes()
    random = evaluate(ModelSpec(random_weights=True, face_size=128, ngf=8, k=8), testset, seed=99, label="random")
    assert (tmp_path / "testset" / "pairs.parquet").read_bytes() == pairs_bytes  # made once, never remade

    # The identity model returns the bicubic LQ: every metric equals the baseline's (and the baseline is real).
    assert identity.pairs == 2
    for name in ("psnr", "ssim", "psnr_y", "ssim_y", "identity_distance", "landmark_distance"):
        assert identity.metrics[name] == pytest.approx(identity.bicubic[name], abs=1e-9), name
    pairs, _ = read_pairs(str(tmp_path / "testset" / "pairs.parquet"))
    expected = sum(psnr(p["lq"], p["hq"]) for p in pairs) / len(pairs)
    assert identity.bicubic["psnr"] == pytest.approx(expected, abs=1e-9)
    assert identity.bicubic["ssim"] == pytest.approx(sum(ssim(p["lq"], p["hq"]) for p in pairs) / 2, abs=1e-9)
    # An untrained random network is far from the targets.
    assert random.metrics["psnr"] < identity.bicubic["psnr"] - 3

    # LPIPS backbone weights are not on this machine: reported as unavailable, never estimated.
    client = MlflowClient()
    run = client.get_run(random.run_id)
    assert "lpips" not in run.data.metrics and run.data.tags["lpips"].startswith("unavailable")
    assert run.data.metrics["bicubic_psnr"] == pytest.approx(identity.bicubic["psnr"])
    rows = pq.read_table(io.BytesIO((tmp_path / "testset" / "metrics" / f"{random.run_id}.parquet").read_bytes()))
    assert rows.num_rows == 2 and set(METRIC_COLUMNS) <= set(rows.column_names)
    assert {f.path for f in client.list_artifacts(random.run_id)} >= {"samples.png", "metrics"}

    result = CliRunner().invoke(main, ["compare", identity.run_id, random.run_id])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].startswith("bicubic") and "random" in lines[3]
    assert f"{identity.bicubic['psnr']:.2f}" in lines[1] and f"{random.metrics['psnr']:.2f}" in lines[3]
    assert "n/a" in lines[3]  # LPIPS
    missing = CliRunner().invoke(main, ["compare", "0" * 32])
    assert missing.exit_code != 0 and "no MLflow run" in missing.output


def test_demo_runs_the_whole_life_cycle(prefect_server, tmp_path):
    """`dfd demo` with a few training steps on a few people: split by person → dictionary → train → evaluate →
    restore with the demo model and the bundled one, and an honest verdict."""
    import re

    from dfd.cli import main
    from dfd.flows.demo import person_of

    result = CliRunner().invoke(main, ["demo", "-o", str(tmp_path / "demo"), "--steps", "3", "--people", "6"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "demo"
    assert (out / "dictionary" / "dictionary.safetensors").is_file()
    assert (out / "train" / "generator.safetensors").is_file()
    assert (out / "train" / "checkpoints" / "step_00000003" / "train_state.pt").is_file()
    assert (out / "train" / "best" / "generator.safetensors").is_file()
    # Nobody is on both sides: 30 % of the 6 people (rounded up) are held out with every photo of theirs.
    train_people = {person_of(p.name) for p in (out / "photos" / "train").iterdir()}
    test_people = {person_of(p.name) for p in (out / "photos" / "test").iterdir()}
    assert len(train_people) == 4 and len(test_people) == 2 and not train_people & test_people
    lines = result.output.splitlines()
    table = [line for line in lines if line.startswith(("bicubic", "demo model"))]
    assert len(table) == 2
    faces = re.search(r"(\d+) for training \(4 people\), (\d+) held out \(2 other people\)", result.output)
    assert faces, result.output
    assert f"{4 * int(faces[2])} pairs" in result.output
    verdict = next(line for line in lines if "verdict" in line)
    assert "than bicubic upsampling" in verdict and "random VGG" in verdict
    # Degraded copies of the held-out photos are restored by both models; cmp/ shows LQ | demo | bundled | original.
    from dfdcore.io.images import decode_image

    copies = sorted(p.name for p in (out / "held-out" / "lq").iterdir())
    assert len(copies) == int(faces[2])
    for folder in ("restored", "restored-bundled"):
        assert sorted(p.name for p in (out / folder / "restored_imgs").iterdir()) == copies
    for name in copies:
        original = decode_image((out / "held-out" / "original" / name).read_bytes()).rgb8
        lq = decode_image((out / "held-out" / "lq" / name).read_bytes()).rgb8
        cmp = decode_image((out / "restored" / "cmp" / name).read_bytes()).rgb8
        assert lq.shape[0] == original.shape[0] // 2  # the input really is smaller
        assert cmp.shape[1] % (4 * original.shape[1]) == 0 and cmp.shape[0] > original.shape[0]  # 4 panels
    photos = next(line for line in lines if line.strip().startswith("photos "))
    assert f"mean of {len(copies)} held-out photos" in photos and "dfd-pd-128" in photos


def test_more_pairs_than_faces_reuse_each_face_under_other_degradations(training_data, tmp_path):
    faceset = str(training_data / "faceset.parquet")
    assert make_pairs(faceset, str(tmp_path / "p.parquet"), count=6, seed=3) == 6
    pairs, _ = read_pairs(str(tmp_path / "p.parquet"))
    assert [p["face_index"] for p in pairs] == [pairs[i % 2]["face_index"] for i in range(6)]
    assert [p["image_id"] for p in pairs] == [pairs[i % 2]["image_id"] for i in range(6)]
    assert (pairs[0]["hq"] != pairs[2]["hq"]).any() or (pairs[0]["lq"] != pairs[2]["lq"]).any()
    assert len({p["params"] for p in pairs}) == 6
