"""A face collection as tables a person can open: ``images.parquet`` (one row per file) and ``faces.parquet`` (one
row per detected face, landmarks in photo pixels, pose and expression). Failures are rows with a reason."""
from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dfdcore.face import align_faces
from dfdcore.face.pipeline import to_photo_points
from dfdcore.face.pose import EXPRESSION_NAMES, expressions, head_poses
from dfdcore.io.hashing import sha256_bytes
from dfdcore.io.images import ImageDecodeError, decode_image
from dfdcore.io.storage import Source, read_bytes

IMAGES_SCHEMA = pa.schema([
    ("image_id", pa.string()),      # sha256 of the file's bytes ("" when unreadable)
    ("uri", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("format", pa.string()),
    ("status", pa.string()),        # ok | failed
    ("error", pa.string()),
])
EXPRESSION_COLUMNS = EXPRESSION_NAMES
FACES_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("uri", pa.string()),
    ("face_index", pa.int32()),
    ("det_box", pa.list_(pa.float32())),    # 4: x1, y1, x2, y2
    ("det_score", pa.float32()),
    ("lm5", pa.list_(pa.float32())),        # 5 × (x, y), photo pixels
    ("lm68", pa.list_(pa.float32())),       # 68 × (x, y), photo pixels
    ("yaw", pa.float32()), ("pitch", pa.float32()), ("roll", pa.float32()),
    *[(name, pa.float32()) for name in EXPRESSION_COLUMNS],
    ("status", pa.string()),                # ok | failed | no_face
    ("error", pa.string()),
])


def read_arrow(uri: str) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(uri)))


def read_table(uri: str) -> list[dict]:
    return read_arrow(uri).to_pylist()


def scan_image(source: Source, max_pixels: int = 178_956_970) -> dict:
    """One ``images.parquet`` row: hash and probe (a full decode, so truncated files are caught here)."""
    row = {"image_id": "", "uri": source.uri, "width": None, "height": None, "format": None, "status": "ok",
           "error": None}
    try:
        data = read_bytes(source.uri)
        row["image_id"] = sha256_bytes(data)
        image = decode_image(data, name=source.uri, max_pixels=max_pixels)
    except (ImageDecodeError, OSError) as exc:
        return row | {"status": "failed", "error": str(exc)}
    return row | {"width": image.size[0], "height": image.size[1], "format": image.format}


def detect_image_faces(image_row: dict, upsample: int = 1, min_score: float = 0.2) -> list[dict]:
    """``faces.parquet`` rows for one scanned image (one ``no_face``/``failed`` row when nothing usable)."""
    base = {"image_id": image_row["image_id"], "uri": image_row["uri"]}
    empty = {"face_index": -1, "det_box": None, "det_score": None, "lm5": None, "lm68": None, "yaw": None,
             "pitch": None, "roll": None, **{name: None for name in EXPRESSION_COLUMNS}}
    try:
        image = decode_image(read_bytes(image_row["uri"]), name=image_row["uri"])
        faces = align_faces(image.rgb8, face_size=512, upsample=upsample, min_score=min_score)
    except Exception as exc:  # noqa: BLE001 - a row with the reason
        return [base | empty | {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}]
    if not faces:
        return [base | empty | {"status": "no_face", "error": "no face found"}]
    lm68 = np.stack([to_photo_points(f.matrix, f.landmarks68) for f in faces])
    poses = head_poses(lm68, np.array([image.size] * len(faces)))
    expression = expressions(lm68)
    rows = []
    for i, face in enumerate(faces):
        rows.append(base | {
            "face_index": i, "det_box": [float(v) for v in face.detection.box], "det_score": face.detection.score,
            "lm5": face.points5.reshape(-1).tolist(), "lm68": lm68[i].reshape(-1).tolist(),
            "yaw": float(poses[i, 0]), "pitch": float(poses[i, 1]), "roll": float(poses[i, 2]),
            **{name: float(expression[i, j]) for j, name in enumerate(EXPRESSION_COLUMNS)},
            "status": "ok", "error": None})
    return rows


def ok_rows(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "ok"]
