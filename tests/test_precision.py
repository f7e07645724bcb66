"""`--precision fp32|fp16|bf16`: the generator under autocast, everything around it float32 (issue 26, item 3).

The end-to-end test restores a real portrait with the bundled model at fp32 and at bf16 on the CPU: the face region
must stay close to the fp32 output, and the outputs and manifest must say which precision made them."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dfd.cli import main
from dfdcore.arch.spectral_norm import SNConv2d
from dfdcore.arch.transfer import channel_stats
from dfdcore.restoration.manifest import read_manifest
from dfdcore.restoration.precision import PRECISIONS, PrecisionError, autocast, forward_at, with_precision
from dfdcore.restoration.restorer import IdentityModel, ModelSpec

from .conftest import portrait

# bf16 keeps 8 bits of mantissa: on dfd-pd-128's faces it moves a few pixels by a few levels (bench/RESULTS.md,
# "Half precision": ~60 dB against fp32). A broken path — a 16-bit dictionary match picking another eye entry, an
# overflowed variance — moves whole components by tens of levels and lands far below this.
MIN_FACE_PSNR_DB = 50.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of one shape (inf when equal)."""
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def restore(photo, out, *extra):
    args = ["restore", str(photo), "-o", str(out), "--upscale", "1", "--ext", "png", "--save-faces", *extra]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_restore_bf16_on_the_cpu_is_close_to_fp32_and_says_so(tmp_path):
    photo = portrait("grace_hopper.jpg")
    runs = {}
    for precision in ("fp32", "bf16"):
        result = restore(photo, tmp_path / precision, "--precision", precision, "--device", "cpu")
        assert result.exit_code == 0, result.output
        row = next(iter(read_manifest(str(tmp_path / precision / "manifest.parquet")).values()))
        assert row["status"] == "ok" and row["n_faces"] == 1, row
        runs[precision] = row
    assert "dfd-pd-128 (bundled), bf16" in result.output  # the summary names the precision

    x1, y1, x2, y2 = (round(v) for v in runs["fp32"]["faces"][0]["det_box"])
    images = {p: np.asarray(Image.open(tmp_path / p / "restored_imgs" / "grace_hopper.png")) for p in runs}
    faces = {p: np.asarray(Image.open(tmp_path / p / "restored_faces" / "grace_hopper_00.png")) for p in runs}
    region = {p: image[y1:y2, x1:x2] for p, image in images.items()}
    assert region["fp32"].size > 0
    assert psnr(region["fp32"], region["bf16"]) >= MIN_FACE_PSNR_DB
    assert psnr(faces["fp32"], faces["bf16"]) >= MIN_FACE_PSNR_DB
    assert not np.array_equal(faces["fp32"], faces["bf16"])  # bf16 really ran: autocast was not silently off

    identities = {p: json.loads(row["model_id"]) for p, row in runs.items()}
    assert identities["bf16"]["precision"] == "bf16" and "precision" not in identities["fp32"]  # fp32: as before
    assert runs["bf16"]["config_hash"] != runs["fp32"]["config_hash"]  # a rerun at another precision redoes it
    with Image.open(tmp_path / "bf16" / "restored_imgs" / "grace_hopper.png") as output:
        assert json.loads(output.text["dfd:model"])["precision"] == "bf16"


@pytest.mark.parametrize("command", ["restore", "sample", "serve"])
def test_an_unknown_precision_is_refused_with_the_choices(tmp_path, command):
    args = [command, "--precision", "fp8"] + ([str(portrait("grace_hopper.jpg")), "-o", str(tmp_path)]
                                                if command == "restore" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "'fp8' is not one of 'fp32', 'fp16', 'bf16'" in result.output


def test_export_refuses_a_16_bit_precision(tmp_path):
    result = CliRunner().invoke(main, ["export", "--onnx", str(tmp_path / "g.onnx"), "--precision", "bf16"])
    assert result.exit_code == 2 and "float32 graph" in result.output and "--precision bf16" in result.output


def test_the_cli_and_the_core_name_the_same_precisions():
    from dfd import options

    assert options.PRECISIONS == PRECISIONS


def test_channel_statistics_of_16_bit_features_are_float32_and_finite():
    """Deep VGG features reach the hundreds: their variance overflows float16 (max 65504), which once made fp16
    pick another eye entry for one of the bundled portraits."""
    features = torch.randn(2, 4, 6, 6) * 400
    mean, std = channel_stats(features.half())
    reference = channel_stats(features.half().float())
    assert mean.dtype == std.dtype == torch.float32 and torch.isfinite(std).all()
    torch.testing.assert_close((mean, std), reference)


def test_spectral_norm_runs_under_autocast_with_a_float32_sigma():
    conv = SNConv2d(3, 4).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode(), autocast("cpu", "bf16"):
        out = conv(x)
        sigma = conv.sigma()
    assert out.dtype == torch.bfloat16 and sigma.dtype == torch.float32
    torch.testing.assert_close(out.float(), conv(x), atol=0.05, rtol=0.02)


def test_precision_is_recorded_only_when_16_bit_and_the_output_is_float32():
    model = with_precision(IdentityModel(8), "bf16")
    assert model.provenance["precision"] == "bf16"
    faces = torch.rand(1, 3, 8, 8) * 2 - 1
    assert forward_at(model, faces, torch.zeros(1, 4, 4, dtype=torch.int64)).dtype == torch.float32
    assert "precision" not in with_precision(model, "fp32").provenance  # fp32 is how outputs were always made


def test_a_device_without_autocast_is_an_error_not_a_silent_float32_run():
    with pytest.raises(PrecisionError, match="--precision bf16: meta cannot autocast"), autocast("meta", "bf16"):
        pass
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16, got 'fp8'"):
        with_precision(IdentityModel(8), "fp8")
    with pytest.raises(ValueError, match=r"ModelSpec.precision must be one of \('fp32', 'fp16', 'bf16'\), got 'half'"):
        ModelSpec(precision="half")  # the flow's parameters and the Ray workers' specs are checked too
