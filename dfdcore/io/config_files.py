"""Configuration files: option values under their names, in YAML (.yaml, .yml) or TOML (.toml).

``read_config`` reads one into a plain mapping (what the keys mean and which types they take is the reader's
business: ``dfd train --config`` checks them against its options, ``dfdcore.training.presets`` loads its recipes);
``config_yaml`` writes a mapping back as YAML that ``read_config`` reads again (the resolved configuration a run
logs as ``config.yaml``).
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

import yaml

SUFFIXES = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}


class ConfigFileError(ValueError):
    """A configuration file that cannot be read: its kind, its syntax or its top level."""


def config_format(path: str | os.PathLike) -> str:
    """"YAML" or "TOML", by the file's suffix; ConfigFileError for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigFileError(f"{path}: expected a .yaml, .yml or .toml configuration file, got "
                              f"{suffix or 'no suffix'!r}")
    return SUFFIXES[suffix]


def parse_config(text: str, kind: str, name: str = "<text>") -> dict:
    """The top-level mapping of ``text`` in ``kind`` ("YAML" or "TOML"); an empty YAML document is {}."""
    try:
        values = tomllib.loads(text) if kind == "TOML" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"{name} is not valid {kind}: {exc}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigFileError(f"{name}: expected a mapping of option names to values at the top level, got "
                              f"{type(values).__name__} {values!r}")
    return values


def read_config(path: str | os.PathLike) -> dict:
    """The options in the configuration file ``path`` (YAML or TOML, by suffix), as written there."""
    kind = config_format(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"cannot read the configuration file {path}: {exc}") from exc
    return parse_config(text, kind, str(path))


def config_yaml(values: dict, header: str = "") -> str:
    """``values`` as a YAML document in their own order (``header``: comment lines put first, "# " added)."""
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comments + yaml.safe_dump(values, sort_keys=False, allow_unicode=True, default_flow_style=False)
