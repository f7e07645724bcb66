"""MLflow done the MLflow way: runs name their data as dataset inputs, the registered generator carries a signature
and an input example, system metrics on request, and Ray Train keeps only the latest checkpoints — on disk and in
the run's artifacts alike (Prefect's local server, local Ray, MLflow on SQLite, the bundled portraits)."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
from click.testing import CliRunner
from mlflow import MlflowClient

from dfd.cli import main
from tests.test_training import small_train_config

MODEL = "dfd-conventions-test"


def _inputs(client: MlflowClient, run_id: str) -> dict[str, dict]:
    """The run's dataset inputs by name: digest, source (dict), profile (dict), context and tags."""
    found = {}
    for item in client.get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        found[item.dataset.name] = {"digest": item.dataset.digest, "source": json.loads(item.dataset.source),
                                    "profile": json.loads(item.dataset.profile), "context": tags.get(
                                        "mlflow.data.context"), "tags": tags}
    return found


def _folders(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.is_dir()} if path.is_dir() else set()


def test_training_run_has_datasets_signature_system_metrics_and_keeps_two_checkpoints(
        prefect_server, training_data, tmp_path, monkeypatch):
    from dfd.flows.train import train
    from dfdcore.data.faceset import FaceSet

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    faceset = str(training_data / "faceset.parquet")
    cfg = small_train_config(training_data, tmp_path / "run", steps=5, checkpoint_every=1, log_every=5,
                             sample_every=100, val_every=5, val_pairs=2)
    summary = train(cfg, register_as=MODEL, keep_checkpoints=2, system_metrics=True)
    client = MlflowClient(mlflow.get_tracking_uri())

    # The faceset's two splits are the run's dataset inputs, digests from the photos' content hashes.
    inputs = _inputs(client, summary.run_id)
    assert set(inputs) == {"faceset-train", "faceset-test"}
    assert inputs["faceset-train"]["profile"]["num_rows"] == 7 and inputs["faceset-test"]["profile"]["num_rows"] == 2
    assert inputs["faceset-train"]["context"] == "training" and inputs["faceset-test"]["context"] == "validation"
    assert all(i["source"]["uri"] == faceset and len(i["digest"]) == 32 for i in inputs.values())
    assert inputs["faceset-train"]["digest"] != inputs["faceset-test"]["digest"]

    # Five checkpoints written, Ray Train kept the two latest: on disk and in the run's artifacts; best/ is apart.
    out = Path(cfg.out)
    assert _folders(out / "checkpoints") == {"step_00000004", "step_00000005"}
    assert (out / "best" / "generator.safetensors").is_file() and summary.validation["step"] in (0, 5)
    logged = {f.path for f in client.list_artifacts(summary.run_id, "checkpoints")}
    assert logged == {"checkpoints/step_00000004", "checkpoints/step_00000005"}
    assert [f.path for f in client.list_artifacts(summary.run_id, "checkpoints/step_00000005")] == [
        "checkpoints/step_00000005/train_state.pt"]

    # The registered version's model has its signature and a held-out face as input example, and restores it.
    uri = f"models:/{MODEL}/{summary.model_version}"
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None
    spec = {s.name: (s.type, s.shape) for s in info.signature.inputs.inputs}
    assert spec == {"faces": (np.dtype(np.uint8), (-1, 128, 128, 3)),
                    "landmarks68": (np.dtype(np.float64), (-1, 68, 2))}
    root = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    example = mlflow.models.Model.load(root).load_input_example(root)
    face, landmarks = FaceSet(faceset, "test").face(0)
    assert np.array_equal(example["faces"][0], face) and np.allclose(example["landmarks68"][0], landmarks)
    restored = mlflow.pyfunc.load_model(uri).predict(example)
    assert restored.shape == (1, 128, 128, 3) and restored.dtype == np.uint8

    # --system-metrics: MLflow sampled the machine into the run.
    system = [k for k in client.get_run(summary.run_id).data.metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system

    # A resume starts from Ray's latest kept checkpoint and prunes on: still two, the run's artifacts with them.
    more = train(cfg.__class__(**(cfg.to_dict() | {"steps": 7})), register_as=MODEL, keep_checkpoints=2)
    assert more.resumed_from == 5 and more.run_id == summary.run_id
    assert _folders(out / "checkpoints") == {"step_00000006", "step_00000007"}
    assert {f.path for f in client.list_artifacts(summary.run_id, "checkpoints")} == {
        "checkpoints/step_00000006", "checkpoints/step_00000007"}


def test_evaluation_and_bulk_runs_log_their_data_as_dataset_inputs(prefect_server, training_data, portraits_dir,
                                                                    tmp_path):
    from dfd.flows.evaluate import evaluate
    from dfd.flows.restore_bucket import restore_bucket
    from dfdcore.io.hashing import sha256_path
    from dfdcore.restoration.bulk import RunOptions
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions

    testset = tmp_path / "testset"
    scored = evaluate(ModelSpec(name="identity"), str(testset), faceset=str(training_data / "faceset.parquet"))
    client = MlflowClient(mlflow.get_tracking_uri())  # the flow's store (set by the flow, under the dfd home)
    test_input = _inputs(client, scored.run_id)["testset"]
    assert test_input["context"] == "testing" and test_input["profile"]["num_rows"] == scored.pairs == 2
    assert test_input["digest"] == sha256_path(testset / "pairs.parquet")[:32]
    # MLflow keeps one dataset per (name, digest) in an experiment, with the source it was first logged from: the
    # same pairs made by another test of the session from the same faceset and seed share it.
    assert test_input["source"]["uri"].endswith("/testset/pairs.parquet")

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("grace_hopper.jpg", "obama.jpg"):
        (photos / name).write_bytes((portraits_dir / name).read_bytes())
    done = restore_bucket(str(photos), str(tmp_path / "out"), ModelSpec("identity"), RestoreOptions(upscale=1),
                          RunOptions(workers=0), system_metrics=True)
    listing = _inputs(client, done.run_id)["bucket"]
    assert listing["context"] == "inference" and listing["profile"]["num_rows"] == done.listed == 2
    assert listing["source"]["uri"] == str(photos) and listing["tags"]["files"] == "2"
    again = restore_bucket(str(photos), str(tmp_path / "out"), ModelSpec("identity"), RestoreOptions(upscale=1),
                           RunOptions(workers=0))
    assert _inputs(client, again.run_id)["bucket"]["digest"] == listing["digest"]  # the same files, the same digest


def test_keep_checkpoints_and_system_metrics_come_from_a_config_file_too(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("keep-checkpoints: 2\nsystem-metrics: true\n")
    where = ["train", str(tmp_path / "faces.parquet"), "-o", str(tmp_path / "run"), "--dictionary", "d",
             "--random-vgg"]
    for args, keep, system in (([], "3", "False"), (["--config", str(config)], "2", "True"),
                               (["--config", str(config), "--keep-checkpoints", "0"], "0", "True")):
        result = CliRunner().invoke(main, [*where, *args, "--dry-run"])
        assert result.exit_code == 0, result.output
        resolved = dict(line.split(None, 1) for line in result.output.splitlines()[1:])
        assert (resolved["keep_checkpoints"], resolved["system_metrics"]) == (keep, system)
    refused = CliRunner().invoke(main, [*where, "--keep-checkpoints", "-2", "--dry-run"])
    assert refused.exit_code == 2 and "--keep-checkpoints" in refused.output
