"""VGG19 component features for building dictionaries, and their Parquet storage.

The pipeline per batch of aligned faces: ``load_vgg`` → ``component_features`` (the same crop + bilinear resize the
generator applies before matching, §1.4 of the reference) → ``write_feature_partition``, one Parquet shard per
(scale, part). ``iter_feature_batches`` streams a partition back for k-means without ever holding it whole.

Layout: ``<root>/scale=<S>/part=<P>/<shard>.parquet`` with columns ``image_id`` string, ``face_index`` int32,
``flip`` bool, ``feature`` fixed_size_list<float16>[C·h·w] (row-major C, h, w). The schema metadata records the
feature shape and the extractor (sha256 checksum, random flag) so that features of different extractors are never
clustered together.

Memory (d = C·h·w, N rows in a shard, B = ``batch_rows``):
- ``write_feature_partition``: N·d·(4 + 2 + 2) bytes — float32 input, its float16 copy in the Arrow table and the
  encoded Parquet buffer (float16 barely compresses, so it is about N·d·2 too).
- ``iter_feature_batches``: one row group (≤ ``ROW_GROUP_BYTES`` + one row) + B·d·2 for the yielded batch.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from .arch.checkpoint import read_state_dict, to_official_keys
from .arch.vgg import VGG19_CONV_NAMES, VGGFeatures
from .components import scale_boxes
from .config import PARTS, GeneratorConfig
from .io.storage import filesystem_for, join_uri, write_bytes_atomic

Key = tuple[int, str]
FEATURE_FORMAT = "dfd-component-features"
FEATURE_COLUMNS = ("image_id", "face_index", "flip", "feature")
# Row groups are bounded in bytes, not rows: one official mouth_256 row is 128·55·55·2 B ≈ 0.74 MiB, and a reader
# holds a whole row group while streaming it.
ROW_GROUP_BYTES = 64 * 2**20
_META_PREFIX = "dfd."

# iBUG-68 horizontal mirror: FLIP_68[i] is the point that lands on index i after a left/right flip
# (jaw 0↔16, brows 17↔26, nostrils 31↔35, eyes 36↔45 …, mouth 48↔54 …; nose bridge 27–30, 51, 57, 62, 66 fixed).
FLIP_68: tuple[int, ...] = (
    *range(16, -1, -1),                              # jaw 0..16
    *range(26, 21, -1), *range(21, 16, -1),          # brows 17..21 ↔ 22..26
    27, 28, 29, 30,                                  # nose bridge
    35, 34, 33, 32, 31,                              # nostrils
    45, 44, 43, 42, 47, 46,                          # left eye 36..41 ← right eye
    39, 38, 37, 36, 41, 40,                          # right eye 42..47 ← left eye
    54, 53, 52, 51, 50, 49, 48,                      # outer upper lip 48..54
    59, 58, 57, 56, 55,                              # outer lower lip 55..59
    64, 63, 62, 61, 60,                              # inner upper lip 60..64
    67, 66, 65,                                      # inner lower lip 65..67
)
assert len(FLIP_68) == 68 and sorted(FLIP_68) == list(range(68))


class FeatureStoreError(ValueError):
    """A feature partition is missing, inconsistent or not a dfd feature file."""


# ------------------------------------------------------------------------------------------------- extractor
def load_vgg(weights: str | os.PathLike | None, width: int | None = None,
             random_seed: int | None = None) -> tuple[VGGFeatures, str, bool]:
    """The frozen VGG19 extractor → (vgg in eval mode, checksum, random).

    ``weights`` may be torchvision's ``vgg19-dcbb9e9d.pth`` (keys ``features.<idx>.*``; the classifier is ignored and
    RGB_mean/RGB_std keep the ImageNet values), or an official / BasicSR / dfd generator checkpoint (its
    ``VggExtract.model.features.*`` and trained ``VggExtract.RGB_mean/std``). ``width`` (64 for ImageNet VGG19) is
    read from the weights; when given it must agree. Random weights are made only when asked for explicitly
    (``weights=None`` and a ``random_seed``), so a missing path can never silently yield a random extractor.

    The checksum is the sha256 of the conv weights and biases (in layer order, float32 little-endian) and of
    RGB_mean/RGB_std, which change the features too; seeded random weights therefore get a stable checksum.
    """
    if weights is None:
        if random_seed is None:
            raise ValueError("load_vgg: pass a weights file (e.g. vgg19-dcbb9e9d.pth or a generator checkpoint), "
                             "or weights=None with random_seed=<int> to ask for random weights explicitly")
        with torch.random.fork_rng(devices=[]):  # seed locally: do not disturb the caller's global RNG
            torch.manual_seed(random_seed)
            vgg = VGGFeatures(width or 64)
        return _frozen(vgg), extractor_checksum(vgg), True
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such VGG weights file. Expected torchvision's vgg19-dcbb9e9d.pth or a "
                                f"DFDNet generator checkpoint (official .pth, BasicSR .pth or dfd .safetensors)")
    state = _vgg_state(read_state_dict(path)[0], str(path))
    found = int(state["model.features.0.weight"].shape[0])
    if width is not None and width != found:
        raise ValueError(f"{path}: VGG width {found} (conv1_1 channels) does not match the requested width {width}")
    vgg = VGGFeatures(found)
    expected = {k: v for k, v in vgg.state_dict().items() if k.startswith("model.features.")}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{path}: VGG weights incomplete, {len(missing)} missing key(s): {', '.join(missing[:8])}")
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise ValueError(f"{path}: VGG weights with wrong shapes: " + "; ".join(
            f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in bad[:8]))
    vgg.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
    return _frozen(vgg), extractor_checksum(vgg), False


def _vgg_state(raw: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Any supported layout → VGGFeatures keys (``model.features.<idx>.*``, ``RGB_mean``, ``RGB_std``)."""
    state = to_official_keys(dict(raw))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("VggExtract.model.features."):
            out[key.removeprefix("VggExtract.")] = value
        elif key in ("VggExtract.RGB_mean", "VggExtract.RGB_std"):
            out[key.removeprefix("VggExtract.")] = value.reshape(1, 3, 1, 1)
        elif key.startswith("features.") and key.count(".") == 2:  # torchvision VGG19
            out["model." + key] = value
    if "model.features.0.weight" not in out:
        raise ValueError(f"{source}: no VGG19 weights found (expected torchvision 'features.0.weight' or "
                         f"'VggExtract.model.features.0.weight')")
    conv_indices = set(VGG19_CONV_NAMES.values())
    # Drop layers beyond conv5_4 (none in VGG19 features, but a longer backbone must not be half-loaded quietly).
    return {k: v for k, v in out.items() if not k.startswith("model.features.")
            or int(k.split(".")[2]) in conv_indices}


def _frozen(vgg: VGGFeatures) -> VGGFeatures:
    vgg.eval()
    vgg.requires_grad_(False)
    return vgg


def extractor_checksum(vgg: VGGFeatures) -> str:
    """sha256 over conv weights/biases in layer order and RGB_mean/RGB_std, as float32 little-endian bytes."""
    digest = hashlib.sha256()
    state = vgg.state_dict()
    names = [f"model.features.{i}.{leaf}" for i in sorted(VGG19_CONV_NAMES.values()) for leaf in ("weight", "bias")]
    for name in names + ["RGB_mean", "RGB_std"]:
        tensor = state[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().astype("<f4", copy=False).tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------- features
def component_features(vgg: VGGFeatures, faces: torch.Tensor, boxes: torch.Tensor,
                       config: GeneratorConfig, bands: int = 1) -> dict[Key, torch.Tensor]:
    """Dictionary-ready component features of aligned faces.

    For each VGG tap (scale) and part: the part's window from ``scale_boxes`` (stride = face_size // tap side, the
    generator's own clamping rule), cropped and bilinearly resized (align_corners=False) to
    (dict_size, dict_size) — exactly what the generator matches against the dictionary.

    Args:
        vgg: extractor whose width equals ``config.ngf``.
        faces: (B, 3, S, S) aligned faces in [-1, 1], S = config.face_size.
        boxes: (B, 4, 4) int component boxes in face pixels (``part_boxes``), parts in PARTS order.
        bands: row bands for the first VGG group (less memory, same values).

    Returns:
        {(scale, part): (B, C, h, w) float32} with (C, h, w) = config.dict_shape(scale, part, ·)[1:]. A part whose
        window lies wholly outside the map (``scale_boxes`` gives None) gets a row of NaN; drop those rows with
        ``valid_rows`` before storing them.
    """
    if faces.ndim != 4 or faces.shape[1] != 3 or faces.shape[2:] != (config.face_size, config.face_size):
        raise ValueError(f"faces must have shape (B, 3, {config.face_size}, {config.face_size}), "
                         f"got {tuple(faces.shape)}")
    boxes = torch.as_tensor(boxes)
    if boxes.shape != (faces.shape[0], len(PARTS), 4):
        raise ValueError(f"boxes must have shape ({faces.shape[0]}, 4, 4), got {tuple(boxes.shape)}")
    with torch.no_grad():
        taps = vgg(faces, bands=bands)
    out: dict[Key, torch.Tensor] = {}
    for scale, channels, tap in zip(config.scales, config.tap_channels, taps):
        if tap.shape[1] != channels or tap.shape[-1] != scale:
            raise ValueError(f"VGG tap {tuple(tap.shape[1:])} does not match the configuration ({channels}, {scale}, "
                             f"{scale}): use a VGG of width {config.ngf} for ngf {config.ngf}")
        windows = scale_boxes(boxes, config.face_size // scale, scale)
        for p, part in enumerate(PARTS):
            side = config.dict_size(scale, part)
            rows = tap.new_full((tap.shape[0], channels, side, side), float("nan"))
            for b, per_face in enumerate(windows):
                if per_face[p] is not None:
                    rows[b] = crop_resize(tap[b:b + 1], per_face[p], side)[0]
            out[(scale, part)] = rows
    return out


def crop_resize(feature: torch.Tensor, window: tuple[int, int, int, int], side: int) -> torch.Tensor:
    """(B, C, H, W) map, window (x1, y1, x2, y2) in cells (exclusive upper) → (B, C, side, side), bilinear,
    align_corners=False, no antialiasing (the generator's resize)."""
    x1, y1, x2, y2 = window
    crop = feature[:, :, y1:y2, x1:x2]
    return F.interpolate(crop, size=(side, side), mode="bilinear", align_corners=False)


def valid_rows(features: torch.Tensor) -> torch.Tensor:
    """(N, ...) features → (N,) bool: rows without NaN/inf (a skipped component is all NaN)."""
    return torch.isfinite(features.reshape(features.shape[0], -1)).all(dim=1)


def flip_faces(faces: torch.Tensor, landmarks68: torch.Tensor, face_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip for augmentation → (faces (B, 3, S, S), landmarks (B, 68, 2)); boxes of the flipped face are
    ``part_boxes(landmarks, face_size)`` as for any face.

    Pixel column j goes to S−1−j, so a landmark x (pixel-index coordinates) goes to S−1−x; with integer-valued
    landmarks the official box rule then gives exactly mirrored boxes. The points are re-indexed with ``FLIP_68``
    so that the flipped face's left_eye is again the eye on the image's left (the original right eye).
    """
    landmarks68 = torch.as_tensor(landmarks68)
    if landmarks68.ndim == 2:
        landmarks68 = landmarks68.unsqueeze(0)
    if faces.ndim != 4 or faces.shape[-1] != face_size or landmarks68.shape != (faces.shape[0], 68, 2):
        raise ValueError(f"expected faces (B, 3, {face_size}, {face_size}) and landmarks (B, 68, 2), got "
                         f"{tuple(faces.shape)} and {tuple(landmarks68.shape)}")
    flipped = landmarks68[:, list(FLIP_68)].clone()
    flipped[..., 0] = face_size - 1 - flipped[..., 0]
    return faces.flip(-1), flipped


# ------------------------------------------------------------------------------------------------- Parquet
@dataclass(frozen=True)
class FeatureSchema:
    """What a feature shard holds: the (scale, part), the feature shape and the extractor that made it."""

    scale: int
    part: str
    channels: int
    height: int
    width: int
    extractor_sha256: str
    random: bool
    num_rows: int = 0

    @property
    def dim(self) -> int:
        return self.channels * self.height * self.width

    def same_source(self, other: FeatureSchema) -> bool:
        return (self.scale, self.part, self.channels, self.height, self.width, self.extractor_sha256,
                self.random) == (other.scale, other.part, other.channels, other.height, other.width,
                                 other.extractor_sha256, other.random)


def partition_uri(root_uri: str, scale: int, part: str) -> str:
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; expected one of {PARTS}")
    return join_uri(str(root_uri), f"scale={int(scale)}/part={part}")


def arrow_schema(channels: int, height: int, width: int, *, scale: int, part: str, extractor_sha256: str,
                 random: bool) -> pa.Schema:
    """The Arrow schema of a shard, its metadata included (all values as UTF-8 bytes)."""
    dim = channels * height * width
    fields = [pa.field("image_id", pa.string(), nullable=False),
              pa.field("face_index", pa.int32(), nullable=False),
              pa.field("flip", pa.bool_(), nullable=False),
              pa.field("feature", pa.list_(pa.field("item", pa.float16(), nullable=False), dim), nullable=False)]
    meta = {"format": FEATURE_FORMAT, "scale": str(int(scale)), "part": part, "channels": str(channels),
            "height": str(height), "width": str(width), "extractor_sha256": extractor_sha256,
            "random": json.dumps(bool(random))}
    return pa.schema(fields, metadata={(_META_PREFIX + k).encode(): v.encode() for k, v in meta.items()})


def write_feature_partition(root_uri: str, scale: int, part: str, rows_meta: Sequence[Mapping[str, object]],
                            features: torch.Tensor | np.ndarray, shard_name: str, *,
                            extractor_checksum: str, random_weights: bool) -> str:
    """Write one shard ``<root>/scale=S/part=P/<shard_name>.parquet`` atomically → its URI.

    Args:
        rows_meta: N dicts with ``image_id`` (str), ``face_index`` (int) and ``flip`` (bool).
        features: (N, C, h, w) features, stored as float16. Rows that are entirely NaN — skipped components, see
            ``component_features`` — are dropped with their rows_meta; any other NaN/inf is an error.
        shard_name: file stem, unique per writer (e.g. a batch id) so that concurrent writers never collide.
        extractor_checksum, random_weights: from ``load_vgg``; recorded in the schema metadata.

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
    schema = arrow_schema(channels, height, width, scale=scale, part=part, extractor_sha256=extractor_checksum,
                          random=random_weights)
    feature = pa.FixedSizeListArray.from_arrays(pa.array(half.reshape(-1), type=pa.float16()),
                                                type=schema.field("feature").type)
    table = pa.Table.from_arrays([pa.array(image_ids, pa.string()), pa.array(face_index, pa.int32()),
                                  pa.array(flip, pa.bool_()), feature], schema=schema)
    sink = pa.BufferOutputStream()
    rows_per_group = max(1, ROW_GROUP_BYTES // max(1, 2 * channels * height * width))
    pq.write_table(table, sink, row_group_size=rows_per_group, compression="zstd")
    uri = join_uri(partition_uri(root_uri, scale, part), f"{shard_name.removesuffix('.parquet')}.parquet")
    write_bytes_atomic(uri, sink.getvalue().to_pybytes())
    return uri


def read_feature_schema(uri: str) -> FeatureSchema:
    """Read one shard's footer (no data) → FeatureSchema. FeatureStoreError when it is not a dfd feature file."""
    fs, path = filesystem_for(str(uri))
    with fs.open(path, "rb") as handle:
        meta = pq.ParquetFile(handle).metadata
        schema = meta.schema.to_arrow_schema()
    raw = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    values = {k.removeprefix(_META_PREFIX): v for k, v in raw.items() if k.startswith(_META_PREFIX)}
    if values.get("format") != FEATURE_FORMAT:
        raise FeatureStoreError(f"{uri}: not a dfd feature file (schema metadata 'dfd.format' is "
                                f"{values.get('format')!r})")
    return FeatureSchema(scale=int(values["scale"]), part=values["part"], channels=int(values["channels"]),
                         height=int(values["height"]), width=int(values["width"]),
                         extractor_sha256=values["extractor_sha256"], random=json.loads(values["random"]),
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
