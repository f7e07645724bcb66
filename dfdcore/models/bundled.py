"""Models shipped inside the package: a generator and its dictionary in ``dfdcore/assets/models/NAME/``, with
``model.json`` (written by ``bench/bundle_model.py``) giving the name, each file's sha256 and size, the generator's
config and its own validation figures.

Everything is read from ``model.json``: a retrained model dropped in with the same layout needs no code change.
Before a bundled model is used its files are checked against the recorded sha256 (once per process and file
state); a missing or altered file is a ``BundledModelError`` naming the file and both digests.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from dfdcore.arch.checkpoint import CheckpointError
from dfdcore.io.hashing import sha256_path

DEFAULT_MODEL = "dfd-pd-128"  # what dfd restores with when no model is named (tests check model.json agrees)
PACKAGE_MODELS = Path(__file__).resolve().parents[1] / "assets" / "models"
# A folder holding bundled-model folders, read instead of the package's own (a damaged copy in a test, a site's
# mirror): every process that builds the model (Ray workers too) must see the same value.
MODELS_ENV = "DFD_BUNDLED_MODELS"
ROLES = ("generator", "dictionary")


class BundledModelError(CheckpointError):
    """A bundled model is unknown, its model.json unreadable, or a file of it missing or not the recorded one."""


@dataclass(frozen=True)
class BundledModel:
    """A bundled model's record: its folder, its two files and what ``model.json`` says about them."""

    name: str
    folder: Path
    generator: Path
    dictionary: Path
    sha256: dict[str, str]   # role (generator, dictionary) → expected hex digest
    config: dict             # the generator's GeneratorConfig fields (face_size, ngf)
    validation: dict         # the generator's own validation: val_* beside bicubic_*, step
    card: str                # the model card, a path in the repository


def models_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding bundled-model folders: ``root`` if given, else ``$DFD_BUNDLED_MODELS``, else the
    package's ``dfdcore/assets/models``."""
    return Path(root or os.environ.get(MODELS_ENV) or PACKAGE_MODELS)


def available(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the bundled models under ``models_root(root)`` (folders holding a model.json), sorted."""
    folder = models_root(root)
    return sorted(p.parent.name for p in folder.glob("*/model.json")) if folder.is_dir() else []


def read_record(folder: Path) -> dict:
    """``folder/model.json`` as a dict with name and files.{generator,dictionary}.{file,sha256}; raises
    BundledModelError saying what was expected when it is missing or malformed."""
    path = folder / "model.json"
    try:
        record = json.loads(path.read_text())
        for role in ROLES:
            entry = record["files"][role]
            if not (isinstance(entry["file"], str) and isinstance(entry["sha256"], str)):
                raise TypeError(f"files.{role}.file and .sha256 must be strings")
        if record["name"] != folder.name:
            raise ValueError(f"it names the model {record['name']!r}, its folder is {folder.name!r}")
    except FileNotFoundError as exc:
        raise BundledModelError(f"{path}: no such file; a bundled model's folder holds model.json beside its "
                                f"generator and dictionary (bench/bundle_model.py writes it)") from exc
    except (ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise BundledModelError(f"{path}: expected JSON with name and files.generator/dictionary.file/sha256, "
                                f"got an unusable record ({type(exc).__name__}: {exc})") from exc
    return record


def bundled_model(name: str = DEFAULT_MODEL, root: str | os.PathLike | None = None, *,
                  verify: bool = True) -> BundledModel:
    """The bundled model ``name`` under ``models_root(root)``; with ``verify`` its files are checked against
    model.json's sha256 first (``verify_files``). Raises BundledModelError for an unknown name, a bad
    model.json, a missing file or a digest that does not match."""
    folder = models_root(root) / name
    if not (folder / "model.json").is_file():
        raise BundledModelError(f"no bundled model {name!r} in {models_root(root)}; there are "
                                f"{available(root) or 'none'}")
    record = read_record(folder)
    files = {role: folder / record["files"][role]["file"] for role in ROLES}
    model = BundledModel(name=name, folder=folder, generator=files["generator"], dictionary=files["dictionary"],
                         sha256={role: record["files"][role]["sha256"] for role in ROLES},
                         config=dict(record.get("config") or {}), validation=dict(record.get("validation") or {}),
                         card=str(record.get("card", "")))
    if verify:
        verify_files(model)
    return model


def verify_files(model: BundledModel) -> None:
    """Check each file of ``model`` against its recorded sha256; raises BundledModelError naming the file, the
    expected and the actual digest (or that it is missing). Each file is hashed once per process while its size
    and modification time stay the same."""
    for role in ROLES:
        path = getattr(model, role)
        expected = model.sha256[role]
        try:
            stat = path.stat()
        except OSError as exc:
            raise BundledModelError(f"bundled model {model.name}: its {role} {path} is missing (model.json expects "
                                    f"sha256 {expected}); reinstall dfd to get it back") from exc
        actual = _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if actual != expected:
            raise BundledModelError(f"bundled model {model.name}: its {role} {path} has sha256 {actual}, "
                                    f"model.json expects {expected}: the file is damaged or was replaced; "
                                    f"reinstall dfd (pip install --force-reinstall dfd)")


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of ``path``, cached by its size and modification time (a changed file is hashed again)."""
    return sha256_path(path)


def load_bundled(name: str = DEFAULT_MODEL, root: str | os.PathLike | None = None, **load) -> torch.nn.Module:
    """The bundled generator ``name`` with its dictionary, its files checked first (``bundled_model``), named by
    it in its ``provenance`` (``bundled``: the name); ``load``: ``dfdcore.load_generator``'s device, dict_dtype,
    fidelity. Raises BundledModelError (a CheckpointError) for an unknown name or a missing or altered file."""
    from dfdcore.api import load_generator

    files = bundled_model(name, root)
    model = load_generator(files.generator, files.dictionary, **load)
    model.provenance = bundled_provenance(model.provenance, files)
    return model


def bundled_provenance(provenance: dict, model: BundledModel) -> dict:
    """A loaded generator's ``provenance`` for the bundled ``model``: named by it (``bundled``), its files by
    name inside the model (not by where this install put them), so that its identity — hence every output's
    config hash — is the same on every machine that has the same files."""
    dictionary = dict(provenance.get("dictionary") or {})
    if "source" in dictionary:
        dictionary["source"] = f"{model.name}/{model.dictionary.name}"
    return {**provenance, "bundled": model.name, "checkpoint": f"{model.name}/{model.generator.name}",
            "dictionary": dictionary}
