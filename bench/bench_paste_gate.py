"""How much of the model's change should a pasted face keep? Calibrates and checks ``--strength auto``.

On clean, mildly degraded or noisy photos the bundled model's change costs PSNR against leaving the photo alone
(the model sharpens a little at its own 128 px whatever it is given); on faces blurred at the model's scale it
gains. Per face this measures (a) how sharp the 128-px crop the model sees is — ``strength.detail_ratio`` (fine band
over the band below it) and, for comparison, the mean |Laplacian| of its centre — and (b) the face-outline PSNR
against the clean photo when only a fraction g of the pasted change is kept (g = 0: the degraded photo itself;
g = 1: all of the change), and what ``auto`` gives. ``--fit`` grid-searches ``SHARP``/``RAMP`` of
``clip((SHARP − ratio) / RAMP, 0, 1)`` on the rows: the largest summed gain with no condition's mean (a rows file ×
a degradation) more than 0.01 dB below the photo left alone. Calibrate on training portraits, check on held-out ones:

    python bench/bench_paste_gate.py real/photos/train/pd-faces --limit 60 --shuffle 7 --fit \\
        --out bench/results/paste-gate-train.json                       # and --scale 0.5 for faces near 128 px
    python bench/bench_paste_gate.py real/photos/test/pd-faces --limit 60 --shuffle 11 \\
        --out bench/results/paste-gate.json

The degradations (clean, mild, moderate, heavy, noisy), faces and PSNR region are bench_paste_detail.py's.
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

KINDS = (*DEGRADATIONS, "noisy")
FRACTIONS = tuple(np.linspace(0.0, 1.0, 9))


def laplacian(face_rgb: np.ndarray) -> float:
    """Mean |Laplacian| of the grey centre half of an aligned face, 0-255."""
    grey = cv2.cvtColor(face_rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    side = grey.shape[0]
    return float(np.abs(cv2.Laplacian(grey[side // 4: 3 * side // 4, side // 4: 3 * side // 4], cv2.CV_32F)).mean())


def run(folder: Path, limit: int, scale: float, shuffle: int | None, upscale: int = 1) -> list[dict]:
    from dfdcore.face.strength import detail_ratio
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions, Restorer, resolve_device

    spec = ModelSpec().resolved()
    restorer = Restorer(spec.build(), RestoreOptions(upscale=upscale, paste="correction", strength=1.0),
                        batch_size=8, device=resolve_device(spec.device))
    rows = []
    for path, kind, clean, _, image, faces in degraded_photos(restorer, folder, limit, KINDS, scale, shuffle, upscale):
        restored = restorer.restore_faces(faces)
        output = np.rint(np.clip(restorer.compose(image, faces, restored).restored, 0, 1) * 255)
        # strength 0 gives the upscaled photo itself (the face is not pasted): the change is measured from it
        base = np.rint(np.clip(restorer.upscale_background(image.rgb, upscale, tile=256), 0, 1) * 255)
        change = output - base
        for _, face, region, side in scored_faces(faces, clean.shape[:2], upscale):
            # the change of one face only reaches its own outline (faces of one photo do not overlap there)
            scores = [psnr(np.clip(base + g * change, 0, 255), clean, region) for g in FRACTIONS]
            rows.append({"photo": path.name, "degradation": kind, "face_px": side, "upscale": upscale,
                         "laplacian": laplacian(face.image), "ratio": detail_ratio(face.image), "psnr": scores})
        if kind == KINDS[-1]:
            print(path.name, flush=True)
    return rows


def gained(row: dict, strength: float) -> float:
    """Face PSNR (dB) with ``strength`` of the change kept, against the photo left alone (interpolated in g)."""
    return float(np.interp(strength, FRACTIONS, row["psnr"]) - row["psnr"][0])


def fit(rows: list[dict], feature: str, sharps, ramps) -> tuple[float, float]:
    """(SHARP, RAMP) with the largest summed mean gain over the conditions (a rows file × a degradation), none of
    them below −0.01 dB."""
    from dfdcore.face.strength import gate

    conditions = sorted({(row.get("set", ""), row["degradation"]) for row in rows})
    groups = [[row for row in rows if (row.get("set", ""), row["degradation"]) == key] for key in conditions]
    best, chosen = -np.inf, (np.nan, np.nan)
    for sharp in sharps:
        for ramp in ramps:
            means = [np.mean([gained(r, g) for r, g in zip(group, gate([r[feature] for r in group], sharp, ramp))])
                     for group in groups]
            if min(means) >= -0.01 and sum(means) > best:
                best, chosen = sum(means), (float(sharp), float(ramp))
    return chosen


def table(rows: list[dict]) -> str:
    """Per degradation: what all of the change and what ``auto`` (today's SHARP, RAMP; the stored ratio) give."""
    from dfdcore.face.strength import gate

    lines = ["| degradation | faces | side (px, median) | detail ratio (mean ± sd) | strength 1 vs input (dB) | "
             "auto vs input (dB) | auto strength (mean) | best fixed g | faces worse by > 0.05 dB: strength 1 / auto |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        chosen = [row for row in rows if row["degradation"] == kind]
        if not chosen:
            continue
        ratio = np.array([row["ratio"] for row in chosen])
        full = np.array([gained(row, 1.0) for row in chosen])
        strengths = gate(ratio)
        auto = np.array([gained(row, strength) for row, strength in zip(chosen, strengths)])
        curve = np.mean([np.array(row["psnr"]) - row["psnr"][0] for row in chosen], axis=0)
        lines.append(f"| {kind} | {len(chosen)} | {np.median([row['face_px'] for row in chosen]):.0f} | "
                     f"{ratio.mean():.2f} ± {ratio.std():.2f} | {full.mean():+.3f} | {auto.mean():+.3f} | "
                     f"{strengths.mean():.2f} | {FRACTIONS[int(np.argmax(curve))]:.2f} "
                     f"({curve.max():+.3f}) | {(full < -0.05).sum()} / {(auto < -0.05).sum()} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", help="portraits (train split to fit, test split to check)")
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--scale", type=float, default=1.0, help="resize each photo first (0.5: faces near 128 px)")
    parser.add_argument("--shuffle", type=int, default=None, help="take --limit photos at random with this seed")
    parser.add_argument("--upscale", type=int, default=1,
                        help="restore at this --upscale: each photo (the reference) is area-downscaled by it first")
    parser.add_argument("--fit", action="store_true", help="grid-search the gate on these rows and print it")
    parser.add_argument("--rows", type=Path, nargs="*", help="read rows from earlier --out files instead of running")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.rows:
        rows = [{**row, "set": path.stem} for path in args.rows for row in json.loads(path.read_text())["rows"]]
    else:
        rows = run(args.folder, args.limit, args.scale, args.shuffle, args.upscale)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows}, indent=1))
    print(table(rows))
    if args.fit:
        for feature, sharps, ramps in (("ratio", np.arange(0.6, 1.3, 0.02), np.arange(0.05, 0.6, 0.025)),
                                       ("laplacian", np.arange(5, 25, 0.5), np.arange(1, 15, 0.5))):
            sharp, ramp = fit(rows, feature, sharps, ramps)
            print(f"{feature}: SHARP = {sharp:.3f}, RAMP = {ramp:.3f}")


if __name__ == "__main__":
    main()
