"""Generators in MLflow's model registry: a pyfunc model whose artifacts are the generator and its dictionary."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

DEFAULT_MODEL_NAME = "dfd-generator"
PIP_REQUIREMENTS = ["dfd", "torch==2.14.1", "safetensors"]


class DFDNetModel(PythonModel):
    """Restores aligned faces: ``predict({"faces": (B, S, S, 3) uint8, "landmarks68": (B, 68, 2)})`` → (B, S, S, 3)
    uint8. For whole photos, fetch the files with ``registered_files`` and use ``dfd restore --weights …``."""

    def load_context(self, context) -> None:
        from dfdcore.api import load_generator

        self.generator = load_generator(context.artifacts["generator"], context.artifacts["dictionary"])

    def predict(self, context, model_input, params=None):
        import torch

        from dfdcore.components import part_boxes
        from dfdcore.faceset import to_unit_range

        faces = np.asarray(model_input["faces"], dtype=np.uint8)
        boxes = part_boxes(torch.as_tensor(np.asarray(model_input["landmarks68"], np.float64)),
                           face_size=self.generator.config.face_size)
        with torch.no_grad():
            restored = self.generator(to_unit_range(list(faces)), boxes)
        return ((restored.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def register_generator(generator: str | Path, dictionary: str | Path, name: str = DEFAULT_MODEL_NAME) -> str:
    """Log the generator + dictionary as a pyfunc model in the active run and register it → the version."""
    info = mlflow.pyfunc.log_model(name="generator", python_model=DFDNetModel(),
                                   artifacts={"generator": str(generator), "dictionary": str(dictionary)},
                                   pip_requirements=PIP_REQUIREMENTS, registered_model_name=name)
    return str(info.registered_model_version)


def registered_files(name: str, version: str | int) -> tuple[Path, Path]:
    """(generator, dictionary) local paths of a registered version, downloaded from the artifact store."""
    root = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    artifacts = root / "artifacts"
    generator = next(artifacts.glob("generator*"))
    dictionary = next(p for p in artifacts.iterdir() if p.name != generator.name)
    return generator, dictionary
