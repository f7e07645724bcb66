"""Generators in MLflow's model registry: a pyfunc model whose artifacts are the generator and its dictionary.

The model is logged from code (flows/registry_model.py), so loading a registered version unpickles nothing."""
from __future__ import annotations

from pathlib import Path

import mlflow

from dfd.flows.registry_model import DFDNetModel  # noqa: F401  (re-exported: the model class, for callers and tests)

DEFAULT_MODEL_NAME = "dfd-generator"
PIP_REQUIREMENTS = ["dfd", "torch==2.14.1", "safetensors"]
# Logged as "models from code": MLflow stores this file's source in the model (code/), not a pickle of the object.
MODEL_CODE = Path(__file__).with_name("registry_model.py")


def register_generator(generator: str | Path, dictionary: str | Path, name: str = DEFAULT_MODEL_NAME, *,
                       validation: dict | None = None, best_metric: str = "psnr") -> str:
    """Log the generator + dictionary as a pyfunc model in the active run and register it → the version.

    ``validation`` (``val_*`` and ``bicubic_*`` figures of the training's validation) becomes tags of the version,
    with ``beats_bicubic`` saying whether the model beat the bicubic baseline on ``best_metric``."""
    info = mlflow.pyfunc.log_model(name="generator", python_model=str(MODEL_CODE),
                                   artifacts={"generator": str(generator), "dictionary": str(dictionary)},
                                   pip_requirements=PIP_REQUIREMENTS, registered_model_name=name)
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


def registered_files(name: str, version: str | int) -> tuple[Path, Path]:
    """(generator, dictionary) local paths of a registered version, downloaded from the artifact store."""
    root = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    artifacts = root / "artifacts"
    generator = next(artifacts.glob("generator*"))
    dictionary = next(p for p in artifacts.iterdir() if p.name != generator.name)
    return generator, dictionary
