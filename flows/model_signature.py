"""The registered generator's MLflow signature and input example.

``DFDNetModel.predict`` (flows/registry_model.py) takes ``{"faces": (B, S, S, 3) uint8, "landmarks68": (B, 68, 2)
float64}`` and gives (B, S, S, 3) uint8, S being the generator's face size: the signature says exactly that (named
tensors, any batch), and the input example is one real aligned face of that size with its landmarks — a held-out
face of the training's faceset when there is one, else the bundled grace_hopper.jpg aligned on the fly. MLflow
runs the logged model on the example when it logs it (its serving-input check), so a registered version is known
to load and restore a face.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

EXAMPLE_PHOTO = "grace_hopper.jpg"  # of dfdcore/assets: one frontal face, public domain


def generator_face_size(generator: str | Path, dictionary: str | Path) -> int:
    """S of a generator file: from a dfd .safetensors' metadata, else by loading it (official or BasicSR files)."""
    from dfdcore.arch.checkpoint import read_metadata

    config = read_metadata(generator).get("config")
    if config:
        return int(json.loads(config)["face_size"])
    from dfdcore.api import load_generator

    return load_generator(generator, dictionary).config.face_size


def example_face(face_size: int, faceset: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One aligned face → ((S, S, 3) uint8, (68, 2) float64 landmarks on it): the faceset's first held-out face
    (else its first training face) when it holds ``face_size`` faces, else the bundled example photo's."""
    from dfdcore.data.faceset import FaceSet

    if faceset:
        for split in ("test", "train"):
            faces = FaceSet(faceset, split)
            if faces.face_size == face_size and len(faces):
                return faces.face(0)
    return _bundled_face(face_size)


@functools.cache  # detection costs a second or two; a process registering several versions aligns it once
def _bundled_face(face_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The bundled example photo's face, aligned to ``face_size`` → ((S, S, 3) uint8, (68, 2) float64)."""
    import dfdcore
    from dfdcore.data.faceset import faces_from_photos
    from dfdcore.io.images import decode_png
    from dfdcore.io.storage import Source

    photo = Path(dfdcore.__file__).parent / "assets" / EXAMPLE_PHOTO
    rows, skipped = faces_from_photos([Source(str(photo), photo.name)], face_size)
    if not rows:
        raise RuntimeError(f"{photo}: expected one face for the model's input example, got none ({skipped})")
    face, landmarks = decode_png(rows[0]["face"]), np.asarray(rows[0]["lm68"], np.float64).reshape(68, 2)
    face.flags.writeable = landmarks.flags.writeable = False  # shared by every later call
    return face, landmarks


def input_example(face_size: int, faceset: str | None = None) -> dict[str, np.ndarray]:
    """The pyfunc's input for one face: {"faces": (1, S, S, 3) uint8, "landmarks68": (1, 68, 2) float64}."""
    face, landmarks = example_face(face_size, faceset)
    return {"faces": face[None].astype(np.uint8), "landmarks68": landmarks[None].astype(np.float64)}


def model_signature(face_size: int):
    """The pyfunc's ModelSignature: named tensors faces (-1, S, S, 3) uint8 and landmarks68 (-1, 68, 2) float64 in,
    restored faces (-1, S, S, 3) uint8 out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    faces = (-1, face_size, face_size, 3)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), faces, "faces"),
                       TensorSpec(np.dtype(np.float64), (-1, 68, 2), "landmarks68")]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), faces)]))
