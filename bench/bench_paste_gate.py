"""How much of the model's change should a large face get? A probe for a sharpness gate on ``--paste correction``.

On large faces (the aligned square ~456 px against the model's 128) that are clean or only mildly degraded, the
bundled model's change costs PSNR against leaving the photo alone (bench/RESULTS.md, "Large faces are not
softened"); on heavily degraded ones it gains. This measures, per face, (a) how sharp the 128-px crop the model sees
is (mean |Laplacian| of its centre, and its difference from a σ = 1 blur of itself) and (b) the face-outline PSNR
against the clean photo when only a fraction g of the pasted change is kept (g = 0: the degraded photo itself;
g = 1: today's output), so that a gate g(sharpness) can be chosen from the numbers:

    python bench/bench_paste_gate.py real/photos/test/pd-faces --limit 24 --out bench/results/paste-gate.json

The degradations, faces and PSNR region are bench_paste_detail.py's. Not wired into dfd restore: a measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_paste_detail import DEGRADATIONS, degraded_photos, psnr, scored_faces  # noqa: E402

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def crop_sharpness(face_rgb: np.ndarray) -> tuple[float, float]:
    """(mean |Laplacian|, mean |crop − blur σ 1|) of the centre half of an aligned face, grey, 0–255."""
    pixels = face_rgb if face_rgb.dtype == np.uint8 else (np.clip(face_rgb, 0, 1) * 255).astype(np.uint8)
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).astype(np.float32)
    side = grey.shape[0]
    centre = grey[side // 4: 3 * side // 4, side // 4: 3 * side // 4]
    laplacian = float(np.abs(cv2.Laplacian(centre, cv2.CV_32F)).mean())
    detail = float(np.abs(centre - cv2.GaussianBlur(centre, (0, 0), 1.0)).mean())
    return laplacian, detail


def run(folder: Path, limit: int) -> list[dict]:
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions, Restorer, resolve_device

    spec = ModelSpec().resolved()
    restorer = Restorer(spec.build(), RestoreOptions(upscale=1, paste="correction"), batch_size=8,
                        device=resolve_device(spec.device))
    rows = []
    for path, kind, clean, degraded, image, faces in degraded_photos(restorer, folder, limit):
        restored = restorer.restore_faces(faces)
        output = np.rint(np.clip(restorer.compose(image, faces, restored).restored, 0, 1) * 255)
        change = output - degraded.astype(np.float64)
        for _, face, region, side in scored_faces(faces, clean.shape[:2]):
            laplacian, detail = crop_sharpness(face.image)
            scores = {f"g{g}": psnr(np.clip(degraded + g * change, 0, 255), clean, region) for g in FRACTIONS}
            rows.append({"photo": path.name, "degradation": kind, "face_px": side, "laplacian": laplacian,
                         "detail": detail, **scores})
        if kind == DEGRADATIONS[-1]:
            print(path.name, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| degradation | faces | crop sharpness: mean abs. Laplacian (mean ± sd) | " +
             " | ".join(f"g = {g} vs g = 0 (dB)" for g in FRACTIONS[1:]) + " |",
             "|---|---|---|" + "---|" * (len(FRACTIONS) - 1)]
    for kind in DEGRADATIONS:
        chosen = [row for row in rows if row["degradation"] == kind]
        if not chosen:
            continue
        sharpness = np.array([row["laplacian"] for row in chosen])
        gains = [np.mean([row[f"g{g}"] - row["g0.0"] for row in chosen]) for g in FRACTIONS[1:]]
        lines.append(f"| {kind} | {len(chosen)} | {sharpness.mean():.1f} ± {sharpness.std():.1f} | " +
                     " | ".join(f"{gain:+.2f}" for gain in gains) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="held-out portraits (e.g. the pd-faces test split)")
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = run(args.folder, args.limit)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows}, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
