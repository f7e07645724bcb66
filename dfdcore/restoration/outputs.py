"""What a bulk run writes for one image, and the check that the output takes writes at all."""
from __future__ import annotations

import time
from pathlib import PurePosixPath

from dfdcore.face.pipeline import to_photo_points
from dfdcore.io.atomic import remove_stale_parts
from dfdcore.io.hashing import stable_json
from dfdcore.io.images import encode_image
from dfdcore.io.pixels import uint8_to_unit, unit_to_uint8
from dfdcore.io.storage import Source, filesystem_for, is_local, join_uri, write_bytes_atomic
from dfdcore.restoration.manifest import printable
from dfdcore.restoration.restorer import ImageResult, Restorer, encode_result, model_label, output_name
from dfdcore.viz import side_by_side


class OutputStorageError(OSError):
    """The output cannot be written (full, read-only, no permission): the run stops, saying so."""


def check_writable(out: str) -> None:
    """Fail before any work when ``out`` cannot be written; tidy up ``.part`` files a killed run left there."""
    probe = join_uri(out, f".dfd-write-probe-{time.time_ns()}")
    try:
        write_bytes_atomic(probe, b"")
        fs, path = filesystem_for(probe)
        fs.rm_file(path)
    except OSError as exc:
        raise OutputStorageError(exc.errno, f"cannot write to the output {out}: {exc.strerror or exc}") from exc
    if is_local(out):
        remove_stale_parts(out)


def face_record(face, strength: float | None = None) -> dict:
    return {"det_box": [float(v) for v in face.detection.box], "det_score": float(face.detection.score),
            "lm5": [float(v) for v in face.points5.reshape(-1)],
            "lm68": [float(v) for v in to_photo_points(face.matrix, face.landmarks68).reshape(-1)],
            "strength": None if strength is None else float(strength)}


def face_records(result: ImageResult) -> list[dict]:
    """The manifest's record of each face of ``result``, with the strength it was pasted at."""
    return [face_record(face, strength) for face, strength in zip(result.faces, result.strengths, strict=True)]


def write_outputs(out: str, source: Source, image, result: ImageResult, restorer: Restorer, identity: dict,
                   save_faces: bool, cmp: bool) -> list[str]:
    label = model_label(identity)
    text = {"dfd:model": stable_json(identity), "dfd:label": str(label), "dfd:source": printable(source.uri)}
    stem = source.stem or str(PurePosixPath(source.relpath).with_suffix(""))
    name = output_name(stem, image, restorer.options)
    outputs = [join_uri(out, f"restored_imgs/{name}")]
    write_bytes_atomic(outputs[0], encode_result(result, image, name, text))
    if save_faces:
        for i, (face, restored) in enumerate(zip(result.faces, result.restored_faces)):
            for folder, pixels in (("cropped_faces", face.image), ("restored_faces", restored)):
                uri = join_uri(out, f"{folder}/{stem}_{i:02d}.png")
                write_bytes_atomic(uri, encode_image(uint8_to_unit(pixels), ext="png", text=text))
                outputs.append(uri)
    if cmp:
        from dfdcore.face.paste import upscale_image

        before = unit_to_uint8(upscale_image(image.rgb, restorer.options.upscale))
        after = unit_to_uint8(result.restored)
        pair = side_by_side([before, after], ["input", str(label) or "restored"])
        uri = join_uri(out, f"cmp/{stem}.png")
        write_bytes_atomic(uri, encode_image(uint8_to_unit(pair), ext="png", text=text))
        outputs.append(uri)
    return outputs
