"""Shared fixtures: small DFDNet configurations (128-px faces, ngf 8) with explicitly random weights."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import dfdcore
from dfdcore import GeneratorConfig

REPO = Path(__file__).resolve().parents[1]
# The bundled photographs, always there: the nine public-domain portraits (tests/data/SOURCES.md); six of them are
# dfd's sample photos in dfdcore/assets (shipped with the package) and are read from there, not stored twice.
BUNDLED = Path(__file__).resolve().parent / "data"
ASSETS = REPO / "dfdcore" / "assets"
PORTRAITS = dict(sorted((p.name, p) for folder in (ASSETS, BUNDLED) for p in folder.iterdir()
                        if p.suffix in (".jpg", ".png")))
# The team's larger set (group photos with XML boxes, identities, reference tables): only where DFD_SHARED names
# it. Nothing is guessed, so a lone checkout runs the same tests wherever it lies.
TEAM = Path(os.environ["DFD_SHARED"]) if os.environ.get("DFD_SHARED") else None
REFERENCE_TSV = "reference/dfdnet_official_state_dict.tsv"  # relative to DFD_SHARED: read it with team_file


def portrait(name: str) -> Path:
    """The bundled portrait ``name`` (a key of PORTRAITS), wherever in the repository it is stored."""
    if name not in PORTRAITS:
        raise KeyError(f"no bundled portrait {name!r}; expected one of {sorted(PORTRAITS)}")
    return PORTRAITS[name]


def copy_portraits(folder: Path, names: list[str]) -> Path:
    """``folder`` (created) holding a copy of each bundled portrait of ``names``, for commands that take a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(portrait(name), folder / name)
    return folder


def team_path(relative: str) -> Path | None:
    """``DFD_SHARED/relative`` when the team set is given and holds it, else None (for collection time)."""
    path = TEAM / relative if TEAM is not None else None
    return path if path is not None and path.exists() else None


def team_reason(relative: str) -> str:
    if TEAM is None:
        return f"needs the team's data set: DFD_SHARED is unset (it must name the folder holding {relative})"
    return f"needs {relative} of the team's data set: not in DFD_SHARED={TEAM}"


def team_file(relative: str) -> Path:
    """``DFD_SHARED/relative`` (a file or folder); skips the calling test with the reason when it is not there."""
    path = team_path(relative)
    if path is None:
        pytest.skip(team_reason(relative))
    return path


def needs_team(*relatives: str) -> pytest.MarkDecorator:
    """Marker for tests (or, as ``pytestmark``, modules) that read these paths of the team set."""
    missing = [r for r in relatives if team_path(r) is None]
    return pytest.mark.skipif(bool(missing), reason=team_reason(missing[0]) if missing else "")


@pytest.fixture(scope="session")
def portraits_dir(tmp_path_factory) -> Path:
    """A folder holding a copy of every bundled portrait, for commands that take a folder of photos."""
    folder = tmp_path_factory.mktemp("portraits")
    for name, path in PORTRAITS.items():
        shutil.copy(path, folder / name)
    return folder


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
def training_data(tmp_path_factory, portraits_dir):
    """A 128-px faceset of the 9 bundled portraits (2 held out) and a random K=8 dictionary for the small network."""
    root = tmp_path_factory.mktemp("training-data")
    from dfdcore.data.faceset import faces_from_photos, write_faceset
    from dfdcore.io.storage import list_images

    rows, skipped = faces_from_photos(list_images([str(portraits_dir)]), SMALL.face_size)
    assert not skipped and len(rows) == len(PORTRAITS) == 9
    counts = write_faceset(str(root / "faceset.parquet"), rows, SMALL.face_size, test_fraction=0.2)
    assert counts == {"train": 7, "test": 2}
    dfdcore.ComponentDictionary.random(SMALL, k=8, seed=0).save(root / "dictionary.safetensors")
    return root
