"""The run manifest: one Parquet row per input file, saying what was done to it, with what, and how it went.

``OUT/manifest.parquet`` is a folder of Parquet parts (the layout Spark and ``pyarrow.dataset`` use): each batch of
finished images appends a part of its own rows, so recording costs what the batch costs, two runs writing into one
output never overwrite each other's rows, and a killed run loses only rows not yet appended.
``compaction.compact`` merges parts into one; it writes the merged part before deleting what it merged, so
concurrent compactions lose nothing.
Readers take, per source_uri, the row with the latest ``updated_at``: ``read_manifest`` here, or any Parquet
reader (``pyarrow.dataset.dataset(OUT/manifest.parquet)``, DuckDB ``read_parquet('OUT/manifest.parquet/*')``,
``pandas.read_parquet``) followed by that de-duplication (after ``compact`` there is one row per source).
A single-file manifest of an earlier dfd is read as it is and becomes a part on the next write.

Reruns read it to skip images whose content and configuration are unchanged (``is_current``). Rows are plain dicts
keyed by column name; ``COLUMNS`` below is the schema and documents every column (the docs travel in the Parquet
file's field metadata too). File names that are not UTF-8 (bytes smuggled into ``str`` by Python's
surrogateescape) are stored percent-encoded with ``names_escaped`` set and come back exactly.
"""
from __future__ import annotations

import datetime as dt
import os
import posixpath
import urllib.parse
import uuid
from collections.abc import Collection, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dfdcore.io.parquet import parquet_bytes
from dfdcore.io.storage import filesystem_for, is_local, join_uri, read_bytes, uri_of, write_bytes_atomic
from dfdcore.restoration.integrity import DamagedPart, check_bytes, content_digest

STATUSES = ("ok", "failed", "no_face", "skipped")
# Decoding failures that only other bytes can change (not a limit of the run): their rows say retry=False.
UNRESTORABLE_BYTES = frozenset({"empty file", "not an image", "truncated image", "corrupt image", "unsupported mode",
                                "corrupt video", "not a readable video", "no video stream", "no frame rate"})

# Coordinate lists are variable-size Arrow lists with their lengths (field metadata "size") checked by
# ``normalise_row``: pyarrow 25 cannot read back a nullable fixed-size list nested in a list of structs from Parquet
# ("Expected all lists to be of size=136").
FACE_TYPE = pa.struct([
    pa.field("det_box", pa.list_(pa.float32()), nullable=False, metadata={
        "doc": "detector box (x0, y0, x1, y1) in source-image pixels, upright orientation", "size": "4"}),
    pa.field("det_score", pa.float32(), nullable=False, metadata={"doc": "detector confidence"}),
    pa.field("lm5", pa.list_(pa.float32()), nullable=False, metadata={
        "doc": "5 landmarks (eyes, nose, mouth corners) as x0, y0, x1, y1, ... in source pixels", "size": "10"}),
    pa.field("lm68", pa.list_(pa.float32()), nullable=True, metadata={
        "doc": "68 landmarks as x0, y0, ... in source pixels; null when not computed", "size": "136"}),
    pa.field("strength", pa.float32(), nullable=True, metadata={
        "doc": "fraction of the model's change this face kept (--strength; auto: by how sharp its crop was; 0: the "
               "photo left as it was there); null in rows of a dfd before the option"}),
])
FACE_LIST_SIZES = {f.name: int(f.metadata[b"size"]) for f in FACE_TYPE if f.metadata and b"size" in f.metadata}

SECONDS_TYPE = pa.struct([pa.field(name, pa.float32(), nullable=True, metadata={"doc": doc}) for name, doc in (
    ("decode", "reading and decoding the input"),
    ("detect", "face detection and alignment"),
    ("restore", "the network (this image's share of its batch)"),
    ("paste", "pasting the restored faces back into the upscaled photograph"),
    ("write", "encoding and writing the outputs"),
    ("total", "everything for this image"),
)])
TIMINGS = tuple(f.name for f in SECONDS_TYPE)  # the stages whose seconds a row holds

# name → (type, nullable, doc): the one definition of the manifest's columns.
COLUMNS: dict[str, tuple[pa.DataType, bool, str]] = {
    "source_uri": (pa.string(), False, "where the input was read from (absolute local path or URL); the row key"),
    "relpath": (pa.string(), False, "input path below the INPUT it was found under; outputs mirror it"),
    "content_sha256": (pa.string(), True, "hex SHA-256 of the input bytes; null when they could not be read"),
    "listing": (pa.string(), True, "the input as its listing described it when the row was made ('etag:…' on "
                                   "object stores, 'size:…;mtime:…' on file systems): a rerun whose listing "
                                   "matches skips it without reading it"),
    "status": (pa.string(), False, "'ok', 'failed' (see error), 'no_face' (decoded, no face found) or 'skipped' "
                                   "(not read: not an image name, a FIFO or device, ...; see error)"),
    "error": (pa.string(), True, "why the file failed or was skipped ('reason: detail'); null for ok rows"),
    "retry": (pa.bool_(), True, "failed rows: false when the input's own bytes cannot be restored (empty, corrupt, "
                                "not an image or video): reruns leave it until its content changes (or --force); "
                                "true or null: a rerun retries it"),
    "note": (pa.string(), True, "what to know about a finished row (e.g. 'first of 5 frames restored')"),
    "n_faces": (pa.int32(), False, "number of faces restored (length of faces); for a video, its face tracks"),
    "faces": (pa.list_(pa.field("item", FACE_TYPE, nullable=False)), False, "per-face detection results"),
    "outputs": (pa.list_(pa.string()), False, "URIs of the files written for this image"),
    "model_id": (pa.string(), True, "identifier of the weights used (e.g. file name and hash)"),
    "model_version": (pa.string(), True, "the registered model version that made the outputs (NAME/VERSION, "
                                         "also when asked for by alias); null for a model given by its files"),
    "random_weights": (pa.bool_(), False, "whether the network ran with random, untrained weights"),
    "config_hash": (pa.string(), True, "hash of every setting that changes outputs; a change means redo"),
    "seconds": (SECONDS_TYPE, True, "wall-clock seconds per stage"),
    # Videos only (null for photos): per-frame counts. Faces of a video are not listed in ``faces`` (one entry per
    # face and frame would dwarf the manifest); n_faces counts its tracks.
    "frames": (pa.int32(), True, "video: frames decoded and restored"),
    "frames_with_faces": (pa.int32(), True, "video: frames with at least one face restored (gaps of a few frames "
                                            "in a face's track are filled, so this can exceed the detections)"),
    "faces_total": (pa.int32(), True, "video: faces restored summed over frames"),
    "segments": (pa.int32(), True, "video: segments of frames it was restored in (the unit of resuming)"),
    "frame_rate": (pa.string(), True, "video: the exact frame rate kept in the output, as a fraction "
                                      "('30000/1001')"),
    "updated_at": (pa.timestamp("us", tz="UTC"), False, "when this row was written; the latest row of a "
                                                        "source_uri is the one that counts"),
    "names_escaped": (pa.bool_(), False, "source_uri, relpath and outputs are percent-encoded bytes (a file "
                                         "name that is not UTF-8); read_manifest decodes them"),
}
_NAME_COLUMNS = ("source_uri", "relpath")
_KEY_COLUMNS = ("source_uri", "updated_at", "names_escaped")  # read with any columns: which row counts
# What deciding a rerun reads (``is_listed_current``, ``is_current``, ``is_finished``): not faces, outputs, timings.
PLAN_COLUMNS = ("listing", "content_sha256", "config_hash", "status", "retry")
_TEXT_COLUMNS = ("error", "note", "model_id", "model_version", "frame_rate")
PART_PREFIX = "part-"

SCHEMA = pa.schema([pa.field(name, kind, nullable=nullable, metadata={"doc": doc})
                    for name, (kind, nullable, doc) in COLUMNS.items()])

_DEFAULTS = {"n_faces": None, "faces": (), "outputs": (), "random_weights": False, "names_escaped": False,
             "updated_at": None}  # None: computed (n_faces = len(faces), updated_at = now)
_REQUIRED = tuple(name for name, (_, nullable, _) in COLUMNS.items() if not nullable and name not in _DEFAULTS)


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
    for name, (kind, _, _) in COLUMNS.items():
        _check_keys(full[name], kind, f"{printable(str(full['source_uri']))}: {name}")
    for index, face in enumerate(full["faces"]):
        _check_face(face, index, str(full["source_uri"]))
    if full["n_faces"] is None:
        full["n_faces"] = len(full["faces"])
    if full["updated_at"] is None:
        full["updated_at"] = dt.datetime.now(dt.timezone.utc)
    return full


def _check_keys(value: object, kind: pa.DataType, where: str) -> None:
    """Refuse keys of ``value`` that the struct ``kind`` (or the structs nested in it) lacks: pyarrow would drop
    them without a word, and a measured value would be lost."""
    if value is None:
        return
    if pa.types.is_struct(kind):
        names = [f.name for f in kind]
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a mapping with keys among {names}, got {type(value).__name__}")
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; the manifest schema has {names}")
        for f in kind:
            _check_keys(value.get(f.name), f.type, f"{where}.{f.name}")
    elif pa.types.is_list(kind) and pa.types.is_struct(kind.value_type):
        for index, item in enumerate(value):
            _check_keys(item, kind.value_type, f"{where}[{index}]")


def _check_face(face: Mapping[str, object], index: int, source_uri: str) -> None:
    for name, size in FACE_LIST_SIZES.items():
        values = face.get(name)
        if values is None and name == "lm68":
            continue
        if values is None or len(values) != size:
            got = "nothing" if values is None else f"{len(values)} values"
            raise ValueError(f"{source_uri}: face {index}: {name} must hold {size} numbers, got {got}")


def rows_to_table(rows: Iterable[Mapping[str, object]]) -> pa.Table:
    """Rows → Arrow table in SCHEMA, sorted by source_uri, names that are not UTF-8 escaped."""
    ordered = sorted((_encode_names(normalise_row(row)) for row in rows), key=lambda row: row["source_uri"])
    return pa.Table.from_pylist(ordered, schema=SCHEMA)


def printable(text: str) -> str:
    """``text`` safe to print or store as UTF-8: bytes that are not UTF-8 shown as \\xNN (lossy; for messages)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escape(text: str) -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogateescape"), safe="/:")


def _unescape(text: str) -> str:
    return urllib.parse.unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def _encode_names(row: dict[str, object]) -> dict[str, object]:
    for name in _TEXT_COLUMNS:
        if isinstance(row[name], str):
            row[name] = printable(row[name])
    names = [row[name] for name in _NAME_COLUMNS] + list(row["outputs"])
    if all(_is_utf8(str(name)) for name in names):
        return row
    row.update({name: _escape(str(row[name])) for name in _NAME_COLUMNS}, names_escaped=True,
               outputs=[_escape(str(uri)) for uri in row["outputs"]])
    return row


def _decode_names(row: dict[str, object]) -> dict[str, object]:
    if row.get("names_escaped"):
        row.update({name: _unescape(str(row[name])) for name in _NAME_COLUMNS if name in row})
        if "outputs" in row:
            row["outputs"] = [_unescape(str(uri)) for uri in row["outputs"] or ()]
    row.pop("names_escaped", None)
    return row


def append_rows(uri: str, rows: Iterable[Mapping[str, object]]) -> str | None:
    """Record ``rows`` in the manifest at ``uri`` as a new part; returns the part's URI (None for no rows).
    Costs what the rows cost, whatever the manifest's size."""
    return _write_part(uri, rows, level=0)


def _write_part(uri: str, rows: Iterable[Mapping[str, object]] | pa.Table, level: int) -> str | None:
    table = rows if isinstance(rows, pa.Table) else rows_to_table(rows)
    if not table.num_rows:
        return None
    _migrate_single_file(uri)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    suffix = f"-L{level}" if level else ""
    data = parquet_bytes(table)  # named after its bytes' digest: readers check it (``integrity``)
    part = join_uri(uri, f"{PART_PREFIX}{stamp}-{uuid.uuid4().hex[:12]}-c{content_digest(data)}{suffix}.parquet")
    write_bytes_atomic(part, data)
    return part


def write_manifest(uri: str, rows: Iterable[Mapping[str, object]] | Mapping[str, Mapping[str, object]]) -> None:
    """Make ``rows`` (a list of rows, or the dict ``read_manifest`` gives) the whole manifest at ``uri``."""
    values = list(rows.values() if isinstance(rows, Mapping) else rows)
    table = rows_to_table(values)  # checks every row before anything is touched
    before = _parts(uri)
    if table.num_rows:
        append_rows(uri, values)
    _delete(before)


def read_manifest(uri: str, columns: Iterable[str] | None = None,
                  only: Collection[str] | None = None) -> dict[str, dict[str, object]]:
    """The manifest at ``uri`` as {source_uri: latest row}; empty when there is none yet. Columns a writer of an
    older schema did not have come back as None; ValueError naming the part when one is not readable.
    ``columns``: only these (``PLAN_COLUMNS``: what deciding a rerun needs, a tenth of a row's memory);
    ``only``: only the rows of these source_uris (filtered in Arrow, part by part)."""
    for _ in range(8):  # a part deleted between listing and reading was compacted: list again
        try:
            return _latest(_read_part(part, columns, only) for part in _parts(uri))
        except FileNotFoundError:
            continue
    raise ValueError(f"{uri}: parts keep disappearing while being read (another process compacting?); retry")


def manifest_parts(uri: str) -> list[str]:
    """The URIs of the manifest's files (its parts, or the single file of an earlier dfd), oldest first."""
    return _parts(uri)


def _parts(uri: str) -> list[str]:
    fs, path = filesystem_for(uri)
    path = path.rstrip("/")
    found = [path] if fs.isfile(path) else []
    if fs.isdir(path):
        names = [p for p in fs.find(path) if p.startswith(path + "/")]
        found += sorted(p for p in names if posixpath.basename(p).startswith(PART_PREFIX) and p.endswith(".parquet"))
    return [uri_of(fs, p) for p in found]


def _read_part(part: str, columns: Iterable[str] | None = None,
               only: Collection[str] | None = None) -> list[dict[str, object]]:
    """A part's rows (``columns`` of them; those whose source_uri is in ``only``, when given)."""
    data = read_bytes(part)  # FileNotFoundError: compacted away meanwhile
    check_bytes(part, data)  # DamagedPart (a ValueError naming the part) when they are not what was written
    wanted = list(COLUMNS) if columns is None else list(dict.fromkeys([*_KEY_COLUMNS, *columns]))
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        names = parquet.schema_arrow.names
        table = parquet.read(columns=[c for c in wanted if c in names])
    except (pa.ArrowException, OSError) as exc:
        raise DamagedPart(part, f"not a readable manifest: Parquet: {exc}") from exc
    if "source_uri" not in table.column_names:
        raise DamagedPart(part, f"not a manifest: no source_uri column among the file's columns {names}")
    if only is not None:  # stored names: as given, and percent-encoded for names that are not UTF-8
        keys = pa.array(sorted({*only, *(_escape(uri) for uri in only)}), pa.string())
        table = table.filter(pc.is_in(table["source_uri"], value_set=keys))
    rows = [_decode_names({name: row.get(name) for name in wanted}) for row in table.to_pylist()]
    return rows if only is None else [row for row in rows if row["source_uri"] in only]


def _latest(parts: Iterable[list[dict[str, object]]]) -> dict[str, dict[str, object]]:
    latest: dict[str, dict[str, object]] = {}
    for rows in parts:
        for row in rows:
            key = str(row["source_uri"])
            held = latest.get(key)
            if held is None or _stamp(row) >= _stamp(held):
                latest[key] = row
    return dict(sorted(latest.items()))


def _stamp(row: Mapping[str, object]) -> dt.datetime:
    return row.get("updated_at") or dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def _delete(uris: Iterable[str]) -> None:
    for part in uris:
        fs, path = filesystem_for(part)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass


def _migrate_single_file(uri: str) -> None:
    """An earlier dfd's single-file manifest becomes the first part of the folder (locally a file and a folder
    cannot share the name; object stores hold both, and the file is merged away by the next compaction)."""
    if not is_local(uri) or not os.path.isfile(uri):
        return
    aside = f"{uri}.{uuid.uuid4().hex[:8]}.old"
    os.replace(uri, aside)
    os.makedirs(uri, exist_ok=True)
    os.replace(aside, join_uri(uri, f"{PART_PREFIX}00000000T000000000000-single-file.parquet"))


def merge_rows(old: Mapping[str, Mapping[str, object]],
               new: Iterable[Mapping[str, object]] | Mapping[str, Mapping[str, object]]) -> dict[str, dict]:
    """{source_uri: row} with ``new`` rows replacing ``old`` ones for the same source_uri; inputs are not changed."""
    merged = {uri: dict(row) for uri, row in old.items()}
    for row in (new.values() if isinstance(new, Mapping) else new):
        merged[str(row["source_uri"])] = dict(row)
    return merged


def is_listed_current(row: Mapping[str, object] | None, listing: str | None, config_hash: str) -> bool:
    """Whether ``row`` records finished work with this configuration on the object the listing describes the same
    way (ETag, or size and modification time): then its bytes need not be read to know it is unchanged."""
    return (listing is not None and row is not None and is_finished(row)
            and row.get("listing") == listing and row.get("config_hash") == config_hash)


def is_current(row: Mapping[str, object] | None, content_sha256: str, config_hash: str) -> bool:
    """Whether ``row`` records finished work on these input bytes with this configuration."""
    return (row is not None and is_finished(row)
            and row.get("content_sha256") == content_sha256 and row.get("config_hash") == config_hash)


def is_finished(row: Mapping[str, object]) -> bool:
    """ok, no_face, or failed on bytes that cannot be restored (``retry`` false): nothing a rerun could change.
    Other failed rows (a timeout, a dead worker, a full disk, an option's limit) are retried."""
    return row.get("status") in ("ok", "no_face") or (row.get("status") == "failed" and row.get("retry") is False)
