"""ONNX export: the batched transfer equals the PyTorch one, onnxruntime equals PyTorch on the bundled faces at
batch 1 and 3 from one file, and unwritable outputs are refused before any work."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dfdcore
from dfd.export_command import export
from dfdcore.export import ExportableDFDNet, ExportError, check_output_path, export_onnx
from dfdcore.face import align_faces
from dfdcore.io import read_rgb
from dfdcore.io.pixels import images_to_tensor

from .conftest import random_faces

ort = pytest.importorskip("onnxruntime")

SMALL_ARGS = ["--random-weights", "--face-size", "128", "--ngf", "8", "--k", "16", "--seed", "7"]


@pytest.fixture(scope="module")
def generator() -> dfdcore.DFDNet:
    """The network that SMALL_ARGS builds in `dfd export`."""
    return dfdcore.random_generator(k=16, seed=7, face_size=128, ngf=8)


@pytest.fixture(scope="module")
def bundled_faces() -> tuple[torch.Tensor, torch.Tensor]:
    """Every face of dfdcore/assets/*.jpg aligned at 128 px: (N, 3, 128, 128) in [-1, 1] and (N, 4, 4) boxes."""
    photos = sorted((Path(dfdcore.__file__).parent / "assets").glob("*.jpg"))
    faces = [face for photo in photos for face in align_faces(read_rgb(photo), face_size=128)]
    assert len(faces) >= 3, f"expected at least 3 faces in {[p.name for p in photos]}, found {len(faces)}"
    return images_to_tensor([f.image for f in faces]), torch.from_numpy(np.stack([f.boxes for f in faces]))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """One graph, exported through the command (`dfd export --onnx ...`)."""
    path = tmp_path_factory.mktemp("onnx") / "dfdnet.onnx"
    result = CliRunner().invoke(export, ["--onnx", str(path), *SMALL_ARGS])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "RANDOM WEIGHTS" in result.output
    return path


def _torch(generator, faces, boxes) -> np.ndarray:
    with torch.no_grad():
        return generator(faces, boxes).numpy()


def test_batched_transfer_equals_pytorch(generator, bundled_faces):
    faces, boxes = bundled_faces
    random, random_boxes = random_faces(4, seed=5)
    random_boxes[0, 0] = torch.tensor([-60, -60, -10, -10])    # entirely outside: skipped
    random_boxes[1, 3] = torch.tensor([-9, 100, 30, 150])      # across two borders: clamped
    random_boxes[2, 2] = torch.tensor([40, 40, 41, 41])        # smaller than a cell at every scale
    for batch, batch_boxes in ((faces, boxes), (random, random_boxes)):
        with torch.no_grad():
            expected, expected_chosen = generator.restore(batch, batch_boxes)
            got, chosen = ExportableDFDNet(generator).restore(batch, batch_boxes)
        assert torch.equal(chosen, expected_chosen)
        assert (got - expected).abs().max().item() < 1e-5
    assert (chosen[0, :, 0] == -1).all() and (chosen[1:, :, 0] >= 0).all()


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_equals_pytorch(exported, generator, bundled_faces, batch):
    faces, boxes = bundled_faces[0][:batch], bundled_faces[1][:batch]
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["faces", "part_boxes"]
    (restored,) = session.run(None, {"faces": faces.numpy(), "part_boxes": boxes.numpy()})
    expected = _torch(generator, faces, boxes)
    assert restored.shape == (batch, 3, 128, 128)
    assert np.abs(restored - expected).max() < 1e-3
    # The dictionary must change the output by more than the tolerance, or the check would not cover the transfer
    # (this small random network's dictionary moves it by a few 1e-3; the two runtimes differ by ~2e-7).
    generator.fidelity = 0.0
    try:
        plain = _torch(generator, faces, boxes)
    finally:
        generator.fidelity = 1.0
    assert np.abs(restored - plain).max() > 1e-3


def test_the_data_lies_beside_the_graph(exported):
    data = exported.with_name(exported.name + ".data")
    assert data.is_file() and data.stat().st_size > 16 * 4 * 1000   # K = 16 float32 entries of every part
    assert not [p.name for p in exported.parent.iterdir() if p.name.startswith(".")]   # no temporary left


def test_unwritable_outputs_are_refused(tmp_path, generator):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = {tmp_path / "missing" / "m.onnx": "does not exist", a_file / "m.onnx": "does not exist",
             tmp_path: "must be a .onnx file", tmp_path / "m.txt": "must be a .onnx file"}
    (tmp_path / "dir.onnx").mkdir()
    cases[tmp_path / "dir.onnx"] = "is a directory"
    for path, reason in cases.items():
        with pytest.raises(ExportError, match=reason):
            export_onnx(generator, path)
    result = CliRunner().invoke(export, ["--onnx", str(tmp_path / "missing" / "m.onnx"), *SMALL_ARGS])
    assert result.exit_code == 1 and "does not exist" in result.output and "Loading" not in result.output
    assert check_output_path(tmp_path / "ok.onnx") == tmp_path / "ok.onnx"
