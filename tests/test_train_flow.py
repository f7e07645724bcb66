"""Training with Ray Train (real local Ray, gloo DDP) and the train flow (Prefect's local server, MLflow on SQLite)."""
from __future__ import annotations

import io

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from dfdcore.io.storage import read_bytes
from dfdcore.training import Trainer, checkpoint_uri
from tests.test_training import small_train_config


def _checkpoint(uri: str) -> dict:
    return torch.load(io.BytesIO(read_bytes(uri)), weights_only=True)


def test_the_ray_train_run_folder_is_the_training_folders_checkpoints():
    """A resume runs in a new process: Ray Train must find the same run folder, out/checkpoints, from ``out`` alone
    (never from Python's salted str hash), a local ``out`` made absolute (workers run elsewhere)."""
    import os

    from dfd.tasks.checkpoints import keep_count, ray_storage

    assert ray_storage("/data/runs/train-a") == ("/data/runs/train-a", None)
    assert ray_storage("runs/a") == (os.path.abspath("runs/a"), None)
    path, filesystem = ray_storage("memory://runs/train-a")  # a remote folder: dfd's fsspec filesystem for pyarrow
    assert path == "/runs/train-a" and filesystem.type_name.startswith("py::fsspec+")
    assert [keep_count(k) for k in (1, 3, 0, -1)] == [1, 3, None, None]
    with pytest.raises(ValueError, match="keep_checkpoints must be"):
        keep_count(-2)


def test_two_worker_ddp_matches_one_process_on_the_same_global_batch(training_data, tmp_path):
    from dfd.tasks.train import Tracking, fit

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("ddp", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    cfg = small_train_config(training_data, tmp_path / "ddp", steps=2, batch_size=2, workers=2, checkpoint_every=1,
                             log_every=1, sample_every=100)
    fit(cfg, Tracking(client.tracking_uri, run_id))

    single = Trainer(small_train_config(training_data, tmp_path / "single", steps=2, batch_size=2))
    start = {part: {k: v.clone() for k, v in m.state_dict().items()}
             for part, m in (("generator", single.generator), ("discriminator", single.discriminator))}
    steps = [single.train_step() for _ in range(2)]
    # Same numbers up to float rounding: batch-of-1 and batch-of-2 convolutions sum in different orders, and
    # max-pool/ReLU near-ties in the random VGG route a few gradient entries differently (measured: ~3e-5 relative).
    for name in ("grad_norm_g", "grad_norm_d", "loss_g", "loss_d"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        assert [s for s, _ in logged] == [1, 2], name
        for (_, value), expected in zip(logged, steps):
            assert value == pytest.approx(expected[name], rel=1e-3), name
    distributed = _checkpoint(checkpoint_uri(cfg.out, 2))
    for part, module in (("generator", single.generator), ("discriminator", single.discriminator)):
        keys = [k for k, v in module.state_dict().items() if v.is_floating_point() and k.endswith(("weight", "orig", "original"))]
        moved = torch.cat([(module.state_dict()[k] - start[part][k]).flatten() for k in keys])
        moved_ddp = torch.cat([(distributed[part][k] - start[part][k]).flatten() for k in keys])
        # The two Adam steps really moved the weights, and both runs moved them the same way.
        assert moved.norm() > 1e-3, part
        assert float((moved_ddp - moved).norm() / moved.norm()) < 1e-2, part


def test_train_flow_records_the_run_and_registers_the_model(prefect_server, training_data, portraits_dir, tmp_path):
    from dfd.flows.registry import registered_files
    from dfd.flows.train import train
    from dfdcore.api import load_generator

    cfg = small_train_config(training_data, tmp_path / "run", steps=4, batch_size=2, checkpoint_every=2,
                             sample_every=2, log_every=1, faceset=str(tmp_path / "run" / "faceset.parquet"))
    summary = train(cfg, source=str(portraits_dir), test_fraction=0.2,
                    register_as="dfd-test-generator")
    assert summary.train_faces == 7 and summary.test_faces == 2 and summary.resumed_from == 0
    client = MlflowClient(mlflow.get_tracking_uri())
    run = client.get_run(summary.run_id)
    assert run.data.params["steps"] == "4" and run.data.params["random_vgg"] == "True"
    assert [m.step for m in client.get_metric_history(summary.run_id, "loss_g")] == [1, 2, 3, 4]
    assert len(client.get_metric_history(summary.run_id, "val_pixel")) == 2
    artifacts = {f.path for folder in ("samples", "checkpoints") for f in client.list_artifacts(summary.run_id, folder)}
    assert {"samples/step_00000002.png", "samples/step_00000004.png", "checkpoints/step_00000002",
            "checkpoints/step_00000004"} <= artifacts
    version = client.get_model_version("dfd-test-generator", summary.model_version)
    assert version.run_id == summary.run_id
    # The registered generator is the best validated one, and its version carries the validation figures.
    assert summary.validation["step"] in (0, 4) and summary.generator.endswith("best/generator.safetensors")
    assert version.tags["val_psnr"] == f"{summary.validation['val_psnr']:.4f}"
    assert version.tags["bicubic_psnr"] == f"{summary.validation['bicubic_psnr']:.4f}"
    better = summary.validation["val_psnr"] > summary.validation["bicubic_psnr"]
    assert version.tags["beats_bicubic"] == str(better).lower()
    assert [m.step for m in client.get_metric_history(summary.run_id, "val_psnr")] == [0, 4]  # the curve starts at step 0
    generator, dictionary = registered_files("dfd-test-generator", summary.model_version)
    model = load_generator(generator, dictionary)
    assert model.config.face_size == 128 and model.provenance["random_weights"] is False

    # Asking for more steps on the same output resumes from step 4 and continues the same MLflow run.
    more = train(cfg.__class__(**(cfg.to_dict() | {"steps": 6})), register_as="dfd-test-generator")
    assert more.resumed_from == 4 and more.run_id == summary.run_id
    assert [m.step for m in client.get_metric_history(summary.run_id, "loss_g")][-2:] == [5, 6]
    assert int(more.model_version) == int(summary.model_version) + 1


def _dies_once_saving_step_3(config: dict) -> None:
    """``train_loop`` whose worker process exits once, abruptly, as it is about to write the step-3 checkpoint:
    step 3 is logged, the latest checkpoint is step 2's (a worker lost to a busy or preempted machine)."""
    import os
    from pathlib import Path

    from dfd.tasks.train import train_loop
    from dfdcore.training import Trainer

    marker = Path(config["train"]["out"]) / "died-once"
    original = Trainer.save

    def save(self):
        if self.step == 3 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return original(self)

    Trainer.save = save
    train_loop(config)


def test_a_dead_worker_is_restarted_from_the_latest_checkpoint_without_logging_twice(training_data, tmp_path):
    import os
    from pathlib import Path

    from dfd.tasks.runtime import TRAIN_PATIENCE
    from dfd.tasks.train import DEFAULT_MAX_FAILURES, Tracking, fit

    assert DEFAULT_MAX_FAILURES > 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("restart", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    cfg = small_train_config(training_data, tmp_path / "restart", steps=3, batch_size=2, checkpoint_every=2,
                             log_every=1, sample_every=100, val_every=0, val_pairs=2)
    fit(cfg, Tracking(client.tracking_uri, run_id), loop=_dies_once_saving_step_3)  # the default max_failures

    assert (Path(cfg.out) / "died-once").exists()  # the first worker did die
    assert (Path(cfg.out) / "generator.safetensors").exists()
    # The second attempt resumed from the step-2 checkpoint (not from scratch) and did not log step 3 again.
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "resumed_from_step")] == [(2, 2.0)]
    assert [m.step for m in client.get_metric_history(run_id, "loss_g")] == [1, 2, 3]
    assert _checkpoint(checkpoint_uri(cfg.out, 3))["step"] == 3
    # Ray Train's timeouts were raised in the driver's environment, from where Ray hands them to its actors.
    assert all(os.environ[name] == value for name, value in TRAIN_PATIENCE.items())
