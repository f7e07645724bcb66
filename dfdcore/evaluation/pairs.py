"""A paired test set made once, and per-image metrics of any face model on it.

``pairs.parquet``: one row per held-out face — ``pair`` index, ``image_id``, ``face_index``, ``lq`` and ``hq`` (PNG of
the S×S degraded input and its ground truth), ``lm68`` (68 × (x, y) on the face) and the degradation ``params`` —
with the schema metadata naming the seed, preset and source faceset. Made once and never rewritten, so every model
evaluated on it sees the same pairs. The bicubic baseline is the LQ itself: the degradation already ends with a
bicubic upsampling back to S.

Every scored image (a model's output, the bicubic LQ) also gets ``niqe``, a no-reference naturalness score (lower
is more natural) against dfd's own NIQE fit on pd-faces faces (``dfdcore.evaluation.niqe``; not the published NIQE
parameters, so not comparable with published NIQE figures).
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dfdcore.components import part_boxes
from dfdcore.data.degrade import DegradationConfig, degrade
from dfdcore.data.faceset import FaceSet
from dfdcore.evaluation.metrics import LPIPS, IdentityEncoder, MetricUnavailable, face_metrics
from dfdcore.evaluation.niqe import NiqeModel, default_niqe_model, niqe_score
from dfdcore.io.images import decode_png, encode_png
from dfdcore.io.parquet import write_parquet
from dfdcore.io.pixels import images_to_tensor, tensor_to_images
from dfdcore.io.storage import read_bytes

PAIRS_SCHEMA = pa.schema([
    ("pair", pa.int32()),
    ("image_id", pa.string()),
    ("face_index", pa.int32()),
    ("lq", pa.binary()),
    ("hq", pa.binary()),
    ("lm68", pa.list_(pa.float32())),
    ("params", pa.string()),
])
METRIC_COLUMNS = ("psnr", "ssim", "psnr_y", "ssim_y", "lpips", "identity_distance", "landmark_distance", "niqe")
# Higher is better for these; lower for the rest (used by summaries to say which way is good).
HIGHER_IS_BETTER = frozenset({"psnr", "ssim", "psnr_y", "ssim_y"})


def degraded_pairs(faces: FaceSet, count: int, seed: int, config: DegradationConfig) -> list[dict]:
    """``count`` (lq, hq) pairs of ``faces``, pair i from face i mod N with its own seeded degradation: with more
    pairs than faces each face comes back under other degradations (a steadier mean on a small test set); with
    fewer, the faces are spread evenly over the set (face ⌊i·N/count⌋), not its first ``count`` (one source).

    Rows: ``pair``, ``image_id``, ``face_index``, ``lq``/``hq`` (S, S, 3) uint8, ``lm68`` (68, 2), ``params``."""
    rows = []
    for i in range(count):
        face = i * len(faces) // count if count < len(faces) else i % len(faces)
        image, lm68 = faces.face(face)
        pair = degrade(image, config, seed=seed, index=i)
        image_id, face_index = faces.key(face)
        rows.append({"pair": i, "image_id": image_id, "face_index": face_index, "lq": pair.lq, "hq": pair.target,
                     "lm68": lm68, "params": json.dumps(pair.params)})
    return rows


def make_pairs(faceset: str, uri: str, *, count: int | None = None, seed: int = 1234,
               degradation: str = "reference") -> int:
    """Degrade the held-out faces of ``faceset`` once (seeded per pair) into ``uri`` → number of pairs.

    ``count``: pairs to make (default one per held-out face; more reuse the faces under other degradations)."""
    faces = FaceSet(faceset, "test")
    if len(faces) == 0:
        raise ValueError(f"{faceset}: no held-out (test) faces to make a test set from")
    pairs = degraded_pairs(faces, count or len(faces), seed, DegradationConfig.preset(degradation))
    rows = [p | {"lq": encode_png(p["lq"]), "hq": encode_png(p["hq"]), "lm68": p["lm68"].reshape(-1).tolist()} for p in pairs]
    schema = PAIRS_SCHEMA.with_metadata({"face_size": str(faces.face_size), "seed": str(seed),
                                         "degradation": degradation, "faceset": faceset})
    return write_parquet(uri, rows, schema)


def read_pairs(uri: str) -> tuple[list[dict], dict[str, str]]:
    """The pairs (PNG columns decoded to (S, S, 3) uint8, ``lm68`` to (68, 2)) and the set's metadata."""
    table = pq.read_table(io.BytesIO(read_bytes(uri)))
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    rows = table.to_pylist()
    for row in rows:
        row["lq"], row["hq"] = decode_png(row["lq"]), decode_png(row["hq"])
        row["lm68"] = np.asarray(row["lm68"], np.float64).reshape(68, 2)
    return rows, meta


def restore_pairs(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], pairs: list[dict],
                  batch_size: int = 8, device: torch.device | str = "cpu") -> Iterator[np.ndarray]:
    """Each pair's LQ through ``model(faces (B, 3, S, S) in [-1, 1], boxes (B, 4, 4))`` → (S, S, 3) uint8."""
    size = pairs[0]["lq"].shape[0]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        boxes = part_boxes(torch.from_numpy(np.stack([p["lm68"] for p in chunk])), face_size=size)
        with torch.no_grad():
            out = model(images_to_tensor([p["lq"] for p in chunk]).to(device), boxes)
        yield from tensor_to_images(out)


def lpips_or_reason(device: torch.device | str = "cpu") -> tuple[LPIPS | None, str]:
    """An LPIPS metric when its backbone weights are on this machine, else None and why (never an estimate)."""
    available, reason = LPIPS.available()
    if not available:
        return None, reason
    try:
        return LPIPS(device=device), ""
    except MetricUnavailable as error:
        return None, str(error)


def metric_rows(outputs: Iterator[np.ndarray] | list[np.ndarray], pairs: list[dict],
                lpips: LPIPS | None = None, encoder: IdentityEncoder | None = None,
                niqe: NiqeModel | None = None) -> list[dict]:
    """One row per pair: ``pair`` and every metric of ``METRIC_COLUMNS`` (None when not computable); ``niqe`` is of
    the output alone, against ``niqe`` (default: dfd's pd-faces fit)."""
    encoder, niqe = encoder or IdentityEncoder(), niqe or default_niqe_model()
    return [{"pair": p["pair"], **face_metrics(out, p["hq"], target_landmarks68=p["lm68"], encoder=encoder,
                                                lpips=lpips), "niqe": niqe_score(out, niqe)}
            for out, p in zip(outputs, pairs)]


def aggregate(rows: list[dict]) -> dict[str, float]:
    """Mean of each metric over the rows where it was computed (absent when it never was; PSNR of identical
    images is +inf and is averaged as such)."""
    means = {}
    for name in METRIC_COLUMNS:
        values = [r[name] for r in rows if r.get(name) is not None]
        if values:
            means[name] = float(np.mean(values))
    return means


def worse_than_bicubic(validation: dict | None, metrics: tuple[str, ...] = ("psnr", "ssim", "identity_distance")
                       ) -> list[str]:
    """The metrics on which a model's own validation (``val_*`` beside ``bicubic_*``) is worse than bicubic's, each
    as "PSNR 14.20 < bicubic 20.30"; empty when it is not worse or nothing was validated."""
    worse = []
    for name in metrics:
        model, bicubic = (validation or {}).get(f"val_{name}"), (validation or {}).get(f"bicubic_{name}")
        if model is None or bicubic is None:
            continue
        higher = name in HIGHER_IS_BETTER
        if (model < bicubic) if higher else (model > bicubic):
            label = name.replace("_", " ") if name != "psnr" and name != "ssim" else name.upper()
            worse.append(f"{label} {model:.3f} {'<' if higher else '>'} bicubic {bicubic:.3f}")
    return worse
