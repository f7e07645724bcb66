"""``--config FILE`` for ``dfd train`` and ``dfd build-dictionary``: options in a YAML or TOML file.

The file holds a command's options under their CLI names (``face-size`` or ``face_size``; ``source`` for the
positional SOURCE). Its values become click's ``default_map`` before any other option is read (``--config`` is
eager), so each goes through the option's own type conversion and checks (integers, choices, ranges, paths) and a
required option or SOURCE may come from the file. Precedence: a flag given on the command line > the file >
``--preset`` (``lifecycle.with_preset`` fills only what is still at its default) > the option's default. A key
whose value is null leaves that option to the preset or the default. ``config`` itself and ``dry-run`` are
command-line only. Paths in the file are read as on the command line (relative to the current folder).
"""
from __future__ import annotations

import datetime
import difflib

import click

from dfdcore.io.config_files import ConfigFileError, read_config
from dfdcore.io.hashing import sha256_json

COMMAND_LINE_ONLY = ("config", "dry_run", "help")


def cli_name(param: click.Parameter) -> str:
    """The name a parameter has in a configuration file: its first long flag without ``--``, or an argument's name."""
    longs = [opt[2:] for opt in param.opts if opt.startswith("--")]
    return longs[0] if longs else param.name


def file_keys(command: click.Command) -> dict[str, click.Parameter]:
    """Every key a configuration file of ``command`` may hold (hyphenated and underscored) → its parameter."""
    keys = {}
    for param in command.params:
        if param.name in COMMAND_LINE_ONLY:
            continue
        names = [opt[2:] for opt in param.opts if opt.startswith("--")] or [param.name]
        for name in names:
            keys[name] = keys[name.replace("-", "_")] = param
    return keys


def expected_type(param: click.Parameter) -> str:
    """What a value of ``param`` must be, in words (for error messages)."""
    kind = param.type
    if isinstance(kind, click.Choice):
        return "one of " + ", ".join(str(c) for c in kind.choices)
    if isinstance(kind, click.types.BoolParamType):
        return "true or false"
    base = ("an integer" if isinstance(kind, click.types.IntParamType) else
            "a number" if isinstance(kind, click.types.FloatParamType) else
            "a path" if isinstance(kind, click.Path) else "text")
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        low, high = ("" if kind.min is None else f"{'>' if kind.min_open else '>='} {kind.min}",
                     "" if kind.max is None else f"{'<' if kind.max_open else '<='} {kind.max}")
        base += " " + " and ".join(part for part in (low, high) if part)
    return base


def wrong_kind(param: click.Parameter, value: object) -> bool:
    """Whether a value read from a file is of a kind click would convert silently but wrongly: a list, table or date
    for a single value, a boolean for anything but a flag, a fraction for an integer."""
    if isinstance(value, (list, tuple, dict, datetime.date, datetime.time)):
        return True
    if isinstance(value, bool):
        return not isinstance(param.type, click.types.BoolParamType)
    return isinstance(value, float) and isinstance(param.type, click.types.IntParamType)


def convert(ctx: click.Context, param: click.Parameter, key: str, value: object, path: str) -> object:
    """``value`` of ``key`` in the file ``path``, converted by ``param``'s own type; a clear BadParameter if not."""
    problem = f"{path}: {key!r} expects {expected_type(param)}, got {value!r}"
    if wrong_kind(param, value):
        raise click.BadParameter(f"{problem} ({type(value).__name__})")
    try:
        return param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        raise click.BadParameter(f"{problem}: {exc.message}") from exc


def unknown_key(command: str, key: str, keys: dict[str, click.Parameter], path: str) -> click.BadParameter:
    """The error for a key that names no option of ``command``, with the closest names and every name there is."""
    if str(key).replace("-", "_") in COMMAND_LINE_ONLY:
        return click.BadParameter(f"{path}: {key!r} is read from the command line only, not from a config file")
    close = difflib.get_close_matches(str(key), list(keys), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    names = sorted({cli_name(param) for param in keys.values()})
    return click.BadParameter(f"{path}: unknown key {key!r}{hint}; {command} takes: {', '.join(names)}")


def file_values(ctx: click.Context, path: str) -> dict[str, object]:
    """The options of the configuration file ``path`` for ``ctx``'s command: parameter name → converted value
    (null values left out)."""
    try:
        raw = read_config(path)
    except ConfigFileError as exc:
        raise click.BadParameter(str(exc)) from exc
    keys, values, seen = file_keys(ctx.command), {}, {}
    for key, value in raw.items():
        param = keys.get(str(key))
        if param is None:
            raise unknown_key(f"dfd {ctx.command.name}", key, keys, path)
        if param.name in seen:
            raise click.BadParameter(f"{path}: {key!r} and {seen[param.name]!r} are the same option; give it once")
        seen[param.name] = key
        if value is not None:
            values[param.name] = convert(ctx, param, str(key), value, path)
    return values


def use_config_file(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    """Callback of ``--config``: the file's values as the defaults of the command's other options."""
    if path:
        ctx.default_map = {**(ctx.default_map or {}), **file_values(ctx, path)}
    return path


def config_option(command: str):
    """The ``--config FILE`` option of ``command`` (eager: read before every other option)."""
    return click.option("--config", type=click.Path(exists=True, dir_okay=False), is_eager=True,
                        callback=use_config_file, help=f"YAML (.yaml/.yml) or TOML (.toml) file of {command} options "
                        "under their CLI names (face-size or face_size; source for SOURCE). Flags given here win "
                        "over the file" + (", the file over --preset." if command == "dfd train" else "."))


def resolved_options(command: click.Command, values: dict) -> dict:
    """The options a command resolved (parameter name → value), under their CLI names and in the command's order,
    without the command-line-only ones: a configuration file that gives the same run again."""
    return {cli_name(p): values[p.name] for p in command.params if p.name in values and p.name not in COMMAND_LINE_ONLY}


def echo_resolved(header: str, entries: dict) -> str:
    """Print ``header`` and one line per entry, then the hash of the entries (``config_sha256``) → that hash."""
    digest = sha256_json(entries)
    click.echo(header)
    for key, value in entries.items():
        click.echo(f"  {key:<18} {value}")
    click.echo(f"  {'config_sha256':<18} {digest}")
    return digest
