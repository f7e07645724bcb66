"""ComponentDictionary: official folder ⇄ safetensors round trips, shapes, and errors that name the file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dfdcore import OFFICIAL, PARTS, ComponentDictionary, DictionaryError, random_generator
from dfdcore.dictionary.format import official_file_name

OFFICIAL_SHAPES = {  # reference §2 table
    (256, "left_eye"): (512, 128, 40, 40), (256, "nose"): (512, 128, 25, 25), (256, "mouth"): (512, 128, 55, 55),
    (128, "left_eye"): (512, 256, 20, 20), (128, "nose"): (512, 256, 12, 12), (128, "mouth"): (512, 256, 27, 27),
    (64, "left_eye"): (512, 512, 10, 10), (64, "nose"): (512, 512, 6, 6), (64, "mouth"): (512, 512, 13, 13),
    (32, "left_eye"): (512, 512, 5, 5), (32, "nose"): (512, 512, 3, 3), (32, "mouth"): (512, 512, 6, 6),
}


def all_tensors(dictionary):
    return {key: dictionary.tensor(*key) for key in dictionary.keys()}


def test_official_shapes_and_size():
    dictionary = ComponentDictionary.random(OFFICIAL, k=512)  # lazy: nothing generated
    for (scale, part), shape in OFFICIAL_SHAPES.items():
        assert dictionary.shape(scale, part) == shape
        if part == "left_eye":
            assert dictionary.shape(scale, "right_eye") == shape
    assert dictionary.nbytes_float32 // 4 == 799_277_056


def test_round_trip_official_folder_and_safetensors_is_exact(tmp_path, small_dictionary):
    original = all_tensors(small_dictionary)
    folder = small_dictionary.save_official(tmp_path / "DictionaryCenter512")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        official_file_name(s, p) for s in small_dictionary.config.scales for p in PARTS)
    assert np.load(folder / "mouth_64_center.npy").shape == small_dictionary.shape(64, "mouth")
    from_folder = ComponentDictionary.load(folder)
    assert from_folder.config == small_dictionary.config and from_folder.k == 16
    single = from_folder.save(tmp_path / "dictionary.safetensors")
    from_file = ComponentDictionary.load(single)
    back = from_file.save_official(tmp_path / "again")
    for loaded in (from_folder, from_file, ComponentDictionary.load(back)):
        for key, tensor in all_tensors(loaded).items():
            assert torch.equal(tensor, original[key]), key


def test_safetensors_file_is_standard_and_carries_metadata(tmp_path, small_dictionary):
    path = small_dictionary.save(tmp_path / "dictionary.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        assert torch.equal(handle.get_tensor("32/nose"), small_dictionary.tensor(32, "nose"))
        assert len(list(handle.keys())) == 16
    assert meta["k"] == "16" and meta["face_size"] == "128" and meta["ngf"] == "8"
    assert meta["channels"] == "[16, 32, 64, 64]"
    assert ComponentDictionary.load(path).metadata["provenance"] == {"random": True, "seed": 3}


def test_float16_safetensors(tmp_path, small_dictionary):
    path = small_dictionary.save(tmp_path / "half.safetensors", dtype=torch.float16)
    loaded = ComponentDictionary.load(path)
    assert torch.equal(loaded.tensor(64, "left_eye"), small_dictionary.tensor(64, "left_eye").half().float())


def test_flat_official_arrays_are_accepted(tmp_path, small_dictionary):
    folder = small_dictionary.save_official(tmp_path / "flat")
    for file in folder.iterdir():
        array = np.load(file)
        np.save(file, array.reshape(array.shape[0], -1))
    loaded = ComponentDictionary.load(folder)
    assert torch.equal(loaded.tensor(32, "mouth"), small_dictionary.tensor(32, "mouth"))


def test_wrong_shape_names_the_file(tmp_path, small_dictionary):
    folder = small_dictionary.save_official(tmp_path / "bad")
    np.save(folder / "right_eye_32_center.npy", np.zeros((16, 32, 6, 6), np.float32))
    with pytest.raises(DictionaryError, match=r"right_eye_32_center\.npy: expected shape \(K, 32, 5, 5\)"):
        ComponentDictionary.load(folder)


def test_missing_file_is_listed(tmp_path, small_dictionary):
    folder = small_dictionary.save_official(tmp_path / "missing")
    (folder / "nose_16_center.npy").unlink()
    with pytest.raises(DictionaryError, match="missing 1 of 16 dictionary files: nose_16_center.npy"):
        ComponentDictionary.load(folder)


def test_truncated_files_are_errors(tmp_path, small_dictionary):
    folder = small_dictionary.save_official(tmp_path / "trunc")
    file = folder / "mouth_64_center.npy"
    file.write_bytes(file.read_bytes()[:-40])
    with pytest.raises(DictionaryError, match=r"mouth_64_center\.npy: truncated file"):
        ComponentDictionary.load(folder)
    single = small_dictionary.save(tmp_path / "d.safetensors")
    single.write_bytes(single.read_bytes()[:-8])
    with pytest.raises(DictionaryError, match=r"d\.safetensors: truncated file"):
        ComponentDictionary.load(single)


def test_object_and_mismatched_k_are_rejected(tmp_path, small_dictionary):
    folder = small_dictionary.save_official(tmp_path / "obj")
    np.save(folder / "left_eye_64_center.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(DictionaryError, match="left_eye_64_center.npy: expected a numeric array"):
        ComponentDictionary.load(folder)
    folder = small_dictionary.save_official(tmp_path / "k")
    np.save(folder / "left_eye_64_center.npy", np.zeros((15, 16, 10, 10), np.float32))
    with pytest.raises(DictionaryError, match=r"same K, got \[15, 16\]"):
        ComponentDictionary.load(folder)


def test_not_a_dictionary(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(DictionaryError, match="not a safetensors file"):
        ComponentDictionary.load(junk)
    with pytest.raises(DictionaryError, match="no such dictionary"):
        ComponentDictionary.load(tmp_path / "nowhere.safetensors")
    with pytest.raises(DictionaryError, match="no '\\{part\\}_\\{scale\\}_center.npy' files"):
        ComponentDictionary.load(tmp_path)


def test_malformed_dictionaries_are_one_line_errors(tmp_path, small_dictionary):
    from safetensors.torch import load_file, save_file

    good = small_dictionary.save(tmp_path / "good.safetensors")
    tensors = load_file(str(good))
    save_file(tensors, str(tmp_path / "meta.safetensors"), metadata={"provenance": "{not json", "face_size": "128"})
    with pytest.raises(DictionaryError, match="malformed metadata .*JSONDecodeError"):
        ComponentDictionary.load(tmp_path / "meta.safetensors")
    save_file(tensors, str(tmp_path / "size.safetensors"), metadata={"face_size": "big"})
    with pytest.raises(DictionaryError, match="malformed metadata"):
        ComponentDictionary.load(tmp_path / "size.safetensors")
    for name, content in (("flat", {"256": torch.zeros(2)}), ("list", [torch.zeros(1)]),
                          ("strings", {"256": {"left_eye": "x"}})):
        torch.save(content, tmp_path / f"{name}.pth")
        with pytest.raises(DictionaryError, match="not a BasicSR dictionary"):
            ComponentDictionary.load(tmp_path / f"{name}.pth")


def test_basicsr_dictionary_file(tmp_path, small_dictionary):
    nested = {str(s): {p: small_dictionary.tensor(s, p) for p in PARTS} for s in small_dictionary.config.scales}
    torch.save(nested, tmp_path / "DFDNet_dict.pth")
    loaded = ComponentDictionary.load(tmp_path / "DFDNet_dict.pth")
    assert torch.equal(loaded.tensor(16, "mouth"), small_dictionary.tensor(16, "mouth"))


def test_generator_uses_a_loaded_dictionary_like_the_original(tmp_path, small_dictionary):
    from .conftest import random_faces

    faces, boxes = random_faces(2, seed=1)
    folder = small_dictionary.save_official(tmp_path / "gen")
    with torch.no_grad():
        a = random_generator(small_dictionary, seed=1)(faces, boxes)
        b = random_generator(folder, seed=1)(faces, boxes)
    assert torch.equal(a, b)
