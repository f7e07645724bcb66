"""A model scored on folders of photos instead of a made test set: degraded photos paired with their originals by
file name, or real low-quality photos with no reference at all.

Paired (``score_pair``): LQ is the degraded photo at any size, HQ the original it came from (the same picture, same
aspect ratio, usually larger). The faces are found and aligned on the LQ photo exactly as ``dfd restore`` finds them
(its ``Restorer``), restored by the model, and compared with the HQ face cut by the same alignment carried to the HQ
photo's pixels — so restored and truth are the same square of the face, pixel for pixel, and the model sees what it
would see in real use (its own detection on the LQ). The baseline ("bicubic") is the LQ face as aligned, which is
the LQ enlarged by cubic interpolation: what the identity model returns, as in the synthetic test set. Per photo the
face metrics are means over its faces; ``photo_psnr`` / ``photo_ssim`` compare the whole restored photograph
(pasted like ``dfd restore`` does, brought to the HQ size) with the HQ photo, beside the LQ photo resized bicubic.

No reference (``score_unpaired``): each real photo's faces are restored; per photo the NIQE of the restored faces
(``niqe``) and of the input faces (``bicubic_niqe``: the input face as aligned), and ``input_identity_distance``,
the dlib descriptor distance between each restored face and its input face (< 0.6: still the same person).

Rows are one per photo (``IMAGE_COLUMNS`` then metrics; None where not computed); a photo that cannot be scored (no
counterpart, unreadable, no face found, not the same picture) is a row with its ``reason``, never an error.
"""
from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from dfdcore.evaluation.metrics import LPIPS, IdentityEncoder, face_box, face_metrics, psnr_batch, ssim_batch, to_batch
from dfdcore.evaluation.niqe import NiqeModel, default_niqe_model, niqe_score
from dfdcore.evaluation.pairs import METRIC_COLUMNS
from dfdcore.face.align import align_face
from dfdcore.face.pipeline import TEMPLATE_BOX_512, AlignedFace, resize_face
from dfdcore.io.hashing import sha256_bytes
from dfdcore.io.images import DecodedImage, decode_image
from dfdcore.io.pixels import unit_to_uint8
from dfdcore.io.storage import Source, read_input
from dfdcore.restoration.restorer import Restorer

PHOTO_METRICS = ("photo_psnr", "photo_ssim")
PAIRED_METRICS = METRIC_COLUMNS + PHOTO_METRICS
NO_REFERENCE_METRICS = ("niqe", "input_identity_distance")
# Two sizes of one photo keep its aspect ratio up to rounding; more than this and LQ and HQ are different pictures.
MAX_ASPECT_CHANGE = 0.02
# Whole-photo SSIM holds about a dozen float64 planes of the HQ photo: above this size it is left out (None).
MAX_PHOTO_METRIC_PIXELS = 4_000_000
SAMPLE_FACES = 4  # faces kept per run for the sample grid


def _schema(names: Iterable[str], text: tuple[str, ...]) -> pa.Schema:
    return pa.schema([("image", pa.string()), *((n, pa.string()) for n in text), ("faces", pa.int32()),
                      ("reason", pa.string()), *((n, pa.float64()) for n in names)])


PAIRED_SCHEMA = _schema([*PAIRED_METRICS, *(f"bicubic_{n}" for n in PAIRED_METRICS)], ("lq", "hq"))
NO_REFERENCE_SCHEMA = _schema([*NO_REFERENCE_METRICS, "bicubic_niqe"], ())


@dataclass
class Scored:
    """One photo's row and up to ``SAMPLE_FACES`` (input face, restored face[, HQ face]) (S, S, 3) uint8 tuples;
    ``digest``: sha256 of the input file(s), for the run's test-set fingerprint."""

    row: dict
    samples: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    digest: str = ""


# --------------------------------------------------------------------------------------------- pairing


def stem_of(relpath: str) -> str:
    """"a/b.jpg" → "a/b": the name two folders' photos are paired by."""
    return posixpath.splitext(relpath)[0]


def match_pairs(lq: list[Source], hq: list[Source]) -> list[dict]:
    """LQ and HQ sources paired by relative path without extension, sorted by that name → dicts of ``image`` (the
    name), ``lq`` and ``hq`` (Source or None) and ``reason`` (None for a pair; why not, for a file left alone or
    a name two files of one folder share)."""
    sides = {"LQ": _by_stem(lq), "HQ": _by_stem(hq)}
    matches = []
    for stem in sorted(set(sides["LQ"]) | set(sides["HQ"])):
        found = {side: sides[side].get(stem, []) for side in sides}
        reason = None
        for side, other in (("LQ", "HQ"), ("HQ", "LQ")):
            if len(found[side]) > 1:
                reason = f"{side} folder holds {len(found[side])} files named {stem}.*: " + \
                         ", ".join(s.relpath for s in found[side])
            elif not found[other] and reason is None:
                reason = f"no {other} photo named {stem}.* (only {found[side][0].relpath} in the {side} folder)"
        matches.append({"image": stem, "lq": found["LQ"][0] if found["LQ"] else None,
                        "hq": found["HQ"][0] if found["HQ"] else None, "reason": reason})
    return matches


def _by_stem(sources: list[Source]) -> dict[str, list[Source]]:
    grouped: dict[str, list[Source]] = {}
    for source in sources:
        if source.skip is None:
            grouped.setdefault(stem_of(source.relpath), []).append(source)
    return grouped


# --------------------------------------------------------------------------------------------- geometry


def photo_scale(lq_size: tuple[int, int], hq_size: tuple[int, int]) -> tuple[float, float]:
    """(sx, sy) from LQ (width, height) to HQ (width, height); ValueError when the two are not one picture at two
    sizes (aspect ratios more than ``MAX_ASPECT_CHANGE`` apart)."""
    sx, sy = hq_size[0] / lq_size[0], hq_size[1] / lq_size[1]
    change = abs(sx - sy) / max(sx, sy)
    if change > MAX_ASPECT_CHANGE:
        raise ValueError(f"LQ {lq_size[0]}x{lq_size[1]} and HQ {hq_size[0]}x{hq_size[1]} are not one photo at two "
                         f"sizes: expected the same aspect ratio, got scales x{sx:.3f} wide and x{sy:.3f} high")
    return sx, sy


def to_hq_points(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """(N, 2) LQ pixel coordinates → HQ pixel coordinates; pixel centres as cv2.resize maps them
    (x → s·x + (s − 1)/2)."""
    factor = np.asarray(scale, np.float64)
    return (np.asarray(points, np.float64) + 0.5) * factor - 0.5


def hq_face(hq_rgb: np.ndarray, face: AlignedFace, scale: tuple[float, float]) -> np.ndarray:
    """The (S, S, 3) uint8 HQ face cut by ``face``'s alignment (found on the LQ photo) carried to the HQ photo:
    the same square of the face as ``face.image``, aligned as dfd aligns any photo's face."""
    crop, _ = align_face(hq_rgb, to_hq_points(face.points5, scale), face.image.shape[0])
    return crop


def template_box(face_size: int) -> tuple[int, int, int, int]:
    """Where the face lies on an aligned (S, S) crop: dfd's template box, in that crop's pixels."""
    return tuple(round(v * face_size / 512) for v in TEMPLATE_BOX_512)


# --------------------------------------------------------------------------------------------- one photo


def mean_of(rows: list[dict], names: Iterable[str], prefix: str = "") -> dict[str, float | None]:
    """``prefix + name`` → the mean of ``name`` over ``rows`` where it was computed, else None."""
    means = {}
    for name in names:
        values = [r[name] for r in rows if r.get(name) is not None]
        means[prefix + name] = float(np.mean(values)) if values else None
    return means


def face_rows(outputs: list[np.ndarray], targets: list[np.ndarray], encoder: IdentityEncoder,
              lpips: LPIPS | None, niqe: NiqeModel) -> list[dict]:
    """``face_metrics`` and the output's NIQE for each (S, S, 3) uint8 output against its target."""
    return [face_metrics(out, target, encoder=encoder, lpips=lpips) | {"niqe": niqe_score(out, niqe)}
            for out, target in zip(outputs, targets)]


def photo_metrics(photo: np.ndarray, hq: np.ndarray) -> dict[str, float | None]:
    """PSNR and SSIM of a whole (H, W, 3) uint8 photo against the HQ one of the same shape (None when the photo is
    larger than ``MAX_PHOTO_METRIC_PIXELS``)."""
    if hq.shape[0] * hq.shape[1] > MAX_PHOTO_METRIC_PIXELS:
        return dict.fromkeys(PHOTO_METRICS)
    a, b = to_batch(photo), to_batch(hq)
    return {"photo_psnr": float(psnr_batch(a, b)[0]), "photo_ssim": float(ssim_batch(a, b)[0])}


def restored_photo(restorer: Restorer, lq: DecodedImage, faces: list[AlignedFace], restored: list[np.ndarray],
                   hq_size: tuple[int, int]) -> np.ndarray:
    """The LQ photo restored as ``dfd restore`` makes it (faces pasted into the background upscaled by the nearest
    whole factor), resized to the HQ (width, height) → (H, W, 3) uint8."""
    factor = int(min(8, max(1, round(hq_size[0] / lq.size[0]))))
    scaled = Restorer(restorer.model, replace(restorer.options, upscale=factor), restorer.batch_size,
                      restorer.device)  # the same model, pasted at this photo's factor
    photo = unit_to_uint8(scaled.compose(lq, faces, restored).restored)
    if (photo.shape[1], photo.shape[0]) != tuple(hq_size):
        photo = resize_face(photo, hq_size[0], hq_size[1])
    return photo


def score_pair(restorer: Restorer, lq: DecodedImage, hq: DecodedImage, *, encoder: IdentityEncoder | None = None,
               lpips: LPIPS | None = None, niqe: NiqeModel | None = None) -> Scored:
    """One LQ photo restored and scored against its HQ original (module docstring) → its row (no names yet:
    ``faces``, ``reason`` and every metric of ``PAIRED_SCHEMA``) and its sample faces. ValueError when the two
    are not one picture at two sizes."""
    scale = photo_scale(lq.size, hq.size)
    encoder, niqe = encoder or IdentityEncoder(), niqe or default_niqe_model()
    faces = restorer.find_faces(lq)
    if not faces:
        return Scored(_empty_paired(0, "no face found in the LQ photo"))
    restored = restorer.restore_faces(faces)
    hq_rgb = np.array(hq.rgb8)  # a writable copy: torch warns on tensors over a decoded image's read-only pixels
    targets = [hq_face(hq_rgb, face, scale) for face in faces]
    inputs = [face.image for face in faces]
    photo = restored_photo(restorer, lq, faces, restored, hq.size)
    bicubic_photo = resize_face(lq.rgb8, hq.size[0], hq.size[1])
    row = {"faces": len(faces), "reason": None,
           **mean_of(face_rows(restored, targets, encoder, lpips, niqe), METRIC_COLUMNS),
           **photo_metrics(photo, hq_rgb),
           **mean_of(face_rows(inputs, targets, encoder, lpips, niqe), METRIC_COLUMNS, "bicubic_"),
           **{f"bicubic_{k}": v for k, v in photo_metrics(bicubic_photo, hq_rgb).items()}}
    return Scored(row, list(zip(inputs, restored, targets))[:SAMPLE_FACES])


def _empty_paired(faces: int, reason: str) -> dict:
    return {"faces": faces, "reason": reason} | dict.fromkeys(PAIRED_SCHEMA.names[5:])


def input_identity(restored: np.ndarray, face: np.ndarray, encoder: IdentityEncoder) -> float:
    """Descriptor distance of a restored (S, S, 3) face to its input face, both read in the box found on the input
    (the template's box when the degraded input hides its face from the detector)."""
    box = face_box(face, whole_image_fallback=False) or template_box(face.shape[0])
    return encoder.distance(restored, face, box)


def score_unpaired(restorer: Restorer, image: DecodedImage, *, encoder: IdentityEncoder | None = None,
                   niqe: NiqeModel | None = None) -> Scored:
    """One real photo restored with no reference (module docstring) → its row (``faces``, ``reason``, the
    metrics of ``NO_REFERENCE_SCHEMA``) and its (input, restored) sample faces."""
    encoder, niqe = encoder or IdentityEncoder(), niqe or default_niqe_model()
    faces = restorer.find_faces(image)
    if not faces:
        return Scored({"faces": 0, "reason": "no face found"} | dict.fromkeys(NO_REFERENCE_SCHEMA.names[3:]))
    restored = restorer.restore_faces(faces)
    rows = [{"niqe": niqe_score(out, niqe), "bicubic_niqe": niqe_score(face.image, niqe),
             "input_identity_distance": input_identity(out, face.image, encoder)}
            for out, face in zip(restored, faces)]
    row = {"faces": len(faces), "reason": None, **mean_of(rows, ("niqe", "bicubic_niqe", "input_identity_distance"))}
    return Scored(row, [(face.image, out) for face, out in zip(faces, restored)][:SAMPLE_FACES])


# --------------------------------------------------------------------------------------------- folders


def read_photo(source: Source) -> tuple[DecodedImage, str]:
    """A source's decoded image and the sha256 of its bytes (OSError / ImageDecodeError say why not)."""
    data = read_input(source.uri)
    return decode_image(data, name=source.relpath), sha256_bytes(data)


def score_pairs(restorer: Restorer, matches: list[dict], **metrics) -> Iterator[Scored]:
    """``score_pair`` over ``match_pairs``' matches, one Scored per match, in order: a match left alone, a file
    that cannot be read and a pair that cannot be scored become rows with their reason (``metrics``:
    ``score_pair``'s encoder, lpips, niqe)."""
    for match in matches:
        names = {"image": match["image"], "lq": _relpath(match["lq"]), "hq": _relpath(match["hq"])}
        if match["reason"]:
            yield Scored(names | _empty_paired(0, match["reason"]))
            continue
        try:
            (lq, lq_digest), (hq, hq_digest) = read_photo(match["lq"]), read_photo(match["hq"])
            scored = score_pair(restorer, lq, hq, **metrics)
        except Exception as exc:  # noqa: BLE001 - one bad pair is a row, the batch goes on
            yield Scored(names | _empty_paired(0, _why(exc)))
            continue
        yield replace(scored, row=names | scored.row, digest=sha256_bytes(f"{lq_digest}{hq_digest}".encode()))


def score_photos(restorer: Restorer, sources: list[Source], **metrics) -> Iterator[Scored]:
    """``score_unpaired`` over ``sources``, one Scored per source, in order; a file that cannot be read or scored
    is a row with its reason (``metrics``: ``score_unpaired``'s encoder, niqe)."""
    for source in sources:
        try:
            if source.skip:
                raise ValueError(source.skip)
            image, digest = read_photo(source)
            scored = score_unpaired(restorer, image, **metrics)
        except Exception as exc:  # noqa: BLE001 - one bad photo is a row, the batch goes on
            empty = dict.fromkeys(NO_REFERENCE_SCHEMA.names[3:])
            yield Scored({"image": source.relpath, "faces": 0, "reason": _why(exc)} | empty)
            continue
        yield replace(scored, row={"image": source.relpath} | scored.row, digest=digest)


def _relpath(source: Source | None) -> str | None:
    return source.relpath if source is not None else None


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def fingerprint(scored: list[Scored]) -> str:
    """sha256 of the scored files' names and contents, in order: runs on the same folders share it."""
    return sha256_bytes("\n".join(f"{s.row['image']}:{s.digest}" for s in scored).encode())
