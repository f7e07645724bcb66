"""Restore a list of sources (any fsspec URLs) into an output root, with a manifest and resumable reruns.

Layout under OUT: ``restored_imgs/<relpath>``, optionally ``cropped_faces/`` and ``restored_faces/``
(``<relpath stem>_<face>.png``) and ``cmp/<relpath>.png`` (input | output), and ``manifest.parquet`` with one row
per input image. Each output is written atomically; the manifest is rewritten (atomically) every few images and at
the end, so a killed run loses at most those few rows and a rerun redoes only them.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath

import numpy as np

from .face.pipeline import to_photo_points
from .io.images import encode_image
from .io.storage import Source, join_uri, read_bytes, write_bytes_atomic
from .manifest import is_current, merge_rows, read_manifest, sha256_bytes, write_manifest
from .restore import (ImageResult, Restorer, decode_or_error, encode_result, model_identity, model_label,
                      output_name)
from .viz import side_by_side

MANIFEST_NAME = "manifest.parquet"
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's decompression-bomb limit


@dataclass
class BulkSummary:
    """What a run did; ``rows`` are its manifest rows (skipped images keep their old row)."""

    images: int = 0
    restored: int = 0
    no_face: int = 0
    skipped: int = 0
    failed: int = 0
    faces: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


def _face_record(face) -> dict:
    return {"det_box": [float(v) for v in face.detection.box], "det_score": float(face.detection.score),
            "lm5": [float(v) for v in face.points5.reshape(-1)],
            "lm68": [float(v) for v in to_photo_points(face.matrix, face.landmarks68).reshape(-1)]}


def restore_sources(sources: Sequence[Source], out: str, restorer: Restorer, *, force: bool = False,
                    save_faces: bool = False, cmp: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                    on_image: Callable[[], None] | None = None, flush_every: int = 16,
                    write_manifest_file: bool = True) -> BulkSummary:
    """Restore every source not already done with the same content and configuration (unless ``force``).

    With ``write_manifest_file=False`` the manifest is only read (to skip finished images) and the new rows are
    returned in the summary for the caller to merge — how parallel workers share one manifest.
    """
    started = time.perf_counter()
    manifest_uri = join_uri(out, MANIFEST_NAME)
    old_rows = read_manifest(manifest_uri)
    identity = model_identity(restorer.model)
    config_hash = restorer.options.config_hash(identity)
    summary = BulkSummary(images=len(sources))
    new_rows: list[dict] = []

    def row(source: Source, digest: str, status: str, error: str | None, **extra) -> dict:
        record = {"source_uri": source.uri, "relpath": source.relpath, "content_sha256": digest, "status": status,
                  "error": error, "n_faces": 0, "faces": [], "outputs": [], "model_id": _stable_json(identity),
                  "random_weights": bool(identity.get("random_weights", False)), "config_hash": config_hash,
                  "updated_at": datetime.now(timezone.utc)}
        record.update(extra)
        return record

    def finish(record: dict) -> None:
        new_rows.append(record)
        if record["status"] == "failed":
            summary.failed += 1
            summary.failures.append((record["source_uri"], record["error"]))
        if on_image:
            on_image()
        if write_manifest_file and len(new_rows) % flush_every == 0:
            write_manifest(manifest_uri, merge_rows(old_rows, new_rows))

    def decoded():
        for source in sources:
            t0 = time.perf_counter()
            try:
                data = read_bytes(source.uri)
            except Exception as exc:  # noqa: BLE001 - unreadable object: a row, not a crash
                finish(row(source, "", "failed", f"cannot read: {exc}"))
                continue
            digest = sha256_bytes(data)
            previous = old_rows.get(source.uri)
            if not force and previous is not None and is_current(previous, digest, config_hash):
                summary.skipped += 1
                if on_image:
                    on_image()
                continue
            image = decode_or_error(data, source.relpath, max_pixels)
            if isinstance(image, Exception):
                finish(row(source, digest, "failed", str(image)))
                continue
            yield (source, digest, image, time.perf_counter() - t0), image

    for (source, digest, image, decode_seconds), result in restorer.restore_images(decoded()):
        if isinstance(result, Exception):
            finish(row(source, digest, "failed", f"{type(result).__name__}: {result}"))
            continue
        try:
            outputs = _write_outputs(out, source, image, result, restorer, identity, save_faces, cmp)
        except Exception as exc:  # noqa: BLE001
            finish(row(source, digest, "failed", f"cannot write output: {exc}"))
            continue
        n_faces = len(result.faces)
        summary.faces += n_faces
        summary.restored += bool(n_faces)
        summary.no_face += not n_faces
        seconds = dict(result.seconds, decode=decode_seconds)
        finish(row(source, digest, "ok" if n_faces else "no_face", None if n_faces else "no face found",
                   n_faces=n_faces, faces=[_face_record(f) for f in result.faces], outputs=outputs,
                   seconds={k: float(seconds.get(k, 0.0)) for k in ("decode", "detect", "restore", "paste")}))

    if write_manifest_file:
        write_manifest(manifest_uri, merge_rows(old_rows, new_rows))
    summary.rows = new_rows
    summary.seconds = time.perf_counter() - started
    return summary


def _stable_json(value: dict) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def _write_outputs(out: str, source: Source, image, result: ImageResult, restorer: Restorer, identity: dict,
                   save_faces: bool, cmp: bool) -> list[str]:
    label = model_label(identity)
    text = {"dfd:model": _stable_json(identity), "dfd:label": str(label), "dfd:source": source.uri}
    name = output_name(source.relpath, image, restorer.options)
    outputs = [join_uri(out, f"restored_imgs/{name}")]
    write_bytes_atomic(outputs[0], encode_result(result, image, name, text))
    stem = str(PurePosixPath(source.relpath).with_suffix(""))
    if save_faces:
        for i, (face, restored) in enumerate(zip(result.faces, result.restored_faces)):
            for folder, pixels in (("cropped_faces", face.image), ("restored_faces", restored)):
                uri = join_uri(out, f"{folder}/{stem}_{i:02d}.png")
                write_bytes_atomic(uri, encode_image(pixels.astype(np.float32) / 255.0, ext="png", text=text))
                outputs.append(uri)
    if cmp:
        from .face.paste import upscale_image

        before = (np.clip(upscale_image(image.rgb, restorer.options.upscale), 0, 1) * 255).round().astype(np.uint8)
        after = (result.restored * 255).round().astype(np.uint8)
        pair = side_by_side([before, after], ["input", str(label) or "restored"])
        uri = join_uri(out, f"cmp/{stem}.png")
        write_bytes_atomic(uri, encode_image(pair.astype(np.float32) / 255.0, ext="png", text=text))
        outputs.append(uri)
    return outputs
