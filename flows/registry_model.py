"""The registered generator's pyfunc model, logged as MLflow "models from code": MLflow copies this file into the
model and runs it on load (``mlflow.models.set_model`` below names the model), so loading unpickles nothing.

It runs on its own (outside the ``flows`` package, under a module name MLflow picks): import only installed
packages here (dfdcore, numpy, torch, mlflow), nothing relative."""
from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class DFDNetModel(PythonModel):
    """Restores aligned faces: ``predict({"faces": (B, S, S, 3) uint8, "landmarks68": (B, 68, 2)})`` → (B, S, S, 3)
    uint8. For whole photos, fetch the files with ``registered_files`` and use ``dfd restore --weights …``."""

    def load_context(self, context) -> None:
        from dfdcore.api import load_generator

        self.generator = load_generator(context.artifacts["generator"], context.artifacts["dictionary"])

    # No type hint on model_input: MLflow's type hints describe lists of records (list[...]), and this model takes
    # one dict of two arrays; MLflow then warns "Add type hints to the `predict` method" on definition.
    def predict(self, context, model_input, params=None):
        import torch

        from dfdcore.components import part_boxes
        from dfdcore.data.faceset import to_unit_range

        faces = np.asarray(model_input["faces"], dtype=np.uint8)
        boxes = part_boxes(torch.as_tensor(np.asarray(model_input["landmarks68"], np.float64)),
                           face_size=self.generator.config.face_size)
        with torch.no_grad():
            restored = self.generator(to_unit_range(list(faces)), boxes)
        return ((restored.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


mlflow.models.set_model(DFDNetModel())
