"""VGG19 component features for building dictionaries, and their Parquet storage.

The pipeline per batch of aligned faces: ``load_vgg`` → ``component_features`` (the same crop + bilinear resize the
generator applies before matching, §1.4 of the reference) → ``write_feature_partition``, one Parquet shard per
(scale, part). ``iter_feature_batches`` streams a partition back for k-means without ever holding it whole.

Layout: ``<root>/scale=<S>/part=<P>/<shard>.parquet`` with columns ``image_id`` string, ``face_index`` int32,
``flip`` bool, ``feature`` fixed_size_list<float16>[C·h·w] (row-major C, h, w). The schema metadata records the
feature shape and the extractor (``extractor_checksum``, ``random_vgg``) so that features of different extractors
are never clustered together.

Memory (d = C·h·w, N rows in a shard, B = ``batch_rows``):
- ``write_feature_partition``: N·d·(4 + 2 + 2) bytes — float32 input, its float16 copy in the Arrow table and the
  encoded Parquet buffer (float16 barely compresses, so it is about N·d·2 too).
- ``iter_feature_batches``: one row group (≤ ``ROW_GROUP_BYTES`` + one row) + B·d·2 for the yielded batch.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dfdcore.config import PARTS
from dfdcore.io.parquet import write_parquet
from dfdcore.io.storage import filesystem_for, join_uri

FEATURE_FORMAT = "dfd-component-features"
FEATURE_COLUMNS = ("image_id", "face_index", "flip", "feature")
# Row groups are bounded in bytes, not rows: one official mouth_256 row is 128·55·55·2 B ≈ 0.74 MiB, and a reader
# holds a whole row group while streaming it.
ROW_GROUP_BYTES = 64 * 2**20
_META_PREFIX = "dfd."
_RENAMED_META = {"extractor_sha256": "extractor_checksum", "random": "random_vgg"}  # shards written before the rename


class FeatureStoreError(ValueError):
    """A feature partition is missing, inconsistent or not a dfd feature file."""


# ------------------------------------------------------------------------------------------------- Parquet
@dataclass(frozen=True)
class FeatureSchema:
    """What a feature shard holds: the (scale, part), the feature shape and the extractor that made it."""

    scale: int
    part: str
    channels: int
    height: int
    width: int
    extractor_checksum: str
    random_vgg: bool
    num_rows: int = 0

    @property
    def dim(self) -> int:
        return self.channels * self.height * self.width

    def same_source(self, other: FeatureSchema) -> bool:
        return (self.scale, self.part, self.channels, self.height, self.width, self.extractor_checksum,
                self.random_vgg) == (other.scale, other.part, other.channels, other.height, other.width,
                                     other.extractor_checksum, other.random_vgg)


def partition_uri(root_uri: str, scale: int, part: str) -> str:
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; expected one of {PARTS}")
    return join_uri(str(root_uri), f"scale={int(scale)}/part={part}")


def arrow_schema(channels: int, height: int, width: int, *, scale: int, part: str, extractor_checksum: str,
                 random_vgg: bool) -> pa.Schema:
    """The Arrow schema of a shard, its metadata included (all values as UTF-8 bytes)."""
    dim = channels * height * width
    fields = [pa.field("image_id", pa.string(), nullable=False),
              pa.field("face_index", pa.int32(), nullable=False),
              pa.field("flip", pa.bool_(), nullable=False),
              pa.field("feature", pa.list_(pa.field("item", pa.float16(), nullable=False), dim), nullable=False)]
    meta = {"format": FEATURE_FORMAT, "scale": str(int(scale)), "part": part, "channels": str(channels),
            "height": str(height), "width": str(width), "extractor_checksum": extractor_checksum,
            "random_vgg": json.dumps(bool(random_vgg))}
    return pa.schema(fields, metadata={(_META_PREFIX + k).encode(): v.encode() for k, v in meta.items()})


def write_feature_partition(root_uri: str, scale: int, part: str, rows_meta: Sequence[Mapping[str, object]],
                            features: torch.Tensor | np.ndarray, shard_name: str, *,
                            extractor_checksum: str, random_vgg: bool) -> str:
    """Write one shard ``<root>/scale=S/part=P/<shard_name>.parquet`` atomically → its URI.

    Args:
        rows_meta: N dicts with ``image_id`` (str), ``face_index`` (int) and ``flip`` (bool).
        features: (N, C, h, w) features, stored as float16. Rows that are entirely NaN — skipped components, see
            ``component_features`` — are dropped with their rows_meta; any other NaN/inf is an error.
        shard_name: file stem, unique per writer (e.g. a batch id) so that concurrent writers never collide.
        extractor_checksum, random_vgg: from ``load_vgg``; recorded in the schema metadata.

    The file is built in memory and written with one ``write_bytes_atomic``: readers never see half a shard (a
    shard may have 0 rows). Values beyond the float16 range (±65504) are rejected rather than stored as inf.
    """
    if not shard_name or "/" in shard_name or "\\" in shard_name or shard_name.startswith("."):
        raise ValueError(f"shard_name must be a plain file stem not starting with '.', got {shard_name!r}")
    array = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if array.ndim != 4:
        raise ValueError(f"features must have shape (N, C, h, w), got {array.shape}")
    n, channels, height, width = array.shape
    if len(rows_meta) != n:
        raise ValueError(f"{len(rows_meta)} rows_meta for {n} feature rows")
    flat = array.reshape(n, -1)
    keep = ~np.isnan(flat).all(axis=1) if flat.shape[1] else np.ones(n, dtype=bool)
    with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
        half = flat[keep].astype(np.float16)
    if not np.isfinite(half).all():
        bad = int((~np.isfinite(half).all(axis=1)).sum())
        raise ValueError(f"{bad} of {n} feature rows hold NaN/inf after conversion to float16 (only whole-NaN rows, "
                         f"skipped components, are dropped; |values| must stay below 65504)")
    rows_meta = [m for m, k in zip(rows_meta, keep) if k]
    try:
        image_ids = [str(m["image_id"]) for m in rows_meta]
        face_index = np.asarray([int(m["face_index"]) for m in rows_meta], dtype=np.int32)
        flip = np.asarray([bool(m["flip"]) for m in rows_meta], dtype=bool)
    except KeyError as exc:
        raise ValueError(f"rows_meta entries need image_id, face_index and flip; missing {exc}") from None
    schema = arrow_schema(channels, height, width, scale=scale, part=part, extractor_checksum=extractor_checksum,
                          random_vgg=random_vgg)
    feature = pa.FixedSizeListArray.from_arrays(pa.array(half.reshape(-1), type=pa.float16()),
                                                type=schema.field("feature").type)
    table = pa.Table.from_arrays([pa.array(image_ids, pa.string()), pa.array(face_index, pa.int32()),
                                  pa.array(flip, pa.bool_()), feature], schema=schema)
    rows_per_group = max(1, ROW_GROUP_BYTES // max(1, 2 * channels * height * width))
    uri = join_uri(partition_uri(root_uri, scale, part), f"{shard_name.removesuffix('.parquet')}.parquet")
    write_parquet(uri, table, row_group_size=rows_per_group)
    return uri


def read_feature_schema(uri: str) -> FeatureSchema:
    """Read one shard's footer (no data) → FeatureSchema. FeatureStoreError when it is not a dfd feature file."""
    fs, path = filesystem_for(str(uri))
    with fs.open(path, "rb") as handle:
        meta = pq.ParquetFile(handle).metadata
        schema = meta.schema.to_arrow_schema()
    raw = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    values = {k.removeprefix(_META_PREFIX): v for k, v in raw.items() if k.startswith(_META_PREFIX)}
    values = {_RENAMED_META.get(k, k): v for k, v in values.items()}
    if values.get("format") != FEATURE_FORMAT:
        raise FeatureStoreError(f"{uri}: not a dfd feature file (schema metadata 'dfd.format' is "
                                f"{values.get('format')!r})")
    return FeatureSchema(scale=int(values["scale"]), part=values["part"], channels=int(values["channels"]),
                         height=int(values["height"]), width=int(values["width"]),
                         extractor_checksum=values["extractor_checksum"],
                         random_vgg=json.loads(values["random_vgg"]),
                         num_rows=meta.num_rows)


def list_shards(root_uri: str, scale: int, part: str) -> list[str]:
    """URIs of a partition's shards, sorted by name ([] when there is none). Hidden/temporary files are skipped."""
    base = partition_uri(root_uri, scale, part)
    fs, path = filesystem_for(base)
    try:
        found = fs.glob(path.rstrip("/") + "/*.parquet")
    except FileNotFoundError:
        return []
    names = sorted(p for p in found if not posixpath.basename(p).startswith("."))
    return [join_uri(base, posixpath.basename(p)) for p in names]


def partition_schema(root_uri: str, scale: int, part: str) -> FeatureSchema:
    """The common schema of all shards of a partition, ``num_rows`` summed. FileNotFoundError when it has no
    shard; FeatureStoreError when shards disagree (shape or extractor) or belong to another (scale, part)."""
    shards = list_shards(root_uri, scale, part)
    if not shards:
        raise FileNotFoundError(f"no feature shards under {partition_uri(root_uri, scale, part)}")
    first = read_feature_schema(shards[0])
    total = 0
    for uri in shards:
        schema = first if uri == shards[0] else read_feature_schema(uri)
        if (schema.scale, schema.part) != (int(scale), part) or not schema.same_source(first):
            raise FeatureStoreError(f"{uri}: shard holds {schema} but {shards[0]} holds {first}; a partition must "
                                    f"hold one (scale, part) of one extractor")
        total += schema.num_rows
    return FeatureSchema(**{**first.__dict__, "num_rows": total})


def count_rows(root_uri: str, scale: int, part: str) -> int:
    """Rows in a partition, from the shard footers only; 0 when the partition has no shard."""
    if not list_shards(root_uri, scale, part):
        return 0
    return partition_schema(root_uri, scale, part).num_rows


def iter_feature_batches(root_uri: str, scale: int, part: str, batch_rows: int = 4096) -> Iterator[np.ndarray]:
    """Stream a partition → arrays (n, C·h·w) float16 with 1 ≤ n ≤ ``batch_rows``, shards in name order, rows in
    file order. Only the ``feature`` column is read; memory is one row group plus one batch (module docstring).
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    dim = partition_schema(root_uri, scale, part).dim  # also checks that the shards agree
    for uri in list_shards(root_uri, scale, part):
        fs, path = filesystem_for(uri)
        with fs.open(path, "rb") as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=["feature"]):
                if batch.num_rows == 0:
                    continue
                # flatten() honours the slice offset of the batch; to_numpy copies only when it must.
                values = batch.column(0).flatten().to_numpy(zero_copy_only=False)
                yield values.reshape(batch.num_rows, dim)
