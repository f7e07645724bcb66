"""The generator's state_dict is the official UNetDictFace layout (reference tsv, 386 rows)."""
from __future__ import annotations

import functools

import torch

from dfdcore import DFDNet, OFFICIAL
from dfdcore.arch import IGNORED_KEY_PREFIXES

from .conftest import REFERENCE_TSV, team_file


def reference_layout() -> dict[str, tuple[int, ...]]:
    rows = team_file(REFERENCE_TSV).read_text().strip().splitlines()[1:]
    return {key: tuple(int(d) for d in shape.split(",")) for key, shape in (row.split("\t") for row in rows)}


@functools.cache
def official_model() -> DFDNet:
    with torch.device("meta"):  # shapes only, no memory
        return DFDNet(OFFICIAL)


def official_layout() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in official_model().state_dict().items()}


def test_reference_has_386_keys():
    assert len(reference_layout()) == 386


def test_every_built_key_matches_reference_shape():
    reference, ours = reference_layout(), official_layout()
    assert set(ours) <= set(reference), sorted(set(ours) - set(reference))
    mismatched = {k: (ours[k], reference[k]) for k in ours if ours[k] != reference[k]}
    assert mismatched == {}


def test_only_declared_keys_are_not_built():
    reference, ours = reference_layout(), official_layout()
    not_built = set(reference) - set(ours)
    assert not_built == {k for k in reference if k.startswith(IGNORED_KEY_PREFIXES)}
    assert len(not_built) == 6 + 32  # VGG classifier (3 linears) and to_rgb0..3 (2 SN convs each)
    assert len(ours) == 348


def test_key_order_follows_reference():
    reference = [k for k in reference_layout() if not k.startswith(IGNORED_KEY_PREFIXES)]
    assert list(official_layout()) == reference


def test_vgg_convs_are_shared_between_model_and_groups():
    vgg = official_model().VggExtract
    assert getattr(vgg.features[1], "10") is getattr(vgg.model.features, "10")
    assert getattr(vgg.features[3], "34") is getattr(vgg.model.features, "34")
