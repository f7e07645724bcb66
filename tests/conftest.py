"""Shared fixtures: small DFDNet configurations (128-px faces, ngf 8) with explicitly random weights."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import dfdcore
from dfdcore import GeneratorConfig

# The team's shared/ folder lies beside the project checkout (in CI too); DFD_SHARED overrides.
SHARED = Path(os.environ.get("DFD_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REFERENCE_TSV = SHARED / "reference" / "dfdnet_official_state_dict.tsv"
SMALL = GeneratorConfig(face_size=128, ngf=8)


@pytest.fixture(scope="session")
def small_config() -> GeneratorConfig:
    return SMALL


@pytest.fixture(scope="session")
def small_dictionary() -> dfdcore.ComponentDictionary:
    return dfdcore.ComponentDictionary.random(SMALL, k=16, seed=3)


@pytest.fixture()
def small_generator(small_dictionary) -> dfdcore.DFDNet:
    return dfdcore.random_generator(small_dictionary, seed=7)


def random_faces(batch: int, size: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random faces in [-1, 1] and plausible part boxes from jittered landmark clouds."""
    gen = torch.Generator().manual_seed(seed)
    faces = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    landmarks = torch.rand(batch, 68, 2, generator=gen) * (size * 0.5) + size * 0.25
    return faces, dfdcore.part_boxes(landmarks, face_size=size)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One Prefect temporary server for the whole session, with its state in a temporary dfd home."""
    home = tmp_path_factory.mktemp("dfd-home")
    os.environ["DFD_HOME"] = str(home)
    from dfd.flows.tracking import configure_prefect

    configure_prefect()
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield home


@pytest.fixture(scope="session")
def training_data(tmp_path_factory):
    """A 128-px faceset of the 9 portrait photos (2 held out) and a random K=8 dictionary for the small network."""
    root = tmp_path_factory.mktemp("training-data")
    from dfdcore.data.faceset import faces_from_photos, write_faceset
    from dfdcore.io.storage import list_images

    rows, skipped = faces_from_photos(list_images([str(SHARED / "data/faces/portraits")]), SMALL.face_size)
    assert not skipped and len(rows) == 9
    counts = write_faceset(str(root / "faceset.parquet"), rows, SMALL.face_size, test_fraction=0.2)
    assert counts == {"train": 7, "test": 2}
    dfdcore.ComponentDictionary.random(SMALL, k=8, seed=0).save(root / "dictionary.safetensors")
    return root
