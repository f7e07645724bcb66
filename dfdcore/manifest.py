"""The run manifest: one Parquet row per input image, saying what was done to it, with what, and how it went.

Reruns read it to skip images whose content and configuration are unchanged (``is_current``). Rows are plain dicts
keyed by column name; ``COLUMNS`` below is the schema and documents every column (the docs travel in the Parquet
file's field metadata too).
"""
from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from .io.storage import exists, read_bytes, write_bytes_atomic

STATUSES = ("ok", "failed", "no_face")

# Coordinate lists are variable-size Arrow lists with their lengths checked by ``normalise_row``: pyarrow 25
# cannot read back a nullable fixed-size list nested in a list of structs from Parquet ("Expected all lists to be
# of size=136").
FACE_LIST_SIZES = {"det_box": 4, "lm5": 10, "lm68": 136}

FACE_TYPE = pa.struct([
    pa.field("det_box", pa.list_(pa.float32()), nullable=False,
             metadata={"doc": "detector box (x0, y0, x1, y1) in source-image pixels, upright orientation"}),
    pa.field("det_score", pa.float32(), nullable=False, metadata={"doc": "detector confidence"}),
    pa.field("lm5", pa.list_(pa.float32()), nullable=False,
             metadata={"doc": "5 landmarks (eyes, nose, mouth corners) as x0, y0, x1, y1, ... in source pixels"}),
    pa.field("lm68", pa.list_(pa.float32()), nullable=True,
             metadata={"doc": "68 landmarks as x0, y0, ... in source pixels; null when not computed"}),
])

SECONDS_TYPE = pa.struct([pa.field(name, pa.float32(), nullable=True, metadata={"doc": doc}) for name, doc in (
    ("decode", "reading and decoding the input"),
    ("detect", "face detection and alignment"),
    ("restore", "the network and pasting faces back"),
    ("total", "everything for this image, writing outputs included"),
)])

# name → (type, nullable, doc): the one definition of the manifest's columns.
COLUMNS: dict[str, tuple[pa.DataType, bool, str]] = {
    "source_uri": (pa.string(), False, "where the input was read from (absolute local path or URL); the row key"),
    "relpath": (pa.string(), False, "input path below the INPUT it was found under; outputs mirror it"),
    "content_sha256": (pa.string(), True, "hex SHA-256 of the input bytes; null when they could not be read"),
    "status": (pa.string(), False, "'ok', 'failed' (see error) or 'no_face' (decoded, no face found)"),
    "error": (pa.string(), True, "why the image failed ('reason: detail'); null unless status is 'failed'"),
    "n_faces": (pa.int32(), False, "number of faces restored (length of faces)"),
    "faces": (pa.list_(pa.field("item", FACE_TYPE, nullable=False)), False, "per-face detection results"),
    "outputs": (pa.list_(pa.string()), False, "URIs of the files written for this image"),
    "model_id": (pa.string(), True, "identifier of the weights used (e.g. file name and hash)"),
    "random_weights": (pa.bool_(), False, "whether the network ran with random, untrained weights"),
    "config_hash": (pa.string(), True, "hash of every setting that changes outputs; a change means redo"),
    "seconds": (SECONDS_TYPE, True, "wall-clock seconds per stage"),
    "updated_at": (pa.timestamp("us", tz="UTC"), False, "when this row was written"),
}

SCHEMA = pa.schema([pa.field(name, kind, nullable=nullable, metadata={"doc": doc})
                    for name, (kind, nullable, doc) in COLUMNS.items()])

_REQUIRED = ("source_uri", "relpath", "status")
_DEFAULTS = {"n_faces": None, "faces": (), "outputs": (), "random_weights": False}


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def normalise_row(row: Mapping[str, object]) -> dict[str, object]:
    """A complete manifest row from ``row``: defaults filled in (no faces or outputs, n_faces = len(faces),
    updated_at = now), unknown columns and bad statuses refused with ValueError."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown manifest columns {sorted(unknown)}; expected some of {list(COLUMNS)}")
    missing = [name for name in _REQUIRED if row.get(name) is None]
    if missing:
        raise ValueError(f"manifest row lacks {missing}: {dict(row)}")
    if row["status"] not in STATUSES:
        raise ValueError(f"manifest status must be one of {STATUSES}, got {row['status']!r}")
    full = {name: row.get(name) for name in COLUMNS}
    for name, default in _DEFAULTS.items():
        if full[name] is None:
            full[name] = list(default) if isinstance(default, tuple) else default
    for index, face in enumerate(full["faces"]):
        _check_face(face, index, str(full["source_uri"]))
    if full["n_faces"] is None:
        full["n_faces"] = len(full["faces"])
    if full["updated_at"] is None:
        full["updated_at"] = dt.datetime.now(dt.timezone.utc)
    return full


def _check_face(face: Mapping[str, object], index: int, source_uri: str) -> None:
    for name, size in FACE_LIST_SIZES.items():
        values = face.get(name)
        if values is None and name == "lm68":
            continue
        if values is None or len(values) != size:
            got = "nothing" if values is None else f"{len(values)} values"
            raise ValueError(f"{source_uri}: face {index}: {name} must hold {size} numbers, got {got}")


def rows_to_table(rows: Iterable[Mapping[str, object]]) -> pa.Table:
    """Rows → Arrow table in SCHEMA, sorted by source_uri."""
    ordered = sorted((normalise_row(row) for row in rows), key=lambda row: row["source_uri"])
    return pa.Table.from_pylist(ordered, schema=SCHEMA)


def write_manifest(uri: str, rows: Iterable[Mapping[str, object]] | Mapping[str, Mapping[str, object]]) -> None:
    """Write ``rows`` (a list of rows, or the dict ``read_manifest`` gives) as Parquet at ``uri``, atomically."""
    values = rows.values() if isinstance(rows, Mapping) else rows
    sink = pa.BufferOutputStream()
    pq.write_table(rows_to_table(values), sink, compression="zstd")
    write_bytes_atomic(uri, sink.getvalue().to_pybytes())


def read_manifest(uri: str) -> dict[str, dict[str, object]]:
    """The manifest at ``uri`` as {source_uri: row}; empty when there is none yet. Columns a writer of an older
    schema did not have come back as None; ValueError when the file is not a readable manifest."""
    if not exists(uri):
        return {}
    try:
        table = pq.read_table(pa.BufferReader(read_bytes(uri)))
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{uri}: not a readable manifest (Parquet: {exc})") from exc
    if "source_uri" not in table.column_names:
        raise ValueError(f"{uri}: not a manifest (no source_uri column; columns {table.column_names})")
    return {row["source_uri"]: {name: row.get(name) for name in COLUMNS} for row in table.to_pylist()}


def merge_rows(old: Mapping[str, Mapping[str, object]],
               new: Iterable[Mapping[str, object]] | Mapping[str, Mapping[str, object]]) -> dict[str, dict]:
    """{source_uri: row} with ``new`` rows replacing ``old`` ones for the same source_uri; inputs are not changed."""
    merged = {uri: dict(row) for uri, row in old.items()}
    for row in (new.values() if isinstance(new, Mapping) else new):
        merged[str(row["source_uri"])] = dict(row)
    return merged


def is_current(row: Mapping[str, object] | None, content_sha256: str, config_hash: str) -> bool:
    """Whether ``row`` records finished work (ok or no_face) on these input bytes with this configuration.
    Failed rows are never current, so reruns retry them."""
    return (row is not None and row.get("status") in ("ok", "no_face")
            and row.get("content_sha256") == content_sha256 and row.get("config_hash") == config_hash)
