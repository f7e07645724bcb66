"""Aligned faces for training and evaluation: one Parquet table of face crops with their 68 landmarks.

``faceset.parquet`` holds one row per face: ``image_id``, ``face_index``, ``uri`` (the photo), ``split`` (train |
test, decided per photo so that no photo feeds both), ``face`` (PNG bytes of the S×S aligned crop) and ``lm68``
(68 × (x, y) on the crop). It is made from a folder/URL of photos (detection on the fly) or from the dictionary
flow's ``faces.parquet`` (its landmarks, no second detection). ``FaceSet`` streams it back a row group at a time.

A training sample is a pure function of (seed, position): the position picks the face through a per-epoch
permutation, decides the flip and seeds the degradation — so any worker can make any sample, and a resumed run
sees exactly the samples an uninterrupted one would.
"""
from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dfdcore.components import part_boxes
from dfdcore.data.degrade import DegradationConfig, degrade
from dfdcore.face import align_faces
from dfdcore.face.align import aligned_from_landmarks
from dfdcore.face.flip import flip_faces
from dfdcore.io.hashing import sha256_bytes
from dfdcore.io.images import decode_image, decode_png, encode_png
from dfdcore.io.parquet import write_parquet
from dfdcore.io.pixels import images_to_tensor
from dfdcore.io.storage import Source, filesystem_for, read_bytes

FACESET_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("face_index", pa.int32()),
    ("uri", pa.string()),
    ("split", pa.string()),
    ("face", pa.binary()),                  # PNG of the aligned S×S crop
    ("lm68", pa.list_(pa.float32())),       # 68 × (x, y) on the crop
])
ROW_GROUP_ROWS = 64


def faces_from_table(face_rows: Iterable[dict], face_size: int) -> Iterable[dict]:
    """Rows of the dictionary flow's ``faces.parquet`` (status ok) → faceset rows without ``split``."""
    by_uri: dict[str, list[dict]] = {}
    for row in face_rows:
        if row["status"] == "ok":
            by_uri.setdefault(row["uri"], []).append(row)
    for uri, rows in sorted(by_uri.items()):
        rgb = decode_image(read_bytes(uri), name=uri).rgb8
        for row in rows:
            crop, lm68 = aligned_from_landmarks(rgb, row["lm5"], row["lm68"], face_size)
            yield {"image_id": row["image_id"], "face_index": int(row["face_index"]), "uri": uri,
                   "face": encode_png(crop), "lm68": lm68.reshape(-1).tolist()}


def faces_from_photos(sources: Sequence[Source], face_size: int, upsample: int = 1, min_score: float = 0.2
                      ) -> tuple[list[dict], list[dict]]:
    """Detect and align every face of the photos → (faceset rows without ``split``, skipped {uri, reason})."""
    rows, skipped = [], []
    for source in sources:
        try:
            data = read_bytes(source.uri)
            faces = align_faces(decode_image(data, name=source.uri).rgb8, face_size=face_size, upsample=upsample,
                                min_score=min_score)
        except Exception as exc:  # noqa: BLE001 - one bad photo is a skipped row, never the end of the build
            skipped.append({"uri": source.uri, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        if not faces:
            skipped.append({"uri": source.uri, "reason": "no face found"})
        for i, face in enumerate(faces):
            rows.append({"image_id": sha256_bytes(data), "face_index": i, "uri": source.uri,
                         "face": encode_png(face.image), "lm68": face.landmarks68.reshape(-1).tolist()})
    return rows, skipped


def assign_split(image_ids: Iterable[str], test_fraction: float, seed: int = 0) -> dict[str, str]:
    """Photo → "train" | "test": the photos first in a seeded hash order are held out.

    ⌈fraction · photos⌉ photos are held out (at least one when the fraction is positive and there are two or more
    photos), so a small collection still has a test set; the choice does not depend on the order of the input."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    ids = sorted(set(image_ids), key=lambda i: sha256_bytes(f"{seed}:{i}".encode()))
    held = int(np.ceil(test_fraction * len(ids))) if len(ids) > 1 else 0
    return {image_id: "test" if n < held else "train" for n, image_id in enumerate(ids)}


def write_faceset(uri: str, rows: list[dict], face_size: int, test_fraction: float, seed: int = 0) -> dict:
    """Faceset rows → ``uri`` (atomically), split assigned per photo → counts per split.

    Rows that already carry a ``split`` keep it (held-out photos chosen by the caller, e.g. by person); the others
    are split per photo with ``test_fraction``."""
    split = assign_split((r["image_id"] for r in rows if "split" not in r), test_fraction, seed)
    rows = sorted(({**r, "split": r.get("split") or split[r["image_id"]]} for r in rows),
                  key=lambda r: (r["uri"], r["face_index"]))
    schema = FACESET_SCHEMA.with_metadata({"face_size": str(face_size)})
    write_parquet(uri, rows, schema, row_group_size=ROW_GROUP_ROWS)
    return {name: sum(r["split"] == name for r in rows) for name in ("train", "test")}


class FaceSet:
    """The faces of one split of a faceset table, read lazily a row group at a time.

    ``face(i)`` → ((S, S, 3) uint8 RGB, (68, 2) float64 landmarks on the face)."""

    def __init__(self, uri: str, split: str | None = "train") -> None:
        fs, path = filesystem_for(uri)
        self.uri = uri
        self._file = pq.ParquetFile(io.BytesIO(fs.cat_file(path))) if fs.size(path) < 2**28 else \
            pq.ParquetFile(fs.open(path, "rb"))
        meta = self._file.schema_arrow.metadata or {}
        if b"face_size" not in meta:
            raise ValueError(f"{uri}: not a dfd faceset (no face_size in the schema metadata)")
        self.face_size = int(meta[b"face_size"])
        index = self._file.read(columns=["image_id", "face_index", "split", "lm68"]).to_pylist()
        group_starts = np.cumsum([0] + [self._file.metadata.row_group(g).num_rows
                                        for g in range(self._file.num_row_groups)])
        self._rows = [i for i, r in enumerate(index) if split is None or r["split"] == split]
        self._index = index
        self._group_starts = group_starts
        self._cached: tuple[int, list[bytes]] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def key(self, i: int) -> tuple[str, int]:
        row = self._index[self._rows[i]]
        return row["image_id"], row["face_index"]

    def face(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        row = self._rows[i]
        group = int(np.searchsorted(self._group_starts, row, side="right") - 1)
        if self._cached is None or self._cached[0] != group:
            self._cached = (group, self._file.read_row_group(group, columns=["face"]).column("face").to_pylist())
        image = decode_png(self._cached[1][row - self._group_starts[group]])
        return image, np.asarray(self._index[row]["lm68"], np.float64).reshape(68, 2)


@dataclass(frozen=True)
class Batch:
    """A training batch: ``lq``, ``hq`` (B, 3, S, S) in [-1, 1], ``boxes`` (B, 4, 4) int64 part boxes of the HQ."""

    lq: torch.Tensor
    hq: torch.Tensor
    boxes: torch.Tensor


def sample_order(position: int, size: int, seed: int) -> int:
    """Face index at a global sample position: a seeded permutation per epoch, so every face is seen once per epoch."""
    epoch, offset = divmod(position, size)
    return int(np.random.default_rng([seed, epoch]).permutation(size)[offset])


def augment_face(image: np.ndarray, lm68: np.ndarray, strength: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A new view of an aligned (S, S, 3) uint8 face and its (68, 2) landmarks, for small face sets: a random
    similarity warp (rotation ±15°, scale ×0.8–1.25, shift ±8 % of S, all × ``strength``; mirrored borders) and a
    random order of the colour channels (p min(1, 0.5 · strength)). The landmarks follow the warp, so do the part
    boxes."""
    size = image.shape[0]
    angle = rng.uniform(-15, 15) * strength
    scale = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)) * strength))
    shift = rng.uniform(-0.08, 0.08, 2) * size * strength
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, scale)
    matrix[:, 2] += shift
    warped = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if rng.random() < 0.5 * strength:
        warped = warped[..., rng.permutation(3)]
    return np.ascontiguousarray(warped), lm68 @ matrix[:, :2].T + matrix[:, 2]


def training_sample(faces: FaceSet, position: int, seed: int, degradation: DegradationConfig,
                    flip_probability: float = 0.5, augment: float = 0.0
                    ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(lq, target) (S, S, 3) uint8 and boxes (4, 4) for the sample at ``position``; flips keep boxes consistent,
    ``augment`` > 0 warps and recolours the face first (``augment_face``)."""
    image, lm68 = faces.face(sample_order(position, len(faces), seed))
    if augment > 0:
        image, lm68 = augment_face(image, lm68, augment, np.random.default_rng([seed, position, 2]))
    landmarks = torch.from_numpy(lm68)[None]
    if np.random.default_rng([seed, position, 1]).random() < flip_probability:
        flipped, landmarks = flip_faces(torch.from_numpy(image).permute(2, 0, 1)[None], landmarks, faces.face_size)
        image = flipped[0].permute(1, 2, 0).numpy()
    pair = degrade(np.ascontiguousarray(image), degradation, seed=seed, index=position)
    return pair.lq, pair.target, part_boxes(landmarks, face_size=faces.face_size)[0]


def training_batch(faces: FaceSet, positions: Sequence[int], seed: int, degradation: DegradationConfig,
                   flip_probability: float = 0.5, augment: float = 0.0) -> Batch:
    samples = [training_sample(faces, p, seed, degradation, flip_probability, augment) for p in positions]
    return Batch(lq=images_to_tensor([s[0] for s in samples]), hq=images_to_tensor([s[1] for s in samples]),
                 boxes=torch.stack([s[2] for s in samples]))
