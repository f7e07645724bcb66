"""``--config FILE`` of ``dfd train`` and ``dfd build-dictionary`` (YAML or TOML), the preset files, and the resolved
configuration each run logs to MLflow as config.yaml."""
from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfd.cli import main

# The recipes as dfdcore/training/presets.py held them in a dict before they became files (copied unchanged).
OLD_PRESETS = {
    "cpu-128": dict(face_size=128, ngf=8, d_dim=8, batch_size=8, workers=2, steps=16_000, lr=1e-3,
                    lr_schedule="cosine", constant_fraction=0.0, residual=True, train_vgg=True, augment=0.5,
                    grad_clip=1.0, ema_decay=0.999, pixel_criterion="psnr", perceptual_weight=0.0,
                    adversarial_weight=0.0, degradation="reference", val_every=500, val_pairs=32,
                    checkpoint_every=500, sample_every=500),
    "gpu-512": dict(face_size=512, ngf=64, d_dim=64, batch_size=8, workers=1, gpu=True, steps=100_000, lr=2e-4,
                    lr_schedule="cosine", constant_fraction=0.01, residual=True, grad_clip=1.0, ema_decay=0.999,
                    pixel_criterion="mse", perceptual_weight=1.0, adversarial_weight=0.1,
                    adversarial_start=20_000, degradation="reference", val_every=2000, val_pairs=64,
                    checkpoint_every=2000, sample_every=1000),
}
TRAIN_FLAGS = ["--dictionary", "d.safetensors", "--random-vgg", "--face-size", "128", "--ngf", "8", "--steps", "40",
               "--lr", "0.001", "--lr-schedule", "cosine", "--no-residual", "--augment", "0.5", "--best-metric",
               "ssim", "--register-as", "dfd-x", "--max-failures", "-1"]
TRAIN_YAML = """\
dictionary: d.safetensors
random-vgg: true
face-size: 128
ngf: 8
steps: 40
lr: 1.0e-3
lr_schedule: cosine   # both spellings of a name are read
residual: false
augment: 0.5
best_metric: ssim
register-as: dfd-x
max-failures: -1
"""
TRAIN_TOML = """\
dictionary = "d.safetensors"
random-vgg = true
face-size = 128
ngf = 8
steps = 40
lr = 1e-3
lr_schedule = "cosine"
residual = false
augment = 0.5
best_metric = "ssim"
register-as = "dfd-x"
max-failures = -1
"""


def dry_run(*args: str) -> dict[str, str]:
    """The configuration a ``--dry-run`` prints (key → value text, the header line left out)."""
    result = CliRunner().invoke(main, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    return dict(line.split(None, 1) for line in result.output.splitlines()[1:])


def write(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(text)
    return str(folder / name)


@pytest.mark.parametrize("name, text", [("run.yaml", TRAIN_YAML), ("run.yml", TRAIN_YAML), ("run.toml", TRAIN_TOML)])
def test_train_config_file_resolves_like_the_same_flags(tmp_path, name, text):
    where = [str(tmp_path / "faces.parquet"), "-o", str(tmp_path / "run")]
    flags = dry_run("train", *where, *TRAIN_FLAGS)
    from_file = dry_run("train", *where, "--config", write(tmp_path, name, text))
    assert from_file == flags
    assert flags["steps"] == "40" and flags["residual"] == "False" and flags["register_as"] == "dfd-x"
    assert flags["config_sha256"] != dry_run("train", *where, "--dictionary", "d.safetensors",
                                             "--random-vgg")["config_sha256"]


def test_source_and_required_options_may_come_from_the_file(tmp_path):
    text = f"source: {tmp_path / 'faces.parquet'}\noutput: {tmp_path / 'run'}\n" + TRAIN_YAML
    from_file = dry_run("train", "--config", write(tmp_path, "all.yaml", text))
    assert from_file == dry_run("train", str(tmp_path / "faces.parquet"), "-o", str(tmp_path / "run"), *TRAIN_FLAGS)
    missing = CliRunner().invoke(main, ["train", "--config", write(tmp_path, "part.yaml", TRAIN_YAML), "--dry-run"])
    assert missing.exit_code == 2 and "Missing argument 'SOURCE'" in missing.output


def test_flags_beat_the_file_and_the_file_beats_the_preset(tmp_path):
    config = write(tmp_path, "run.yaml", "preset: cpu-128\nface-size: 256\nsteps: 40\nlr-schedule: linear\n")
    where = ["train", str(tmp_path / "faces.parquet"), "-o", str(tmp_path / "run"), "--dictionary", "d", "--random-vgg"]
    resolved = dry_run(*where, "--config", config, "--steps", "7", "--lr-schedule", "cosine")
    assert resolved["steps"] == "7" and resolved["lr_schedule"] == "cosine"  # flags given win over the file
    assert resolved["face_size"] == "256"  # the file wins over its preset
    assert resolved["ngf"] == "8" and resolved["pixel_criterion"] == "psnr"  # the preset fills what neither gave
    assert resolved["seed"] == "0"  # and the defaults the rest
    other = dry_run(*where, "--config", config, "--preset", "gpu-512")  # a --preset flag beats the file's preset
    assert other["face_size"] == "256" and other["ngf"] == "64" and other["steps"] == "40"


@pytest.mark.parametrize("name, text, expected", [
    ("bad.yaml", "stepz: 3\n", ["bad.yaml", "unknown key 'stepz'", "did you mean 'steps'?", "face-size"]),
    ("bad.yaml", "steps: many\n", ["bad.yaml", "'steps' expects an integer", "'many'"]),
    ("bad.toml", "steps = 2.5\n", ["bad.toml", "'steps' expects an integer", "2.5 (float)"]),
    ("bad.yaml", "seed: true\n", ["bad.yaml", "'seed' expects an integer", "True (bool)"]),
    ("bad.toml", 'lr-schedule = "cos"\n', ["bad.toml", "'lr-schedule' expects one of linear, cosine", "'cos'"]),
    ("bad.yaml", "augment: 5\n", ["bad.yaml", "'augment' expects a number >= 0 and <= 3", "5"]),
    ("bad.yaml", "held-out: [a, b]\n", ["bad.yaml", "'held-out' expects a path", "(list)"]),
    ("bad.yaml", "face-size: 128\nface_size: 256\n", ["bad.yaml", "are the same option"]),
    ("bad.yaml", "dry-run: true\n", ["bad.yaml", "'dry-run' is read from the command line only"]),
    ("bad.yaml", "- steps\n", ["bad.yaml", "expected a mapping of option names to values"]),
    ("bad.toml", "steps: 3\n", ["bad.toml is not valid TOML"]),
    ("bad.json", "{}", ["expected a .yaml, .yml or .toml configuration file, got '.json'"]),
])
def test_a_bad_config_file_is_a_clear_error(tmp_path, name, text, expected):
    result = CliRunner().invoke(main, ["train", "faces.parquet", "-o", "run", "--dictionary", "d", "--random-vgg",
                                       "--config", write(tmp_path, name, text), "--dry-run"])
    assert result.exit_code == 2 and "Invalid value for '--config'" in result.output
    message = " ".join(result.output.split())
    assert all(part in message for part in expected), message


def test_build_dictionary_config_file_resolves_like_the_same_flags(tmp_path):
    where = ["build-dictionary", str(tmp_path / "photos"), "-o", str(tmp_path / "out")]
    flags = dry_run(*where, "--random-vgg", "--k", "8", "--select", "20", "--selection", "farthest", "--flip",
                    "--max-train-gib", "0.5", "--face-size", "128", "--ngf", "8")
    text = (f"source = '{tmp_path / 'photos'}'\noutput = '{tmp_path / 'out'}'\nrandom-vgg = true\nk = 8\nselect = 20\n"
            "selection = 'farthest'\nflip = true\nmax_train_gib = 0.5\nface-size = 128\nngf = 8\n")
    assert dry_run("build-dictionary", "--config", write(tmp_path, "build.toml", text)) == flags
    assert flags["kmeans.k"] == "8" and flags["select"] == "20" and flags["kmeans.max_train_bytes"] == str(2**29)
    given = dry_run("build-dictionary", "--config", str(tmp_path / "build.toml"), "--k", "16")
    assert given["kmeans.k"] == "16" and given["config_sha256"] != flags["config_sha256"]
    bad = CliRunner().invoke(main, [*where, "--config", write(tmp_path, "bad.yaml", "selection: best\n")])
    assert bad.exit_code == 2 and "'selection' expects one of stratified, farthest" in bad.output


def test_shipped_preset_files_hold_the_old_recipes(tmp_path):
    from dfdcore.training.presets import PRESETS, preset_path, preset_values

    assert PRESETS == OLD_PRESETS and list(PRESETS) == list(OLD_PRESETS)
    for name, old in OLD_PRESETS.items():
        assert {k: type(v) for k, v in preset_values(name).items()} == {k: type(v) for k, v in old.items()}, name
        assert preset_path(name).read_text().startswith("# dfd train --preset " + name)  # the recipe explained
        # A preset file is a config file too: as --config it resolves like --preset.
        where = ["train", str(tmp_path / "f.parquet"), "-o", str(tmp_path / "run"), "--dictionary", "d", "--random-vgg"]
        assert dry_run(*where, "--config", str(preset_path(name))) == dry_run(*where, "--preset", name)
    with pytest.raises(ValueError, match="presets: cpu-128, gpu-512"):
        preset_values("nope")
    package_data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = package_data["tool"]["setuptools"]["package-data"]["dfdcore.training"]
    assert all(any(fnmatch(f"presets/{name}.yaml", p) for p in patterns) for name in PRESETS)


def _artifact_config(run_id: str, folder: Path) -> tuple[str, dict]:
    """The config.yaml a run logged: its path (downloaded into ``folder``) and its values."""
    import mlflow
    from mlflow import MlflowClient

    from dfdcore.io.config_files import read_config

    path = MlflowClient(mlflow.get_tracking_uri()).download_artifacts(run_id, "config.yaml", str(folder))
    return path, read_config(path)


def _run_id(output: str) -> str:
    return next(line.split()[2] for line in output.splitlines() if line.strip().startswith("mlflow"))


def test_a_training_logs_its_resolved_configuration(prefect_server, training_data, tmp_path):
    config = write(tmp_path, "small.yaml", f"dictionary: {training_data / 'dictionary.safetensors'}\nrandom-vgg: true\n"
                   "face-size: 128\nngf: 8\nd-dim: 8\nbatch-size: 2\nsteps: 200\nval-pairs: 2\n")
    where = ["train", str(training_data / "faceset.parquet"), "-o", str(tmp_path / "run"), "--config", config]
    result = CliRunner().invoke(main, [*where, "--steps", "2", "--register-as", "dfd-config-test"])
    assert result.exit_code == 0, result.output
    path, logged = _artifact_config(_run_id(result.output), tmp_path / "logged")
    assert logged["steps"] == 2 and logged["face-size"] == 128 and logged["source"].endswith("faceset.parquet")
    assert "config" not in logged and "dry-run" not in logged
    # The logged file is a config file for the same run.
    again = dry_run("train", "--config", path)
    assert again == dry_run(*where, "--steps", "2", "--register-as", "dfd-config-test")


def test_a_dictionary_build_logs_its_resolved_configuration(prefect_server, tmp_path):
    from .conftest import copy_portraits

    photos = copy_portraits(tmp_path / "photos", ["grace_hopper.jpg"])
    text = (f"source = '{photos}'\noutput = '{tmp_path / 'out'}'\nrandom-vgg = true\nk = 1\nniter = 1\nselect = 1\n"
            "face-size = 128\nngf = 8\nworkers = 1\nbatch = 1\n")
    result = CliRunner().invoke(main, ["build-dictionary", "--config", write(tmp_path, "build.toml", text)])
    assert result.exit_code == 0, result.output
    path, logged = _artifact_config(_run_id(result.output), tmp_path / "logged")
    assert logged["k"] == 1 and logged["select"] == 1 and logged["random-vgg"] is True
    assert dry_run("build-dictionary", "--config", path) == dry_run("build-dictionary", "--config",
                                                                     str(tmp_path / "build.toml"))
