"""Keeping the manifest's parts few, and re-recording rows: what runs beside ``manifest``'s reads and appends.

``compact_tier`` (after appends) merges the oldest parts of the lowest full level one level up, so a run's
recording stays O(rows · log N); ``compact`` (at the end of a run) merges every part into one above all levels;
both merge in Arrow (``_merged``), write the merged part before deleting what it merged, and so are safe beside
writers and other compactions. ``relist`` records new listings of files found unchanged by their bytes.
"""
from __future__ import annotations

import datetime as dt
import posixpath
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dfdcore.io.storage import read_bytes
from dfdcore.restoration.integrity import DamagedPart, check_bytes, set_aside_if_present
from dfdcore.restoration.manifest import (
    SCHEMA,
    _delete,
    _latest,
    _parts,
    _read_part,
    _write_part,
    append_rows,
    read_manifest,
    rows_to_table,
)


def relist(uri: str, listings: Mapping[str, str]) -> int:
    """Record new listings (``{source_uri: listing}``: files touched or copied, found unchanged by their bytes) so
    that the next run need not read them: their latest rows appended again with the new listing and time. One
    pass over the manifest for all of them, keeping only their rows; returns how many rows were appended."""
    if not listings:
        return 0
    rows = read_manifest(uri, only=listings)
    now = dt.datetime.now(dt.timezone.utc)
    append_rows(uri, [{**row, "listing": listings[key], "updated_at": now} for key, row in rows.items()])
    return len(rows)


def compact(uri: str, min_parts: int = 2) -> int:
    """Merge the manifest's parts into one when there are at least ``min_parts``; returns how many were merged.
    Safe beside writers and other compactions: the merged part is written before the merged ones are deleted."""
    parts = _parts(uri)
    if len(parts) < min_parts:
        return 0
    try:
        merged = _merged(parts)
    except FileNotFoundError:
        return 0  # another process is compacting these
    # above every level merged, so that compact_tier never rewrites the whole manifest with a few small parts
    _write_part(uri, merged, level=1 + max(_level(part) for part in parts))
    _delete(parts)
    return len(parts)


def compact_tier(uri: str, fan_in: int = 16) -> int:
    """Merge the ``fan_in`` oldest parts of the lowest level that holds that many into one part a level up;
    returns how many were merged (0: no level is full). Called after appends, this keeps the number of parts
    below ``fan_in`` per level (so O(fan_in · log N) parts) while each row is rewritten only once per level: a
    run's recording stays O(rows · log N), where merging everything every few appends was O(N²). Safe beside
    writers and other compactions, as ``compact``."""
    levels: dict[int, list[str]] = {}
    for part in _parts(uri):
        levels.setdefault(_level(part), []).append(part)
    for level in sorted(levels):
        group = levels[level][:fan_in]
        if len(group) < fan_in:
            continue
        try:
            merged = _merged(group)
        except FileNotFoundError:
            return 0  # another process is compacting these
        _write_part(uri, merged, level=level + 1)
        _delete(group)
        return len(group)
    return 0


def _merged(parts: list[str]) -> pa.Table:
    """The latest row of each source_uri over ``parts``, as one table sorted by source_uri. Done in Arrow (a row
    costs its encoded size, about a tenth of it as Python objects), so compacting a large manifest stays small;
    parts of an older schema go through Python rows, which fills their missing columns."""
    tables = []
    for part in parts:
        data = read_bytes(part)
        check_bytes(part, data)
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as exc:  # never mistaken for a full disk by ``compact_quietly``
            raise DamagedPart(part, f"not a readable manifest: Parquet: {exc}") from exc
        if [(f.name, f.type) for f in table.schema] != [(f.name, f.type) for f in SCHEMA]:
            return rows_to_table(_latest(_read_part(p) for p in parts).values())
        tables.append(table.cast(SCHEMA).append_column("_order", pa.array([len(tables)] * table.num_rows,
                                                                          pa.int32())))
    table = pa.concat_tables(tables)
    # latest updated_at first within each source_uri; equal times: the later part wins, as in ``read_manifest``
    table = table.sort_by([("source_uri", "ascending"), ("updated_at", "descending"), ("_order", "descending")])
    table = table.drop_columns(["_order"])
    if not table.num_rows:
        return table
    keys = table["source_uri"].combine_chunks()  # not null (the schema says so)
    return table.filter(pa.concat_arrays([pa.array([True]), pc.not_equal(keys[1:], keys[:-1])]))


def _level(part: str) -> int:
    """The compaction level in a part's name (``…-L2.parquet``); 0 for appended parts and older names."""
    stem = posixpath.basename(part).removesuffix(".parquet")
    tail = stem.rpartition("-")[2]
    return int(tail[1:]) if tail.startswith("L") and tail[1:].isdigit() else 0


def relist_quietly(manifest_uri: str, relisted: Sequence[tuple[str, str]]) -> None:
    """``relist`` the files found unchanged under a new listing; a failure only costs the next run a read."""
    try:
        relist(manifest_uri, dict(relisted))
    except (OSError, ValueError):
        pass


def compact_quietly(manifest_uri: str) -> list[tuple[str, str]]:
    """Merge the manifest's parts at the end of a run; a storage failure leaves the parts, which the next run
    merges. A damaged part is not swallowed: it is set aside and the others merged → [(part, why)] set aside."""
    damaged: list[tuple[str, str]] = []
    for _ in range(4):
        try:
            compact(manifest_uri)
        except OSError:
            pass  # the parts are all there; the next run compacts
        except DamagedPart as exc:
            set_aside_if_present(exc.part)
            damaged.append((exc.part, exc.why))
            continue
        break
    return damaged
