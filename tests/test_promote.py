"""Registry aliases: `dfd promote` moves an alias, and the next restore_bucket run (and `dfd restore`) that names the
model by alias uses the version it points to now — real MLflow on SQLite, real Prefect, real Ray."""
from __future__ import annotations

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

import dfdcore
from dfdcore.io.images import read_rgb
from dfdcore.restoration.manifest import read_manifest
from tests.conftest import copy_portraits

MODEL = "dfd-generator"


@pytest.fixture()
def registry(tmp_path, monkeypatch, small_dictionary):
    """MLflow on SQLite under tmp_path holding two versions of MODEL: random small generators of seeds 1 and 2."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from dfd.flows.registry import register_generator
    from dfd.flows.restore_bucket import EXPERIMENT

    previous = tracking_utils._tracking_uri
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # artifacts under tmp_path: a SQLite store would otherwise put them in ./mlruns of the current folder
    for flow_experiment in (EXPERIMENT, "dfd-evaluate"):
        mlflow.create_experiment(flow_experiment, artifact_location=(tmp_path / "artifacts" / flow_experiment).as_uri())
    experiment = mlflow.create_experiment("registry", artifact_location=(tmp_path / "artifacts" / "reg").as_uri())
    dictionary = small_dictionary.save(tmp_path / "dictionary.safetensors")
    for seed in (1, 2):
        weights = dfdcore.save_checkpoint(dfdcore.random_generator(small_dictionary, seed=seed),
                                          tmp_path / f"generator-{seed}.safetensors")
        with mlflow.start_run(experiment_id=experiment):
            assert register_generator(weights, dictionary, MODEL) == str(seed)
    yield uri
    mlflow.set_tracking_uri(previous)


@pytest.fixture()
def photos(tmp_path):
    return copy_portraits(tmp_path / "incoming", ["grace_hopper.jpg", "obama.jpg"])


def promote(*args: str):
    from dfd.registry_commands import promote as command

    return CliRunner().invoke(command, list(args))


def versions(out) -> dict[str, str]:
    return {row["relpath"]: row["model_version"] for row in read_manifest(str(out / "manifest.parquet")).values()}


def pixels(out) -> dict[str, np.ndarray]:
    return {p.name: read_rgb(p) for p in sorted((out / "restored_imgs").iterdir())}


def test_restore_bucket_follows_the_alias_and_the_manifest_says_which_version(prefect_server, registry, photos,
                                                                               tmp_path):
    from dfd.flows.restore_bucket import restore_bucket
    from dfd.restore_commands import restore
    from dfdcore.restoration.bulk import RunOptions
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions

    result = promote(MODEL, "1", "champion")
    assert result.exit_code == 0, result.output
    assert "was nothing, now version 1" in result.output

    out, champion = tmp_path / "out", ModelSpec(registered=f"{MODEL}@champion", device="cpu")
    # the faces are large: the detector needs no upsampling; clean photos: all of each model's change is kept (auto
    # would leave these sharp faces nearly as they are, and the versions could not be told apart)
    same_size = RestoreOptions(upscale=1, upsample=0, strength=1.0)
    first = restore_bucket(str(photos), str(out), champion, same_size, RunOptions(workers=1))
    assert (first.restored, first.failed) == (2, 0)
    assert set(versions(out).values()) == {f"{MODEL}/1"}
    run = mlflow.MlflowClient().get_run(first.run_id)
    assert run.data.tags["registered_model"] == f"{MODEL}/1" and run.data.tags["registered_as"] == f"{MODEL}@champion"
    assert run.data.params["model_registered"] == f"{MODEL}@champion"
    by_v1 = pixels(out)

    result = promote(MODEL, "2", "champion")
    assert result.exit_code == 0, result.output
    assert "was version 1, now version 2" in result.output

    # Same parameters, same photos: the alias now means version 2, a new model, so every photo is redone with it.
    second = restore_bucket(str(photos), str(out), champion, same_size, RunOptions(workers=0))
    assert (second.restored, second.skipped) == (2, 0)
    assert set(versions(out).values()) == {f"{MODEL}/2"}
    by_v2 = pixels(out)
    assert by_v2.keys() == by_v1.keys()
    for name in by_v1:
        assert by_v1[name].shape == by_v2[name].shape
        changed = np.abs(by_v1[name].astype(np.int16) - by_v2[name]).max(axis=-1) > 2
        # measured: 37 % (grace_hopper) and 15 % (obama) of the pixels, the faces, repainted by another network
        assert changed.mean() > 0.05, (name, changed.mean())

    # Unchanged alias, unchanged photos: nothing to do (the version's files are fetched to the same place each run).
    third = restore_bucket(str(photos), str(out), champion, same_size, RunOptions(workers=0))
    assert (third.restored, third.skipped) == (0, 2)

    # `dfd restore --registered NAME@ALIAS` makes exactly what the flow made with the version the alias points to.
    cli_out = tmp_path / "cli-out"
    result = CliRunner().invoke(restore, [str(photos), "-o", str(cli_out), "--upscale", "1", "--upsample", "0",
                                          "--device", "cpu", "--strength", "1", "--registered", f"{MODEL}@champion"])
    assert result.exit_code == 0, result.output
    assert f"registered {MODEL}/2" in result.output
    assert set(versions(cli_out).values()) == {f"{MODEL}/2"}
    by_cli = pixels(cli_out)
    assert all(np.array_equal(by_cli[name], by_v2[name]) for name in by_v2)


def test_unknown_names_versions_and_aliases_are_refused_with_what_there_is(prefect_server, registry, photos,
                                                                            tmp_path):
    from dfd.flows.registry import RegistryError
    from dfd.flows.restore_bucket import restore_bucket
    from dfd.restore_commands import restore
    from dfdcore.restoration.restorer import ModelSpec

    assert promote(MODEL, "1", "champion").exit_code == 0
    for args, says in (((MODEL, "7", "champion"), f"{MODEL} has no version 7; its versions: 1, 2"),
                       (("dfd-generatr", "1", "champion"), (f"no registered model 'dfd-generatr' in {registry}; "
                                                            f"it holds {MODEL}")),
                       ((MODEL, "one", "champion"), "a version number"),
                       ((MODEL, "2", "latest"), "MLflow refused alias 'latest'")):
        result = promote(*args)
        assert result.exit_code != 0 and says in result.output, result.output
    assert str(mlflow.MlflowClient().get_model_version_by_alias(MODEL, "champion").version) == "1"  # left alone

    result = CliRunner().invoke(restore, [str(photos), "-o", str(tmp_path / "o"), "--registered", f"{MODEL}@staging"])
    assert result.exit_code != 0
    assert f"{MODEL} has no alias 'staging'; its aliases: champion → 1" in result.output
    assert not (tmp_path / "o" / "manifest.parquet").exists()
    result = CliRunner().invoke(restore, [str(photos), "-o", str(tmp_path / "o"), "--registered", MODEL])
    assert result.exit_code == 2 and "NAME/VERSION" in result.output and "NAME@ALIAS" in result.output
    result = CliRunner().invoke(restore, [str(photos), "-o", str(tmp_path / "o"), "--registered", f"{MODEL}/1",
                                          "--random-weights"])
    assert result.exit_code == 2 and "leave out --random-weights" in result.output

    with pytest.raises(RegistryError, match="has no alias 'staging'"):
        restore_bucket(str(photos), str(tmp_path / "flow-out"), ModelSpec(registered=f"{MODEL}@staging"))


def test_evaluate_takes_an_alias_and_names_the_version_it_scored(prefect_server, registry, training_data, tmp_path):
    from dfd.lifecycle import evaluate

    assert promote(MODEL, "2", "champion").exit_code == 0
    testset = str(tmp_path / "testset")
    result = CliRunner().invoke(evaluate, ["--testset", testset, "--faceset", str(training_data / "faceset.parquet"),
                                           "--registered", f"{MODEL}@champion", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    run_id = result.output.split("mlflow     run ")[1].split()[0]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.run_name == f"{MODEL}-v2" and run.data.tags["registered_model"] == f"{MODEL}/2"
    assert run.data.tags["registered_as"] == f"{MODEL}@champion" and run.data.metrics["psnr"] > 0

    result = CliRunner().invoke(evaluate, ["--testset", testset, "--registered", f"{MODEL}@staging"])
    assert result.exit_code == 1 and f"{MODEL} has no alias 'staging'; its aliases: champion → 2" in result.output
