"""A deterministic synthetic bucket of N photographs made from the real faces of the team's data set, for scale runs.

    python bench/make_bucket.py --n 16000 --out scale/bucket-16000                 # a folder
    AWS_ENDPOINT_URL=http://127.0.0.1:5000 python bench/make_bucket.py --n 1000 --out s3://photos/b1k

Each photo: a procedural background (gradients, blurred noise, shapes), 0-6 real faces (cut from the photos of
``$DFD_SHARED/data/faces`` by dlib's HOG detector) re-posed by a random similarity transform (faces 40-600 px wide,
±25°, mirrored half the time) and pasted with a feathered ellipse, then recoloured (channel gains, gamma, a tenth
greyscale), blurred (half of them) and written as JPEG (quality 30-95) or PNG. A share of the files is bad on
purpose: truncated JPEGs, random bytes named .jpg, empty files and text files. Photo i depends only on (seed, i),
so the same N and seed give the same bytes whatever the number of processes. ``--truth`` writes one JSON line per
file: name, kind, size and the pasted face boxes (x1, y1, x2, y2 in output pixels, before blur).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

FACES = Path(os.environ.get("DFD_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / "faces"
FACE_COUNTS = np.array([0, 1, 2, 3, 4, 5, 6])
FACE_COUNT_WEIGHTS = np.array([0.10, 0.40, 0.20, 0.12, 0.08, 0.05, 0.05])
BAD_KINDS = ("truncated", "random_bytes", "empty", "text")


@cache
def face_pool() -> list[np.ndarray]:
    """Face crops (RGB uint8, the HOG box grown 1.6× and squared) from every photo under FACES, in a fixed order."""
    from dfdcore.face import detect_faces
    from dfdcore.io.images import read_rgb
    paths = sorted(p for p in FACES.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise SystemExit(f"no photos under {FACES}: set DFD_SHARED to the folder holding data/faces/")
    pool = []
    for path in paths:
        rgb = read_rgb(path)
        for face in detect_faces(rgb, upsample=1, detector="hog"):
            x1, y1, x2, y2 = face.box
            side = round(1.6 * max(x2 - x1, y2 - y1))
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            left, top = cx - side // 2, cy - side // 2
            if left < 0 or top < 0 or left + side > rgb.shape[1] or top + side > rgb.shape[0]:
                continue  # a face cut by its photo's border would paste a hard edge
            pool.append(np.ascontiguousarray(rgb[top:top + side, left:left + side]))
    return pool


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width, 3) float32 in [0, 1]: a two-colour gradient, low-frequency noise and a few shapes."""
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    t = (t - t.min()) / max(1e-6, float(np.ptp(t)))
    canvas = a + (b - a) * t[..., None]
    cells = rng.uniform(-0.25, 0.25, (max(2, height // 64), max(2, width // 64), 3)).astype(np.float32)
    canvas += cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(0, 6)):
        colour = tuple(float(v) for v in rng.uniform(0, 1, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        size = int(rng.integers(8, max(9, min(height, width) // 3)))
        if rng.random() < 0.5:
            cv2.circle(canvas, centre, size, colour, -1)
        else:
            cv2.rectangle(canvas, centre, (centre[0] + size, centre[1] + size // 2), colour, -1)
    return np.clip(canvas, 0, 1).astype(np.float32)


def paste_face(canvas: np.ndarray, face: np.ndarray, rng: np.random.Generator, width_px: float
               ) -> tuple[int, int, int, int]:
    """Paste ``face`` (a square crop whose face spans 1/1.6 of it) re-posed so the face is ``width_px`` wide, at a
    random place (up to a fifth outside the frame); returns the face's box in canvas pixels."""
    height, width = canvas.shape[:2]
    side = face.shape[0]
    scale = width_px * 1.6 / side
    angle = rng.uniform(-25, 25)
    if rng.random() < 0.5:
        face = face[:, ::-1]
    out_side = int(np.ceil(side * scale))
    cx = rng.uniform(-0.2 * out_side, width + 0.2 * out_side - out_side) + out_side / 2
    cy = rng.uniform(-0.2 * out_side, height + 0.2 * out_side - out_side) + out_side / 2
    matrix = cv2.getRotationMatrix2D((side / 2, side / 2), angle, scale)
    matrix[:, 2] += (cx - side / 2, cy - side / 2)
    warped = cv2.warpAffine(face.astype(np.float32) / 255, matrix, (width, height), flags=cv2.INTER_AREA
                            if scale < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    ellipse = np.zeros((side, side), np.float32)
    cv2.ellipse(ellipse, (side // 2, side // 2), (int(side * 0.36), int(side * 0.46)), 0, 0, 360, 1.0, -1)
    ellipse = cv2.GaussianBlur(ellipse, (0, 0), side * 0.05)
    mask = cv2.warpAffine(ellipse, matrix, (width, height))[..., None]
    canvas[:] = canvas * (1 - mask) + warped * mask
    half = width_px / 2
    return (round(cx - half), round(cy - half), round(cx + half), round(cy + half))


def degrade(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Recolour and maybe blur a float image; returns uint8 and whether it became greyscale."""
    gains = rng.uniform(0.8, 1.2, 3)
    rgb = np.clip(rgb * gains, 0, 1) ** rng.uniform(0.8, 1.25)
    if rng.random() < 0.5:
        rgb = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.3, 2.0))
    grey = rng.random() < 0.1
    out = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    if grey:
        out = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    return out, grey


def make_photo(seed: int, index: int, face_px: tuple[float, float], max_side: int, bad_share: float
               ) -> tuple[str, bytes, dict]:
    """Photo ``index`` of the bucket: (relative name, bytes, truth record)."""
    rng = np.random.default_rng([seed, index])
    folder = f"{index // 1000:04d}"
    if rng.random() < bad_share:
        kind = BAD_KINDS[int(rng.integers(0, len(BAD_KINDS)))]
        name = f"{folder}/file_{index:07d}." + ("txt" if kind == "text" else "jpg")
        if kind == "truncated":
            data = make_photo(seed + 1, index, face_px, max_side, 0.0)[1]
            data = data[: max(1, len(data) // 2)]
        elif kind == "random_bytes":
            data = rng.integers(0, 256, int(rng.integers(16, 4096)), dtype=np.uint8).tobytes()
        elif kind == "empty":
            data = b""
        else:
            data = b"not a photo\n" * int(rng.integers(1, 50))
        return name, data, {"name": name, "kind": kind, "bytes": len(data), "faces": []}
    count = int(rng.choice(FACE_COUNTS, p=FACE_COUNT_WEIGHTS))
    widths = np.exp(rng.uniform(np.log(face_px[0]), np.log(face_px[1]), count))
    long_side = int(max(rng.uniform(320, max_side), 1.3 * widths.max(initial=0) * 1.6))
    aspect = rng.uniform(0.56, 1.0)
    height, width = (long_side, round(long_side * aspect)) if rng.random() < 0.4 else (round(long_side * aspect),
                                                                                        long_side)
    canvas = background(rng, height, width)
    pool = face_pool()
    boxes = [paste_face(canvas, pool[int(rng.integers(0, len(pool)))], rng, float(w)) for w in widths]
    pixels, grey = degrade(canvas, rng)
    buffer = io.BytesIO()
    if rng.random() < 0.8:
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(rng.integers(30, 96)))
        ext = "jpg"
    else:
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        ext = "png"
    name = f"{folder}/img_{index:07d}.{ext}"
    data = buffer.getvalue()
    return name, data, {"name": name, "kind": "photo", "bytes": len(data), "size": [width, height],
                        "grey": grey, "faces": boxes}


def _write_range(args: tuple) -> list[dict]:
    from dfdcore.io.storage import join_uri, write_bytes_atomic
    out, seed, start, stop, face_px, max_side, bad_share = args
    records = []
    for index in range(start, stop):
        name, data, record = make_photo(seed, index, face_px, max_side, bad_share)
        write_bytes_atomic(join_uri(out, name), data)
        records.append(record)
    return records


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True, help="number of files")
    parser.add_argument("--out", required=True, help="folder or fsspec URL (s3://bucket/prefix)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--face-px", default="40,600", help="face widths, smallest and largest (log-uniform)")
    parser.add_argument("--max-side", type=int, default=1024, help="long side of photos without a large face")
    parser.add_argument("--bad-share", type=float, default=0.02, help="share of corrupt, empty and non-image files")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--truth", type=Path, help="write one JSON line per file here")
    args = parser.parse_args(argv)
    face_px = tuple(float(v) for v in args.face_px.split(","))
    face_pool()  # once here: workers fork with it
    started = time.perf_counter()
    step = 250
    jobs = [(args.out, args.seed, s, min(args.n, s + step), face_px, args.max_side, args.bad_share)
            for s in range(0, args.n, step)]
    records: list[dict] = []
    with ProcessPoolExecutor(args.workers) as pool:
        for done, part in enumerate(pool.map(_write_range, jobs), 1):
            records += part
            print(f"\r{min(args.n, done * step)}/{args.n} files", end="", flush=True)
    seconds = time.perf_counter() - started
    photos = [r for r in records if r["kind"] == "photo"]
    print(f"\n{args.n} files ({len(photos)} photos, {sum(len(r['faces']) for r in photos)} faces, "
          f"{args.n - len(photos)} bad) → {args.out}: {sum(r['bytes'] for r in records) / 1e6:.1f} MB in "
          f"{seconds:.0f} s")
    if args.truth:
        args.truth.write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    main()
