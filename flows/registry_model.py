"""The registered generator's pyfunc model, logged as MLflow "models from code": MLflow copies this file into the
model and runs it on load (``mlflow.models.set_model`` below names the model), so loading unpickles nothing.

It runs on its own (outside the ``flows`` package, under a module name MLflow picks): import only installed
packages here (dfdcore, numpy, torch, mlflow), nothing relative."""
from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class DFDNetModel(PythonModel):
    """Restores aligned faces: ``predict({"faces": (B, S, S, 3) uint8, "landmarks68": (B, 68, 2) float64})`` →
    (B, S, S, 3) uint8; the logged model's signature says so, and MLflow enforces it on ``pyfunc.load_model(...)
    .predict`` (``flows.model_signature``). For whole photos, fetch the files with ``registered_files`` and use
    ``dfd restore --weights …``."""

    # MLflow checks predict's type hints when the class is defined and warns "Add type hints to the `predict`
    # method" without them; the hints it can use describe list[...] of records, pydantic models or a DataFrame,
    # and this model takes one dict of two named arrays (a dict[...] hint is refused when the model is logged).
    # MLflow's own switch for classes whose input its hints cannot describe (its ChatModel uses it) turns the
    # check, and so the warning, off: predict then runs unwrapped, exactly as without hints.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from dfdcore.api import load_generator

        self.generator = load_generator(context.artifacts["generator"], context.artifacts["dictionary"])

    def predict(self, context, model_input, params=None):
        import torch

        from dfdcore.components import part_boxes
        from dfdcore.io.pixels import images_to_tensor, tensor_to_images

        faces = np.asarray(model_input["faces"], dtype=np.uint8)
        boxes = part_boxes(torch.as_tensor(np.asarray(model_input["landmarks68"], np.float64)),
                           face_size=self.generator.config.face_size)
        with torch.no_grad():
            restored = self.generator(images_to_tensor(faces), boxes)
        return tensor_to_images(restored)


mlflow.models.set_model(DFDNetModel())
