"""Named training recipes for ``dfd train --preset``: option values under their CLI names (underscored here).

Each recipe is a file shipped with the package, ``dfdcore/training/presets/NAME.yaml``, whose comments explain it
(and which is itself a valid ``dfd train --config`` file). A preset fills the options the user did not give; a
``--config`` file and every flag given on the command line win. The values are dfd's measured recipes
(bench/RESULTS.md, "Training recipe" and "Real faces"), not the paper's undocumented ones.
"""
from __future__ import annotations

from pathlib import Path

from dfdcore.io.config_files import read_config

PRESET_DIR = Path(__file__).resolve().parent / "presets"


def preset_path(name: str) -> Path:
    """The file of preset ``name``, or ValueError naming the presets there are."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")
    return path


def preset_names() -> list[str]:
    """The shipped presets, by name (their files' stems), sorted."""
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def load_preset(path: str | Path) -> dict[str, object]:
    """The option values of a preset file, keys underscored (``face-size`` → ``face_size``)."""
    return {str(key).replace("-", "_"): value for key, value in read_config(path).items()}


PRESETS: dict[str, dict[str, object]] = {name: load_preset(preset_path(name)) for name in preset_names()}


def preset_values(name: str) -> dict[str, object]:
    """The option values of preset ``name`` (a copy), or ValueError naming the presets there are."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return dict(PRESETS[name])
