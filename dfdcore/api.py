"""The public entry points: build a ready-to-run generator from weights + dictionary, or a labelled random one."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from dfdcore.arch.blocks import fixed_blur_buffers
from dfdcore.arch.checkpoint import (
    CheckpointError,
    check_state_dict,
    fill_derived_keys,
    infer_ngf,
    read_metadata,
    read_state_dict,
    to_official_keys,
)
from dfdcore.arch.generator import DFDNet
from dfdcore.config import GeneratorConfig
from dfdcore.dictionary.format import ComponentDictionary
from dfdcore.io.hashing import sha256_path
from dfdcore.runtime import release_free_memory


def _as_dictionary(dictionary: ComponentDictionary | str | os.PathLike) -> ComponentDictionary:
    return dictionary if isinstance(dictionary, ComponentDictionary) else ComponentDictionary.load(dictionary)


def load_weights(checkpoint: str | os.PathLike, face_size: int = 512, *, device: str | torch.device = "cpu",
                 fidelity: float = 1.0) -> DFDNet:
    """Load generator weights strictly (no dictionary attached) in eval mode; ngf is read from the weights.

    Raises:
        CheckpointError: missing/unreadable file or missing, unexpected or mis-shaped keys (all listed).
    """
    state, metadata = read_state_dict(checkpoint)
    state = to_official_keys(state)
    config = GeneratorConfig(face_size=face_size, ngf=infer_ngf(state, str(checkpoint)))
    # Strict loading below overwrites every tensor of this freshly initialised model. (Building it on the "meta"
    # device would skip the initialisation but pulls in torch._dynamo: ~150 MiB resident for the process's life.)
    # Residual files written before the linear residual head have no "residual_head": their head ends in tanh.
    model = DFDNet(config, fidelity=fidelity, residual=metadata.get("residual") == "true",
                   residual_tanh=metadata.get("residual_head", "tanh") == "tanh")
    expected = _expected_state(model)
    state = fill_derived_keys(state, expected)
    check_state_dict(state, expected, str(checkpoint))
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
    del state
    release_free_memory()
    model.to(device).eval().requires_grad_(False)
    model.provenance = {"random_weights": False, "checkpoint": str(Path(checkpoint).resolve()),
                        "checkpoint_sha256": sha256_path(checkpoint)}
    if model.residual:
        model.provenance["residual"] = True
    trained = _json_or_none(metadata.get("provenance"))
    if isinstance(trained, dict) and trained.get("trained_by") == "dfd":
        # What the model's own training measured: lets restore/evaluate warn about a model worse than bicubic.
        model.provenance |= {key: trained[key] for key in ("random_vgg", "step", "validation") if key in trained}
    return model


def trained_validation(checkpoint: str | os.PathLike | None) -> dict | None:
    """The validation figures (``val_*`` beside ``bicubic_*``) that dfd's training stored in a generator file, or
    None (official, BasicSR or unvalidated weights)."""
    trained = _json_or_none(read_metadata(checkpoint).get("provenance")) if checkpoint else None
    return trained.get("validation") if isinstance(trained, dict) else None


def _json_or_none(text: str | None):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def load_generator(checkpoint: str | os.PathLike, dictionary: ComponentDictionary | str | os.PathLike, *,
                   device: str | torch.device = "cpu", dict_dtype: torch.dtype | None = None,
                   fidelity: float = 1.0) -> DFDNet:
    """Load a DFDNet generator in eval mode with its dictionary on ``device``.

    Args:
        checkpoint: official ``latest_net_G.pth``, a BasicSR-converted ``.pth`` or a dfd ``.safetensors``.
        dictionary: official ``DictionaryCenter512/`` folder, dfd ``dictionary.safetensors``, BasicSR dictionary
            ``.pth``, or a ComponentDictionary.
        dict_dtype: storage dtype of the dictionary on the device (float32 default; float16/bfloat16 halve it).
        fidelity: weight of the dictionary contribution in [0, 1] (1 = official).

    Raises:
        CheckpointError: missing/unreadable file or missing, unexpected or mis-shaped keys (all listed), or
            weights whose width does not match the dictionary.
        DictionaryError: missing dictionary files or wrong shapes (the file is named).
    """
    dictionary = _as_dictionary(dictionary)
    model = load_weights(checkpoint, dictionary.config.face_size, device=device, fidelity=fidelity)
    if dictionary.config != model.config:
        raise CheckpointError(f"{checkpoint}: weights are for ngf {model.config.ngf}, the dictionary for "
                              f"ngf {dictionary.config.ngf} (channels {dictionary.config.tap_channels})")
    model.attach_dictionary(dictionary, dtype=dict_dtype)
    model.provenance["dictionary"] = dictionary.metadata
    if "source" in dictionary.metadata:
        model.provenance["dictionary_sha256"] = sha256_path(dictionary.metadata["source"])
    return model


def _expected_state(model: DFDNet) -> dict[str, torch.Tensor]:
    """The state_dict layout of ``model`` (shapes; may be on "meta"); Blur buffers carry their fixed values."""
    layout = dict(model.state_dict())
    for key, value in layout.items():
        blur = re.match(r"up\d\.conv1\.0\.(weight|weight_flip)$", key)
        if blur:
            layout[key] = fixed_blur_buffers(value.shape[0])[blur[1]]
    return layout


def random_generator(dictionary: ComponentDictionary | str | os.PathLike | None = None, *, k: int = 512,
                     seed: int = 0, face_size: int = 512, ngf: int = 64, device: str | torch.device = "cpu",
                     dict_dtype: torch.dtype | None = None, fidelity: float = 1.0) -> DFDNet:
    """A generator with random weights (seeded) — for tests and demos only; ``provenance`` says so.

    Without ``dictionary`` a random one with ``k`` entries is generated (lazily, seeded).
    """
    config = GeneratorConfig(face_size=face_size, ngf=ngf)
    dictionary = ComponentDictionary.random(config, k=k, seed=seed) if dictionary is None else \
        _as_dictionary(dictionary)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DFDNet(dictionary.config, fidelity=fidelity)
    model.to(device).eval().requires_grad_(False)
    model.attach_dictionary(dictionary, dtype=dict_dtype)
    model.provenance = {"random_weights": True, "seed": seed, "dictionary": dictionary.metadata}
    return model
