"""The registered generator is an MLflow "models from code" pyfunc: no pickle in it, and it restores like the original."""
from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.models import Model

import dfdcore
from dfdcore.io.pixels import images_to_tensor


@pytest.fixture()
def sqlite_mlflow(tmp_path, monkeypatch):
    """MLflow on a SQLite file in tmp_path (artifacts there too); the previous tracking URI is restored after."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # set_tracking_uri exports it; monkeypatch puts the old one back
    monkeypatch.setenv("DFD_HOME", str(tmp_path / "home"))  # registered versions are fetched into the dfd home
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("registry", artifact_location=(tmp_path / "artifacts").as_uri())
    yield experiment
    mlflow.set_tracking_uri(previous)


def test_registered_model_is_code_not_pickle_and_restores_like_the_generator(sqlite_mlflow, small_generator,
                                                                             small_dictionary, tmp_path):
    from dfd.flows.registry import register_generator, registered_files

    weights = dfdcore.save_checkpoint(small_generator, tmp_path / "generator.safetensors")
    dictionary = small_dictionary.save(tmp_path / "dictionary.safetensors")
    with mlflow.start_run(experiment_id=sqlite_mlflow):
        version = register_generator(weights, dictionary, "dfd-registry-test")
    uri = f"models:/dfd-registry-test/{version}"

    # Nothing pickled anywhere in the artifact store: the model is its source file plus the two weight files.
    stored = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert stored and not [p for p in stored if p.suffix in {".pkl", ".pickle"} or "pickle" in p.name]
    root = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "download"))
    files = {os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names}
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))]
    assert "registry_model.py" in files
    pyfunc_conf = Model.load(root).flavors["python_function"]
    assert pyfunc_conf["model_code_path"].endswith("registry_model.py") and "python_model" not in pyfunc_conf
    assert {name for name in files if name.startswith("artifacts")} == {"artifacts/generator.safetensors",
                                                                        "artifacts/dictionary.safetensors"}
    assert [p.name for p in registered_files("dfd-registry-test", version)] == ["generator.safetensors",
                                                                                "dictionary.safetensors"]

    # Loaded back (by running the code file, not unpickling), it restores faces exactly as the generator does.
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    landmarks = rng.random((2, 68, 2)) * 64 + 32
    restored = mlflow.pyfunc.load_model(uri).predict({"faces": faces, "landmarks68": landmarks})
    with torch.no_grad():
        expected = small_generator(images_to_tensor(list(faces)),
                                   dfdcore.part_boxes(torch.as_tensor(landmarks), face_size=128))
    expected = ((expected.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert restored.shape == (2, 128, 128, 3) and restored.dtype == np.uint8
    assert np.array_equal(restored, expected)


def test_one_resolver_for_versions_and_aliases_pins_the_version_and_fetches_the_files_once(
        sqlite_mlflow, small_generator, small_dictionary, tmp_path):
    from dfd.flows.registry import RegistryError, promote, register_generator, registered_files, resolve_registered
    from dfdcore.restoration.restorer import ModelSpec

    weights = dfdcore.save_checkpoint(small_generator, tmp_path / "generator.safetensors")
    dictionary = small_dictionary.save(tmp_path / "dictionary.safetensors")
    with mlflow.start_run(experiment_id=sqlite_mlflow) as run:
        version = register_generator(weights, dictionary, "dfd-alias-test")
    assert promote("dfd-alias-test", version, "champion") == (None, version)
    assert promote("dfd-alias-test", version, "champion") == (version, version)  # str, as the store gives it back

    by_version, version_tags = resolve_registered(ModelSpec(registered=f"dfd-alias-test/{version}"))
    by_alias, alias_tags = resolve_registered(ModelSpec(registered="models:/dfd-alias-test@champion"))
    assert by_alias == by_version and by_alias.registered == f"dfd-alias-test/{version}"
    assert version_tags == {"registered_model": f"dfd-alias-test/{version}", "model_run_id": run.info.run_id}
    assert alias_tags == version_tags | {"registered_as": "dfd-alias-test@champion"}
    # fetched once into the dfd home, the same paths on every call (a run's model identity holds them)
    assert by_alias.weights.startswith(str(tmp_path / "home" / "registry" / "dfd-alias-test"))
    assert registered_files("dfd-alias-test", version) == (Path(by_alias.weights), Path(by_alias.dictionary))
    model = by_alias.build()
    assert model.provenance["registered"] == f"dfd-alias-test/{version}"
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in small_generator.parameters())

    assert resolve_registered(ModelSpec(name="identity")) == (ModelSpec(name="identity"), {})
    with pytest.raises(RegistryError, match=r"dfd-alias-test has no version 9; its versions: 1$"):
        resolve_registered(ModelSpec(registered="dfd-alias-test/9"))
    with pytest.raises(ValueError, match="NAME/VERSION"):
        ModelSpec(registered="dfd-alias-test/latest")
    with pytest.raises(ValueError, match="resolve it first"):
        ModelSpec(registered="dfd-alias-test@champion").build()
