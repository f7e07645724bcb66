"""The bundled model (dfdcore/assets/models/): dfd's default when no model is named — restored with, named by its
own name everywhere, its files checked against model.json's sha256; explicit files and bad options still win."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dfd.cli import main
from dfdcore.models.bundled import (
    DEFAULT_MODEL,
    MODELS_ENV,
    PACKAGE_MODELS,
    BundledModelError,
    bundled_model,
)
from dfdcore.restoration.manifest import read_manifest
from dfdcore.restoration.restorer import ModelSpec, model_label

from .conftest import copy_portraits, portrait

LABEL = f"{DEFAULT_MODEL} (bundled)"


def run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return copy_portraits(tmp_path_factory.mktemp("bundled") / "in", ["grace_hopper.jpg", "obama.jpg"])


@pytest.fixture(scope="module")
def restored(photos):
    """`dfd restore` of two bundled photos with no model option at all → (output folder, CLI output)."""
    out = photos.parent / "out"
    result = run("restore", photos, "-o", out, "-s", "1", "--cmp", "--save-faces")
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture()
def tampered(tmp_path):
    """A copy of the bundled models' folder whose default generator has one byte flipped → (root, generator)."""
    root = tmp_path / "models"
    shutil.copytree(PACKAGE_MODELS / DEFAULT_MODEL, root / DEFAULT_MODEL)
    generator = bundled_model(DEFAULT_MODEL, root, verify=False).generator
    data = bytearray(generator.read_bytes())
    data[len(data) // 2] ^= 0xFF
    generator.write_bytes(bytes(data))
    return root, generator


def test_model_json_names_the_default_model_and_its_files():
    model = bundled_model()
    record = json.loads((PACKAGE_MODELS / DEFAULT_MODEL / "model.json").read_text())
    assert record["name"] == model.name == DEFAULT_MODEL
    assert model.generator.is_file() and model.dictionary.is_file()
    assert model.config["face_size"] == 128 and "val_psnr" in model.validation
    from dfd.options import BUNDLED_DEFAULT, WEIGHTS_HELP

    assert BUNDLED_DEFAULT == DEFAULT_MODEL and DEFAULT_MODEL in WEIGHTS_HELP  # help texts name the real default


def test_restore_without_a_model_restores_every_face_with_the_bundled_model(restored):
    out, output = restored
    assert f"model      {LABEL}" in output and "2 restored" in output and "0 failed" in output
    rows = read_manifest(str(out / "manifest.parquet")).values()
    assert sorted((r["relpath"], r["status"], r["n_faces"]) for r in rows) == [
        ("grace_hopper.jpg", "ok", 1), ("obama.jpg", "ok", 1)]
    for row in rows:
        identity = json.loads(row["model_id"])
        assert identity["bundled"] == DEFAULT_MODEL and identity["checkpoint"].startswith(f"{DEFAULT_MODEL}/")
        assert identity["checkpoint_sha256"] == bundled_model().sha256["generator"]
        assert str(PACKAGE_MODELS) not in row["model_id"]  # named, not this install's path
    with Image.open(out / "cmp" / "obama.png") as cmp:
        assert cmp.text["dfd:label"] == LABEL
    with Image.open(out / "cropped_faces" / "obama_00.png") as crop, \
            Image.open(out / "restored_faces" / "obama_00.png") as face:
        assert face.size == (128, 128)
        # The model ran (an unchanged face gives 0); on a clean, sharp face a residual restorer changes little.
        assert np.abs(np.asarray(face, np.float32) - np.asarray(crop, np.float32)).mean() > 0.3


def test_ray_workers_build_the_bundled_model_from_its_name(restored, photos, tmp_path):
    out, _ = restored
    result = run("restore", photos, "-o", tmp_path / "parallel", "-s", "1", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert f"model      {LABEL}" in result.output
    single = {r["relpath"]: r for r in read_manifest(str(out / "manifest.parquet")).values()}
    parallel = {r["relpath"]: r for r in read_manifest(str(tmp_path / "parallel" / "manifest.parquet")).values()}
    for name, row in parallel.items():
        assert (row["status"], row["n_faces"], row["model_id"]) == ("ok", 1, single[name]["model_id"])


def test_a_tampered_file_is_refused_naming_it_and_both_digests(tampered):
    root, generator = tampered
    expected = bundled_model().sha256["generator"]
    with pytest.raises(BundledModelError) as caught:
        bundled_model(DEFAULT_MODEL, root)
    message = str(caught.value)
    assert str(generator) in message and f"model.json expects {expected}" in message
    actual = message.split("has sha256 ")[1].split(",")[0]
    assert len(actual) == 64 and actual != expected
    (root / DEFAULT_MODEL / "dictionary.safetensors").unlink()
    generator.write_bytes((PACKAGE_MODELS / DEFAULT_MODEL / generator.name).read_bytes())
    with pytest.raises(BundledModelError, match="dictionary .*dictionary.safetensors is missing"):
        bundled_model(DEFAULT_MODEL, root)
    with pytest.raises(BundledModelError, match=f"no bundled model 'nope' in .*there are \\['{DEFAULT_MODEL}'\\]"):
        bundled_model("nope", root)


def test_restore_refuses_a_tampered_bundled_model_before_any_work(tampered, tmp_path):
    root, generator = tampered
    result = run("restore", portrait("grace_hopper.jpg"), "-o", tmp_path / "out", env={MODELS_ENV: str(root)})
    assert result.exit_code == 1 and "has sha256" in result.output and generator.name in result.output
    assert not (tmp_path / "out" / "restored_imgs").exists()


def test_given_weights_and_dictionary_are_used_instead_of_the_bundled_model(tmp_path):
    files = shutil.copytree(PACKAGE_MODELS / DEFAULT_MODEL, tmp_path / "mine")  # same bytes, the user's own paths
    result = run("restore", portrait("grace_hopper.jpg"), "-o", tmp_path / "out", "-s", "1",
                 "--weights", files / "generator.safetensors", "--dictionary", files / "dictionary.safetensors")
    assert result.exit_code == 0, result.output
    assert f"model      {files / 'generator.safetensors'}" in result.output and LABEL not in result.output
    [row] = read_manifest(str(tmp_path / "out" / "manifest.parquet")).values()
    identity = json.loads(row["model_id"])
    assert "bundled" not in identity and identity["checkpoint"] == str((files / "generator.safetensors").resolve())


@pytest.mark.parametrize("args, says", [
    (["--dictionary", "d.safetensors"], "--dictionary without --weights"),
    (["--weights", "g.safetensors"], "--weights without --dictionary"),
    (["--bundled", DEFAULT_MODEL, "--weights", "g.safetensors"], "brings its own files: leave out weights"),
])
def test_half_or_clashing_model_options_are_usage_errors(tmp_path, args, says):
    result = CliRunner().invoke(main, ["restore", str(portrait("grace_hopper.jpg")), "-o", str(tmp_path), *args])
    assert result.exit_code == 2 and says in result.output, result.output


def test_a_spec_naming_no_model_resolves_to_the_bundled_one_and_others_stay():
    import inspect

    from dfd.flows.evaluate import run_label
    from dfd.flows.restore_bucket import restore_bucket, run_params

    default = inspect.signature(restore_bucket.fn).parameters["model"].default
    assert default.resolved() == ModelSpec(bundled=DEFAULT_MODEL)  # the flow's default run
    assert run_params("in/", "out/", default.resolved(), *_options())["model_bundled"] == DEFAULT_MODEL
    assert run_label(ModelSpec().resolved(), {}) == DEFAULT_MODEL
    for named in (ModelSpec("identity"), ModelSpec(random_weights=True), ModelSpec(weights="g", dictionary="d"),
                  ModelSpec(registered="dfd-generator@champion")):
        assert named.resolved() is named
    assert model_label({"bundled": DEFAULT_MODEL, "step": 1500, "random_vgg": True}) == LABEL


def _options():
    from dfdcore.restoration.bulk import RunOptions
    from dfdcore.restoration.restorer import RestoreOptions

    return RestoreOptions(), RunOptions()


def test_serve_offers_the_bundled_model_by_its_name_and_restores_with_it():
    from fastapi.testclient import TestClient

    from dfd.serve import Limits, create_app, load_models

    models = load_models(ModelSpec(device="cpu"))
    assert list(models) == [DEFAULT_MODEL, "identity"]
    with TestClient(create_app(models, Limits(max_bytes=2**20))) as client:
        assert client.get("/api/config").json()["models"][DEFAULT_MODEL] == LABEL
        reply = client.post("/api/restore", params={"upscale": 1}, content=portrait("grace_hopper.jpg").read_bytes())
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["model"], body["label"], len(body["faces"])) == (DEFAULT_MODEL, LABEL, 1)

