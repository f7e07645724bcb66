"""Does restoring a large, mildly degraded face make the photo worse? ``--paste face`` against ``--paste correction``.

The bundled model works on 128-px faces. A portrait whose face spans 200-300 px is aligned down to 128 px,
restored, and warped back up: with ``--paste face`` the face keeps only 128 px worth of detail, so a sharp photo
comes back softer than it went in. ``--paste correction`` adds what the model changed (restored − the 128-px input
crop) to the photo instead, so the photo's finer detail stays. Held-out pd-faces portraits (people never trained
on), at their own size (faces ~150-300 px), each degraded at photo level with a fixed seed:

- ``clean``: JPEG quality 95 only;
- ``mild``: Gaussian blur σ 1.0, noise σ 2/255, JPEG 85;
- ``moderate``: area-downscaled ×3, bicubic back, noise σ 3/255, JPEG 75;
- ``heavy``: the same from ×6 (the face's aligned square then holds ~70 px of detail: the model's own ground);
- ``noisy`` (bench_paste_gate.py only): noise σ 6/255, JPEG 60, no blur.

Restored at ``--upscale 1`` with the default detector, mask and colour match; per face, PSNR (RGB, 0-255) against
the clean photo over the face's landmark outline (jaw and brows, the region the paste changes), for the input
itself, ``face`` and ``correction`` with all of the model's change (``--strength 1``), and ``correction`` with the
default ``--strength auto`` (dfdcore/face/strength.py).

    python bench/bench_paste_detail.py HELD_OUT_FOLDER [--limit 40] [--out bench/results/paste-detail.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEGRADATIONS = ("clean", "mild", "moderate", "heavy")
COLUMN = {"face": "--paste face", "correction": "--paste correction --strength 1",
          "auto": "--paste correction --strength auto (default)"}
EXTENSIONS = (".jpg", ".jpeg", ".png")


def degrade(rgb8: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 → the same size, degraded as the module docstring says."""
    image = rgb8.astype(np.float32) / 255.0
    quality = {"clean": 95, "mild": 85, "moderate": 75, "heavy": 75, "noisy": 60}[kind]
    if kind == "noisy":  # bench_paste_gate.py's fifth: sensor noise and strong JPEG on a sharp photo
        image = image + rng.normal(0, 6 / 255, image.shape).astype(np.float32)
    elif kind == "mild":
        image = cv2.GaussianBlur(image, (0, 0), 1.0)
        image = image + rng.normal(0, 2 / 255, image.shape).astype(np.float32)
    elif kind in ("moderate", "heavy"):
        h, w = image.shape[:2]
        factor = 3 if kind == "moderate" else 6
        small = cv2.resize(image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        image = image + rng.normal(0, 3 / 255, image.shape).astype(np.float32)
    pixels = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", pixels[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].copy()


def face_region(face, image_size: tuple[int, int], upscale: int = 1) -> np.ndarray:
    """(H, W) bool: the face's landmark outline (``blend.landmark_mask`` > 0.5) in the pixels of the photo
    restored at ``upscale``."""
    from dfdcore.face.blend import landmark_mask
    from dfdcore.face.paste import face_to_image_matrix

    size = face.image.shape[0]
    outline = landmark_mask(face.landmarks68, size)
    warped = cv2.warpAffine(outline.astype(np.float32), face_to_image_matrix(face.matrix, upscale),
                            (image_size[1], image_size[0]), flags=cv2.INTER_LINEAR, borderValue=0)
    return warped > 0.5


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    diff = (a.astype(np.float64) - b.astype(np.float64))[region]
    return float(10 * np.log10(255.0 ** 2 / max(np.mean(diff ** 2), 1e-10)))


def degraded_photos(restorer, folder: Path, limit: int, kinds=DEGRADATIONS, scale: float = 1.0, shuffle=None,
                    upscale: int = 1):
    """Each of the first ``limit`` photos under ``folder`` (in name order, or shuffled with seed ``shuffle``),
    resized by ``scale`` (the clean photo), area-downscaled by ``upscale`` and degraded by each of ``kinds`` (seeded
    per photo) → (path, kind, clean rgb8, degraded rgb8, decoded degraded image, its faces); photos without a face
    under a degradation are passed over."""
    import random

    from dfdcore.io.images import decode_image

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)
    if shuffle is not None:
        random.Random(shuffle).shuffle(paths)
    for index, path in enumerate(paths[:limit]):
        clean = decode_image(path.read_bytes(), name=path.name).rgb8
        if scale != 1.0:
            clean = cv2.resize(clean, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        height, width = clean.shape[0] // upscale * upscale, clean.shape[1] // upscale * upscale
        clean = clean[:height, :width]
        small = cv2.resize(clean, (width // upscale, height // upscale), interpolation=cv2.INTER_AREA)
        for kind in kinds:
            degraded = degrade(small if upscale > 1 else clean, kind, np.random.default_rng(1234 + index))
            image = decode_image(cv2.imencode(".png", degraded[..., ::-1])[1].tobytes(), name=path.name)
            faces = restorer.find_faces(image)
            if faces:
                yield path, kind, clean, degraded, image, faces


def scored_faces(faces, image_size: tuple[int, int], upscale: int = 1):
    """(number, face, its outline region in the photo restored at ``upscale`` (of ``image_size``), its aligned
    square's side in input px) of each face whose outline covers at least 100 pixels."""
    for number, face in enumerate(faces):
        region = face_region(face, image_size, upscale)
        if region.sum() < 100:
            continue
        # the aligned square's side in the photo (face.matrix maps photo → face: its scale is S / side)
        side = float(face.image.shape[0] / np.sqrt(abs(np.linalg.det(face.matrix[:, :2]))))
        yield number, face, region, side


def run(folder: Path, limit: int, threads: int) -> list[dict]:
    import torch

    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions, Restorer, resolve_device

    torch.set_num_threads(threads)
    spec = ModelSpec().resolved()
    restorer = Restorer(spec.build(), RestoreOptions(upscale=1), batch_size=8, device=resolve_device(spec.device))
    rows = []
    started = time.perf_counter()
    for path, kind, clean, degraded, image, faces in degraded_photos(restorer, folder, limit):
        restored = restorer.restore_faces(faces)
        outputs = {}
        for name, mode, strength in (("face", "face", 1.0), ("correction", "correction", 1.0),
                                     ("auto", "correction", "auto")):
            restorer.options = dataclasses.replace(restorer.options, paste=mode, strength=strength)
            result = restorer.compose(image, faces, restored).restored
            outputs[name] = np.rint(np.clip(result, 0, 1) * 255).astype(np.uint8)
        for number, face, region, side in scored_faces(faces, clean.shape[:2]):
            rows.append({"photo": path.name, "face": number, "degradation": kind, "face_px": side,
                         "input": psnr(degraded, clean, region),
                         **{mode: psnr(out, clean, region) for mode, out in outputs.items()}})
        if kind == DEGRADATIONS[-1]:
            print(f"{path.name}: {time.perf_counter() - started:.1f} s", flush=True)
            started = time.perf_counter()
    return rows


def table(rows: list[dict]) -> str:
    modes = [m for m in ("face", "correction", "auto") if all(m in r for r in rows)]  # older runs lack "auto"
    lines = ["| degradation | faces | aligned square's side (px, median) | input PSNR | " +
             " | ".join(COLUMN[m] for m in modes) + " | faces worse than input: " + " / ".join(modes) + " |",
             "|---|---|---|---|" + "---|" * len(modes) + "---|"]
    for kind in DEGRADATIONS:
        chosen = [r for r in rows if r["degradation"] == kind]
        if not chosen:
            continue
        mean = {key: float(np.mean([r[key] for r in chosen])) for key in ("input", *modes)}
        worse = [str(sum(r[m] < r["input"] for r in chosen)) for m in modes]
        lines.append(f"| {kind} | {len(chosen)} | {np.median([r['face_px'] for r in chosen]):.0f} | "
                     f"{mean['input']:.2f} | " + " | ".join(f"{mean[m]:.2f}" for m in modes) +
                     f" | {' / '.join(worse)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="held-out portraits (e.g. the pd-faces test split)")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = run(args.folder, args.limit, args.threads)
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
