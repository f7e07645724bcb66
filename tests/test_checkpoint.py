"""Loading generator checkpoints: official layout, BasicSR layout, dfd safetensors — and loud failures."""
from __future__ import annotations

import re

import pytest
import torch

import dfdcore
from dfdcore import CheckpointError, load_generator, save_checkpoint

from .conftest import random_faces

VGG_NAMES = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4", "conv4_1",
             "conv4_2", "conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3", "conv5_4"]
VGG_INDICES = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


def official_file_state(model) -> dict[str, torch.Tensor]:
    """What an official latest_net_G.pth holds: our keys plus the classifier and to_rgb0..3."""
    state = dict(model.state_dict())
    w = model.config.ngf
    gen = torch.Generator().manual_seed(0)
    for i, (out_f, in_f) in zip((0, 3, 6), ((64, 8 * w * 49), (64, 64), (10, 64))):
        state[f"VggExtract.model.classifier.{i}.weight"] = torch.randn(out_f, in_f, generator=gen)
        state[f"VggExtract.model.classifier.{i}.bias"] = torch.randn(out_f, generator=gen)
    for i, c in enumerate((8 * w, 4 * w, 2 * w, w)):
        for j, out_c in ((0, c), (2, 3)):
            state[f"to_rgb{i}.{j}.bias"] = torch.zeros(out_c)
            state[f"to_rgb{i}.{j}.weight_orig"] = torch.randn(out_c, c, 3, 3, generator=gen)
            state[f"to_rgb{i}.{j}.weight_u"] = torch.randn(out_c, generator=gen)
            state[f"to_rgb{i}.{j}.weight_v"] = torch.randn(c * 9, generator=gen)
    return state


def basicsr_state(model) -> dict[str, torch.Tensor]:
    """Rename to BasicSR's DFDNet keys following reference §9.1 (written here independently of the loader)."""
    out = {}
    parts = {"le": "left_eye", "re": "right_eye", "no": "nose", "mo": "mouth"}
    for key, value in model.state_dict().items():
        if key.startswith("VggExtract.features.") or re.match(r"up\d\.conv1\.0\.weight", key):
            continue  # duplicates and Blur buffers are not stored by BasicSR
        if key.startswith("VggExtract.model.features."):
            idx, leaf = key.split(".")[3:5]
            key = f"vgg_extractor.vgg_net.{VGG_NAMES[VGG_INDICES.index(int(idx))]}.{leaf}"
        elif key in ("VggExtract.RGB_mean", "VggExtract.RGB_std"):
            key = "vgg_extractor.mean" if key.endswith("mean") else "vgg_extractor.std"
        elif key[:2] in parts and key[2] == "_":
            key = f"attn_blocks.{parts[key[:2]]}_{key[3:]}"
        elif key.startswith("MSDilate.conv") and key[13].isdigit():
            key = f"multi_scale_dilation.conv_blocks.{int(key[13]) - 1}{key[14:]}"
        elif key.startswith("MSDilate.convi"):
            key = key.replace("MSDilate.convi", "multi_scale_dilation.conv_fusion")
        else:
            key = (key.replace("ScaleModel1", "scale_block").replace("ShiftModel1", "shift_block")
                   .replace(".Model.", ".body."))
            key = "upsample" + key[2:] if key.startswith("up") else key
        out[key] = value.clone()
    return out


@pytest.fixture()
def reference_output(small_generator):
    faces, boxes = random_faces(2, seed=13)
    with torch.no_grad():
        return faces, boxes, small_generator(faces, boxes)


def assert_reproduces(path, small_dictionary, reference_output):
    faces, boxes, expected = reference_output
    model = load_generator(path, small_dictionary)
    assert model.provenance["random_weights"] is False
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(faces, boxes), expected)
    return model


def test_official_layout_loads_strictly_and_reproduces(tmp_path, small_generator, small_dictionary,
                                                       reference_output):
    path = tmp_path / "latest_net_G.pth"
    torch.save(official_file_state(small_generator), path)
    model = assert_reproduces(path, small_dictionary, reference_output)
    assert torch.equal(model.MSDilate.convi.weight_u, small_generator.MSDilate.convi.weight_u)


def test_save_checkpoint_pth_is_official_layout(tmp_path, small_generator, small_dictionary, reference_output):
    path = save_checkpoint(small_generator, tmp_path / "net.pth")
    saved = torch.load(path, weights_only=True)
    assert list(saved) == list(small_generator.state_dict())  # plain state_dict, no wrapper, no prefix
    assert_reproduces(path, small_dictionary, reference_output)


def test_safetensors_checkpoint_round_trip(tmp_path, small_generator, small_dictionary, reference_output):
    path = save_checkpoint(small_generator, tmp_path / "net.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["format"] == "dfd-generator"
        assert not any(k.startswith("VggExtract.features.") for k in handle.keys())
    assert_reproduces(path, small_dictionary, reference_output)


def test_basicsr_checkpoint_loads(tmp_path, small_generator, small_dictionary, reference_output):
    path = tmp_path / "DFDNet_official-converted.pth"
    torch.save({"params": basicsr_state(small_generator)}, path)
    assert_reproduces(path, small_dictionary, reference_output)


def test_data_parallel_prefix_is_accepted(tmp_path, small_generator, small_dictionary, reference_output):
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in small_generator.state_dict().items()}, path)
    assert_reproduces(path, small_dictionary, reference_output)


def test_missing_unexpected_and_misshaped_keys_are_all_reported(tmp_path, small_generator, small_dictionary):
    state = dict(small_generator.state_dict())
    del state["MSDilate.convi.bias"]
    state["extra.weight"] = torch.zeros(3)
    state["up4.0.bias"] = torch.zeros(5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_generator(path, small_dictionary)
    message = str(info.value)
    assert "1 missing key(s): MSDilate.convi.bias" in message
    assert "1 unexpected key(s): extra.weight" in message
    assert "up4.0.bias: checkpoint (5,), model (8,)" in message


def test_truncated_checkpoint_is_an_error(tmp_path, small_generator, small_dictionary):
    path = save_checkpoint(small_generator, tmp_path / "net.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, damaged"):
        load_generator(path, small_dictionary)
    st = save_checkpoint(small_generator, tmp_path / "net.safetensors")
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated, damaged"):
        load_generator(st, small_dictionary)


def test_missing_checkpoint_is_an_error_not_a_random_network(tmp_path, small_dictionary):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_generator(tmp_path / "checkpoints" / "latest_net_G.pth", small_dictionary)


def test_weights_and_dictionary_of_different_widths_are_refused(tmp_path, small_dictionary):
    other = dfdcore.random_generator(k=4, face_size=128, ngf=4)
    path = save_checkpoint(other, tmp_path / "ngf4.pth")
    with pytest.raises(CheckpointError, match="ngf 4, the dictionary for ngf 8"):
        load_generator(path, small_dictionary)


def test_non_state_dict_file_is_refused(tmp_path, small_dictionary):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        load_generator(path, small_dictionary)


class _Payload:
    """Stands for a pickled object in a malicious checkpoint: loading it must not build it."""


def test_a_checkpoint_holding_python_objects_is_refused_without_unsafe_advice(tmp_path, small_dictionary):
    path = tmp_path / "pickled.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(CheckpointError) as refused:
        load_generator(path, small_dictionary)
    message = str(refused.value)
    assert "holds Python objects" in message and "never runs code" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


def test_residual_generator_starts_as_its_input_and_keeps_its_mode_through_safetensors(tmp_path, small_dictionary):
    from dfdcore import DFDNet
    from dfdcore.api import load_weights
    from tests.conftest import SMALL, random_faces

    model = DFDNet(SMALL, residual=True).attach_dictionary(small_dictionary).zero_output_layer().eval()
    faces, boxes = random_faces(2, seed=4)
    with torch.no_grad():
        assert torch.equal(model(faces, boxes), faces)  # a zero head: the output is the input
        model.up4[-2].bias.fill_(0.05)
        shifted = model(faces, boxes)
    assert torch.allclose(shifted, (faces + 0.05).clamp(-1, 1), atol=1e-6)  # a linear head, clamped at inference
    path = dfdcore.save_checkpoint(model, tmp_path / "residual.safetensors")
    loaded = dfdcore.load_generator(path, small_dictionary)
    assert loaded.residual and loaded.provenance["residual"] is True
    with torch.no_grad():
        assert torch.allclose(loaded(faces, boxes), shifted, atol=1e-6)
    assert not loaded.residual_tanh
    # A residual file written before the linear head (no "residual_head" in its metadata) keeps its tanh.
    from safetensors.torch import load_file, safe_open, save_file

    with safe_open(str(path), "pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "residual_head"}
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata=metadata)
    old = dfdcore.load_generator(tmp_path / "old.safetensors", small_dictionary)
    assert old.residual and old.residual_tanh
    with torch.no_grad():
        assert torch.allclose(old(faces, boxes), (faces + torch.tanh(torch.tensor(0.05))).clamp(-1, 1), atol=1e-6)
    # The official layout cannot say "residual": writing it is refused rather than silently changing the output.
    with pytest.raises(ValueError, match="residual"):
        dfdcore.save_checkpoint(model, tmp_path / "residual.pth")
    # Official-layout and plain dfd files load as plain networks.
    plain = dfdcore.save_checkpoint(DFDNet(SMALL), tmp_path / "plain.pth")
    assert load_weights(plain, 128).residual is False
    assert "residual" not in load_weights(plain, 128).provenance


def test_a_saturated_residual_head_still_learns(small_dictionary):
    """The demo's collapse: one bad step pushed the residual head far out, tanh and clamp passed no gradient, and the
    model stayed a black-and-white mask. The residual head is linear and unclamped in training: it is pulled back."""
    from dfdcore import DFDNet
    from tests.conftest import SMALL, random_faces

    model = DFDNet(SMALL, residual=True).attach_dictionary(small_dictionary).zero_output_layer().train()
    faces, boxes = random_faces(2, seed=5)
    with torch.no_grad():
        model.up4[-2].bias.copy_(torch.tensor([4.0, -4.0, 4.0]))  # far out, as after a spike
    loss = (model(faces, boxes) - faces).pow(2).mean()
    loss.backward()
    # d loss / d bias = 2·mean(head) per channel = 2·(±4)/3 for a linear, unclamped head; ~0 for tanh + clamp.
    assert model.up4[-2].bias.grad.abs().min() > 2.0
    optimiser = torch.optim.SGD([model.up4[-2].bias], lr=1.0)
    for _ in range(5):
        optimiser.zero_grad()
        (model(faces, boxes) - faces).pow(2).mean().backward()
        optimiser.step()
    with torch.no_grad():
        restored = model.eval()(faces, boxes)
    assert restored.abs().max() <= 1.0  # inference clamps
    assert (restored - faces).pow(2).mean() < 0.01 * loss.item()
