"""Generators in MLflow's model registry: a pyfunc model whose artifacts are the generator and its dictionary.

The model is logged from code (flows/registry_model.py), so loading a registered version unpickles nothing.
A registered model is named ``NAME/VERSION`` or ``NAME@ALIAS`` wherever dfd takes one (``ModelSpec.registered``):
``resolve_registered`` pins an alias to the version it points to *now* and fetches that version's files, so promoting
a version (``promote``) changes what the next run uses, and every output says which version made it."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import mlflow

from dfd.flows.registry_model import DFDNetModel  # noqa: F401  (re-exported: the model class, for callers and tests)
from dfdcore.restoration.restorer import ModelSpec, registered_ref

DEFAULT_MODEL_NAME = "dfd-generator"
PIP_REQUIREMENTS = ["dfd", "torch==2.14.1", "safetensors"]
# Logged as "models from code": MLflow stores this file's source in the model (code/), not a pickle of the object.
MODEL_CODE = Path(__file__).with_name("registry_model.py")


class RegistryError(LookupError):
    """A registered model, version or alias that the registry does not hold; the message lists what it holds."""


def register_generator(generator: str | Path, dictionary: str | Path, name: str = DEFAULT_MODEL_NAME, *,
                       validation: dict | None = None, best_metric: str = "psnr", faceset: str | None = None) -> str:
    """Log the generator + dictionary as a pyfunc model in the active run and register it → the version.

    The model carries its signature and a one-face input example (``flows.model_signature``; the face from
    ``faceset``'s held-out faces when given, else the bundled example photo's), on which MLflow runs it as it logs.
    ``validation`` (``val_*`` and ``bicubic_*`` figures of the training's validation) becomes tags of the version,
    with ``beats_bicubic`` saying whether the model beat the bicubic baseline on ``best_metric``."""
    from dfd.flows.model_signature import generator_face_size, input_example, model_signature

    face_size = generator_face_size(generator, dictionary)
    info = mlflow.pyfunc.log_model(name="generator", python_model=str(MODEL_CODE),
                                   artifacts={"generator": str(generator), "dictionary": str(dictionary)},
                                   pip_requirements=PIP_REQUIREMENTS, registered_model_name=name,
                                   signature=model_signature(face_size),
                                   input_example=input_example(face_size, faceset))
    version = str(info.registered_model_version)
    if validation:
        client = mlflow.MlflowClient()
        for key, value in validation_tags(validation, best_metric).items():
            client.set_model_version_tag(name, version, key, value)
    return version


def validation_tags(validation: dict, best_metric: str = "psnr") -> dict[str, str]:
    """Tags of a registered version from its validation figures (numbers as text, 4 decimals)."""
    from dfdcore.evaluation.pairs import HIGHER_IS_BETTER

    tags = {key: f"{value:.4f}" if isinstance(value, float) else str(value) for key, value in validation.items()}
    model, bicubic = validation.get(f"val_{best_metric}"), validation.get(f"bicubic_{best_metric}")
    if model is not None and bicubic is not None:
        better = model > bicubic if best_metric in HIGHER_IS_BETTER else model < bicubic
        tags["beats_bicubic"] = str(better).lower()
        tags["selected_by"] = best_metric
    return tags


def use_registry() -> str:
    """Point MLflow at the store dfd's flows use (MLFLOW_TRACKING_URI, else the SQLite file under the dfd home, as
    ``flows.tracking.mlflow_experiment``) for commands that ask the registry outside a flow run → its URI."""
    from dfd.flows.tracking import use_tracking

    return use_tracking()


def registered_model(name: str):
    """The registered model ``name`` (MLflow's RegisteredModel); RegistryError listing the names there are."""
    client = mlflow.MlflowClient()
    try:
        return client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    names = sorted(m.name for m in client.search_registered_models())
    raise RegistryError(f"no registered model {name!r} in {mlflow.get_tracking_uri()}; it holds "
                        f"{', '.join(names) or 'none'}")


def find_version(registered: str):
    """``NAME/VERSION`` or ``NAME@ALIAS`` → MLflow's ModelVersion (an alias as it points now); RegistryError saying
    which versions or aliases the model has when the one asked for is not there."""
    name, kind, value = registered_ref(registered)
    model = registered_model(name)
    client = mlflow.MlflowClient()
    try:
        if kind == "alias":
            return client.get_model_version_by_alias(name, value)
        return client.get_model_version(name, value)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    if kind == "alias":
        aliases = ", ".join(f"{a} → {v}" for a, v in sorted(_aliases(model).items())) or "none"
        raise RegistryError(f"{name} has no alias {value!r}; its aliases: {aliases} (set one with "
                            f"`dfd promote {name} VERSION {value}`)")
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    raise RegistryError(f"{name} has no version {value}; its versions: {', '.join(map(str, versions)) or 'none'}")


def _aliases(model) -> dict[str, str]:
    """{alias: version} of a registered model, versions as text (a SQLite store gives them back as int)."""
    aliases = model.aliases  # {alias: version} in MLflow 3; a list of alias entries in older protos
    pairs = aliases.items() if isinstance(aliases, dict) else ((a.alias, a.version) for a in aliases)
    return {alias: str(version) for alias, version in pairs}


def resolve_registered(spec: ModelSpec, registered: str | None = None) -> tuple[ModelSpec, dict]:
    """``spec`` whose ``registered`` (or the given ``registered``) names a registered model → the spec with that
    version's downloaded files, ``registered`` pinned to ``NAME/VERSION``, and the tags that say so in a run
    (``registered_model``, ``model_run_id``, and ``registered_as`` for an alias). Unchanged without one."""
    registered = registered or spec.registered
    if not registered:
        return spec, {}
    version = find_version(registered)
    generator, dictionary = registered_files(version.name, version.version)
    pinned = f"{version.name}/{version.version}"
    tags = {"registered_model": pinned, "model_run_id": version.run_id}
    if registered_ref(registered)[1] == "alias":
        tags["registered_as"] = registered.removeprefix("models:/")
    return replace(spec, name="dfdnet", weights=str(generator), dictionary=str(dictionary), random_weights=False,
                   registered=pinned), tags


def registered_files(name: str, version: str | int) -> tuple[Path, Path]:
    """(generator, dictionary) local paths of a registered version, downloaded once into the dfd home.

    The folder is the same on every call (a registered version's files never change): a model's identity holds its
    file path, so a fresh temporary download per run would make every photo look new to an incremental run."""
    from dfdcore.runtime import dfd_home

    source = mlflow.MlflowClient().get_model_version(name, str(version)).source
    # keyed by where the version's files live, so that two stores' "dfd-generator/1" never share a folder
    folder = dfd_home() / "registry" / name / f"{version}-{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(dir=folder.parent, prefix=".download-")
        try:
            mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=staging)
            os.replace(staging, folder)  # whole or not at all; a concurrent download that won is kept
        except OSError:
            if not folder.is_dir():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    artifacts = folder / "artifacts"
    generator = next(artifacts.glob("generator*"))
    dictionary = next(p for p in sorted(artifacts.iterdir()) if p.name != generator.name)
    return generator, dictionary


def promote(name: str, version: str | int, alias: str) -> tuple[str | None, str]:
    """Point ``alias`` of the registered model ``name`` at ``version`` → (the version it pointed to before or None,
    the version now). RegistryError for an unknown name or version."""
    find_version(f"{name}/{version}")
    model = registered_model(name)
    before = _aliases(model).get(alias)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version))
    return before, str(version)
