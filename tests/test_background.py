"""Background upsamplers on real photos: interpolations, SR models the test makes (Real-ESRGAN key layouts,
TorchScript), tiling against untiled runs, scale mismatch, greyscale, and refusals of files that hold no model."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dfdcore.arch.sr import RRDBNet, SRModelError, SRVGGNetCompact
from dfdcore.face.paste import upscale_image
from dfdcore.io import read_rgb
from dfdcore.io.pixels import uint8_to_unit
from dfdcore.restoration.background import (
    TILE_PAD,
    load_background_upsampler,
    run_tiled,
    upsampler_identity,
    upscale_background,
)

from .conftest import portrait

# Largest difference (on the [0, 1] scale) allowed between a tiled and an untiled run of the same model.
SEAM_TOLERANCE = 2 / 255


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """grace_hopper.jpg: (512, 512, 3) float32 in [0, 1]."""
    return uint8_to_unit(read_rgb(portrait("grace_hopper.jpg")))


@pytest.fixture(scope="module")
def crop(photo) -> np.ndarray:
    """A (90, 118, 3) piece of the face and its surroundings: small enough for untiled runs."""
    return np.ascontiguousarray(photo[150:240, 190:308])


def _image_like(net: torch.nn.Module, last: torch.nn.Conv2d, crop: np.ndarray) -> torch.nn.Module:
    """Rescale ``last`` so that the random net's output varies like a photo (std ≈ 0.1 around 0.5 on ``crop``):
    with PyTorch's default init it is nearly constant, and a seam test on it would prove nothing."""
    net.eval()
    with torch.no_grad():
        x = torch.from_numpy(crop).permute(2, 0, 1)[None]
        std = net(x).std().item()
        last.weight.mul_(0.1 / std)
        last.bias.copy_(0.5 - net(x).mean() + last.bias)
    return net


def _run(net: torch.nn.Module, rgb: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = net(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None])
    return np.clip(y[0].permute(1, 2, 0).numpy(), 0, 1)


@pytest.fixture(scope="module")
def rrdb_x4(tmp_path_factory, crop) -> tuple[str, RRDBNet]:
    """A tiny ×4 RRDBNet (8 features, 2 blocks, growth 4) saved as Real-ESRGAN saves it, under "params_ema"."""
    torch.manual_seed(0)
    net = RRDBNet(num_feat=8, num_block=2, num_grow_ch=4)
    net = _image_like(net, net.conv_last, crop)
    path = tmp_path_factory.mktemp("sr") / "RealESRGAN_tiny_x4.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    return str(path), net


@pytest.fixture(scope="module")
def srvgg_x4(tmp_path_factory, crop) -> tuple[str, SRVGGNetCompact]:
    """A tiny realesr-general-x4v3-style SRVGGNetCompact (8 features, 3 body convs) under "params"."""
    torch.manual_seed(1)
    net = SRVGGNetCompact(num_feat=8, num_conv=3, scale=4)
    net = _image_like(net, net.body[-1], crop)
    path = tmp_path_factory.mktemp("sr") / "realesr-tiny-x4.pth"
    torch.save({"params": net.state_dict()}, path)
    return str(path), net


def test_bicubic_is_upscale_image(photo):
    for scale in (1, 2, 3):
        out = upscale_background(photo, scale)
        assert out.dtype == np.float32 and out.shape == (512 * scale, 512 * scale, 3)
        np.testing.assert_array_equal(out, upscale_image(photo, scale))
    grey = photo[..., :1]
    np.testing.assert_array_equal(upscale_background(grey, 2, "bicubic"), upscale_image(grey, 2))


def test_lanczos_beats_nearest_after_down_up(photo):
    small = cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA)
    lanczos = upscale_background(small, 2, "lanczos")
    bicubic = upscale_background(small, 2, "bicubic")
    nearest = cv2.resize(small, (512, 512), interpolation=cv2.INTER_NEAREST)
    assert lanczos.shape == (512, 512, 3) and lanczos.dtype == np.float32
    assert np.abs(lanczos - bicubic).max() > 5 / 255

    def psnr(x):
        return float(10 * np.log10(1 / np.mean((np.clip(x, 0, 1) - photo) ** 2)))

    # Measured on grace_hopper.jpg: 29.27 dB lanczos, 29.07 bicubic, 26.83 nearest.
    assert psnr(lanczos) > psnr(nearest) + 2.0
    assert psnr(lanczos) > psnr(bicubic) + 0.1


def test_rrdbnet_checkpoint_loads_and_matches_its_network(rrdb_x4, crop):
    path, net = rrdb_x4
    out = upscale_background(crop, 4, path, tile=256)  # one tile: the whole crop
    assert out.shape == (360, 472, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0.05
    np.testing.assert_allclose(out, _run(net, crop), atol=1e-5)


def test_original_esrgan_names_are_read(tmp_path, rrdb_x4, crop):
    _, net = rrdb_x4
    # The first release's names (ESRGAN's RRDB_ESRGAN_x4.pth): prefixes of the whole key, and RDB1..3 inside.
    old = {"body.": "RRDB_trunk.", "conv_body.": "trunk_conv.", "conv_up": "upconv", "conv_hr.": "HRconv."}
    state = {}
    for key, value in net.state_dict().items():
        prefix = next((p for p in old if key.startswith(p)), "")
        key = (old[prefix] + key[len(prefix):] if prefix else key).replace(".rdb", ".RDB")
        state[key] = value
    assert "RRDB_trunk.1.RDB3.conv5.weight" in state and "upconv2.bias" in state
    torch.save(state, tmp_path / "RRDB_ESRGAN_tiny.pth")
    out = upscale_background(crop, 4, str(tmp_path / "RRDB_ESRGAN_tiny.pth"))
    np.testing.assert_allclose(out, _run(net, crop), atol=1e-5)


@pytest.mark.parametrize("unshuffle, native", [(2, 2), (4, 1)])
def test_rrdbnet_unshuffled_scales_are_read_from_conv_first(tmp_path, crop, unshuffle, native):
    torch.manual_seed(2)
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, unshuffle=unshuffle)
    net = _image_like(net, net.conv_last, crop[:88, :116])
    torch.save({"params_ema": net.state_dict()}, tmp_path / "x.pth")
    assert net.conv_first.weight.shape[1] == 3 * unshuffle ** 2
    odd = crop[:89, :117]  # not multiples of the unshuffle: padded and cropped back
    out = upscale_background(odd, native, str(tmp_path / "x.pth"))
    assert out.shape == (89 * native, 117 * native, 3)
    padded = np.pad(odd, ((0, -89 % unshuffle), (0, -117 % unshuffle), (0, 0)), mode="edge")
    np.testing.assert_allclose(out, _run(net, padded)[:89 * native, :117 * native], atol=1e-5)
    # An odd tile is rounded to the unshuffle grid: without that, the tiles would fold other pixel blocks.
    assert np.abs(upscale_background(odd, native, str(tmp_path / "x.pth"), tile=49) - out).max() < SEAM_TOLERANCE


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_srvgg_and_torchscript_load_and_produce(srvgg_x4, crop, tmp_path):
    path, net = srvgg_x4
    out = upscale_background(crop, 4, path)
    assert out.shape == (360, 472, 3) and 0 <= out.min() and out.max() <= 1
    np.testing.assert_allclose(out, _run(net, crop), atol=1e-5)
    save_file(net.state_dict(), tmp_path / "realesr-tiny-x4.safetensors")
    np.testing.assert_array_equal(upscale_background(crop, 4, str(tmp_path / "realesr-tiny-x4.safetensors")), out)
    scripted = tmp_path / "scripted.pt"
    # Traced, as users export theirs (torch.jit.script is deprecated); the tiles below are of other sizes.
    torch.jit.trace(net, torch.rand(1, 3, 40, 40)).save(str(scripted))
    out_script = upscale_background(crop, 4, str(scripted), tile=64)
    assert out_script.shape == (360, 472, 3)
    assert np.abs(out_script - out).max() < SEAM_TOLERANCE


def test_tiled_equals_untiled_and_the_overlap_matters(rrdb_x4, crop):
    path, _ = rrdb_x4
    model = load_background_upsampler(path).args[0]
    untiled = run_tiled(model, crop, tile=256, pad=TILE_PAD)
    tiled = run_tiled(model, crop, tile=64, pad=TILE_PAD)  # 2 × 2 tiles
    assert np.abs(tiled - untiled).max() < SEAM_TOLERANCE
    # Without overlap the seams show: the test above could fail.
    assert np.abs(run_tiled(model, crop, tile=64, pad=0) - untiled).max() > SEAM_TOLERANCE
    np.testing.assert_array_equal(tiled, upscale_background(crop, 4, path, tile=64))


def test_x4_model_asked_for_x2_and_x3(srvgg_x4, crop):
    path, _ = srvgg_x4
    native = upscale_background(crop, 4, path)
    half = upscale_background(crop, 2, path)
    assert half.shape == (180, 236, 3)
    np.testing.assert_allclose(half, cv2.resize(native, (236, 180), interpolation=cv2.INTER_AREA), atol=1e-6)
    # Block averages per tile: the same result (the net sees 5 px around a pixel, the tiles 24).
    np.testing.assert_allclose(upscale_background(crop, 2, path, tile=64), half, atol=1e-5)
    assert upscale_background(crop, 3, path).shape == (270, 354, 3)
    assert upscale_background(crop, 8, path).shape == (720, 944, 3)


def test_greyscale_through_a_colour_model(srvgg_x4, crop):
    path, _ = srvgg_x4
    grey = crop.mean(axis=2, keepdims=True)
    out = upscale_background(grey, 4, path)
    assert out.shape == (360, 472, 1)
    colour = upscale_background(np.repeat(grey, 3, axis=2), 4, path)
    np.testing.assert_allclose(out[..., 0], colour.mean(axis=2), atol=1e-6)


def test_models_are_cached_until_the_file_changes(tmp_path, srvgg_x4):
    path, _ = srvgg_x4
    copy = tmp_path / "m.pth"
    copy.write_bytes(Path(path).read_bytes())
    first = load_background_upsampler(str(copy))
    assert load_background_upsampler(str(copy)) is first
    torch.save(SRVGGNetCompact(8, 1, 2).state_dict(), copy)
    second = load_background_upsampler(str(copy))
    assert second is not first and second.args[0].scale == 2
    identity = upsampler_identity(str(copy))
    assert identity == {"upsampler": "model", "path": str(copy.resolve()),
                        "sha256": hashlib.sha256(copy.read_bytes()).hexdigest()}
    assert upsampler_identity("lanczos") == {"upsampler": "lanczos"}


def test_unknown_state_dict_names_its_keys(tmp_path, crop):
    torch.save({"encoder.conv.weight": torch.zeros(4, 3, 3, 3), "head.bias": torch.zeros(4)}, tmp_path / "g.pth")
    with pytest.raises(SRModelError, match=r"encoder\.conv\.weight \(4, 3, 3, 3\).*head\.bias.*Supported"):
        upscale_background(crop, 2, str(tmp_path / "g.pth"))
    broken = RRDBNet(8, 1, 4).state_dict()
    del broken["conv_hr.weight"]
    torch.save(broken, tmp_path / "b.pth")
    with pytest.raises(SRModelError, match=r"RRDBNet.*missing \['conv_hr.weight'\]"):
        upscale_background(crop, 2, str(tmp_path / "b.pth"))


def test_truncated_pickled_and_missing_files_are_refused(tmp_path, rrdb_x4, crop):
    path, _ = rrdb_x4
    data = Path(path).read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(SRModelError, match=r"cut\.pth: not a readable .*truncated"):
        upscale_background(crop, 2, str(tmp_path / "cut.pth"))
    torch.save({"params_ema": SRModelError("code, not tensors")}, tmp_path / "obj.pth")
    with pytest.raises(SRModelError, match="never runs code"):
        upscale_background(crop, 2, str(tmp_path / "obj.pth"))
    with pytest.raises(SRModelError, match="'bicubic', 'lanczos' or the path"):
        upscale_background(crop, 2, str(tmp_path / "nowhere.pth"))


def test_inputs_are_checked(rrdb_x4, crop):
    path, _ = rrdb_x4
    with pytest.raises(ValueError, match="float32"):
        upscale_background((crop * 255).astype(np.uint8), 2)
    with pytest.raises(ValueError, match=r"\(H, W, 1\) or \(H, W, 3\)"):
        upscale_background(crop[..., :2], 2, "lanczos")
    with pytest.raises(ValueError, match="tile of at least"):
        upscale_background(crop, 2, path, tile=16)
