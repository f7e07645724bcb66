"""Seams and colour shift of pasted-back faces (issue 27): --mask square|landmarks × --color-match none|mean-std|
low-freq, with the bundled model (dfd restore's default), on the team's group photos and portraits, degraded first.

    python bench/bench_seams.py --shared /work/shared/data/faces --out bench/results/seams.json \\
        --figure docs/images/seams-before-after.png

Each photo is degraded so that the 128-px model has something to restore: a portrait is first shrunk to 512 px
on its longer side (its face is then ~100-200 px, near the model's face size, instead of 400-900 px that a 128-px
face would only blur), then area-downscaled by 4 and bicubic-upscaled back; a group photo (faces of 30-60 px) keeps
its size and is downscaled by 2 only, or its faces would fall below the detector. Its faces are found and restored
once (dfd restore's defaults, upscale 2), and every combination pastes the same restored faces back
(``Restorer.compose``). Per face:

* seam: mean |∇L*| (Sobel, CIELAB lightness) of the output on the band where that face's own blend weight is in
  [0.4, 0.6], divided by the same of the input (bicubic-upscaled to the output size) on the same band: 1 means the
  paste-back added no gradient energy along its border beyond what the photo has there; a seam raises it. The
  input's own energy at the same pixels is the reference, so a band over hair and one over a cheek are comparable.
* ΔE00: mean CIEDE2000 (skimage) between the input (bicubic-upscaled) and the output over the skin: the hull of
  the jaw and brows landmarks without the eyes and the mouth (``blend.skin_region``), the same pixels for every
  combination. It includes the detail the model adds; "ΔE00 of means" compares only the region's mean colours.
* border step: mean CIEDE2000 between output and input, both blurred (σ = the face's side / 64), on the same
  band: the colour and lightness step the mask has to hide where the face meets the photo.
* seam vs photo: the same band's mean |∇L*| of the output divided by the input's mean |∇L*| over the whole photo
  (the photo's typical gradient energy): the brief's first suggestion, kept beside the seam ratio; it also counts
  what the band happens to cross (hair, a collar), so it compares masks less fairly.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COMBINATIONS = [(mask, colour) for mask in ("square", "landmarks") for colour in ("none", "mean-std", "low-freq")]
# Portraits that may be bundled (SOURCES.md: public domain), for the committed before/after figure.
FIGURE_FACES = ("obama.jpg", "biden.jpg", "astronaut.png")


PORTRAIT_SIDE = 512


def photos(shared: Path) -> list[tuple[str, Path, int]]:
    """(set, path, degradation factor) of every photo with faces: the portraits and the group photos."""
    found = [("portraits", p, 4) for p in sorted((shared / "portraits").iterdir()) if p.suffix in (".jpg", ".png")]
    found += [("groups", p, 2) for p in sorted((shared / "groups").iterdir())
              if p.suffix in (".jpg", ".png") and p.name != "dogs.jpg"]
    return found


def degrade(rgb: np.ndarray, factor: int, side: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 → shrunk to ``side`` px on its longer side (when given and smaller), then area-downscaled by
    ``factor`` and bicubic-upscaled back to that size."""
    if side is not None and max(rgb.shape[:2]) > side:
        shrink = side / max(rgb.shape[:2])
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * shrink), round(rgb.shape[0] * shrink)),
                         interpolation=cv2.INTER_AREA)
    height, width = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, width // factor), max(1, height // factor)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def face_metrics(face, restored_face, output: np.ndarray, reference: np.ndarray, scale: int, mask: str,
                 typical: float) -> dict:
    """``dfdcore.evaluation.seams.face_metrics`` and the band's energy against the photo's typical energy."""
    from dfdcore.evaluation.seams import face_metrics as metrics_of

    metrics = metrics_of(face, restored_face.shape[0], output, reference, scale, mask)
    return {} if metrics is None else {**metrics, "seam_vs_photo": metrics["band_energy"] / max(typical, 1e-6)}


def run(args) -> dict:
    import torch

    from dfdcore.evaluation.seams import lightness_gradient
    from dfdcore.io.images import decode_image
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions, Restorer, resolve_device

    torch.set_num_threads(args.threads)
    spec = ModelSpec().resolved()
    restorer = Restorer(spec.build(), RestoreOptions(upscale=args.upscale), batch_size=8,
                        device=resolve_device(spec.device))
    rows, crops = [], {}
    for subset, path, factor in photos(args.shared)[:args.limit]:
        started = time.perf_counter()
        original = decode_image(path.read_bytes(), name=path.name)
        degraded = degrade(original.rgb8, factor, PORTRAIT_SIDE if subset == "portraits" else None)
        image = decode_image(cv2.imencode(".png", degraded[..., ::-1])[1].tobytes(), name=path.name)
        faces = restorer.find_faces(image)
        restored = restorer.restore_faces(faces)
        reference = restorer.upscale_background(image.rgb, args.upscale, tile=256)
        outputs, typical = {}, float(lightness_gradient(reference).mean())  # the photo's typical |∇L*|
        for mask, colour in COMBINATIONS:
            restorer.options = dataclasses.replace(restorer.options, mask=mask, color_match=colour)
            outputs[mask, colour] = output = restorer.compose(image, faces, restored).restored
            for index, (face, restored_face) in enumerate(zip(faces, restored)):
                metrics = face_metrics(face, restored_face, output, reference, args.upscale, mask, typical)
                if metrics:
                    rows.append({"set": subset, "photo": path.name, "face": index, "mask": mask, "color_match": colour,
                                 **metrics})
        if path.name in FIGURE_FACES and faces:
            crops[path.name] = face_crops(faces[0], restored[0].shape[0], reference, outputs, args.upscale)
        print(f"{path.name}: {len(faces)} faces, {time.perf_counter() - started:.1f} s", flush=True)
    return {"rows": rows, "crops": crops}


def face_crops(face, size: int, reference: np.ndarray, outputs: dict, scale: int) -> list[np.ndarray]:
    """Square crops around a face's aligned square (enlarged 1.3×): input, square+none, the default, as uint8."""
    from dfdcore.face.blend import DEFAULT_MASK
    from dfdcore.face.colour import DEFAULT_COLOR_MATCH
    from dfdcore.face.paste import face_to_image_matrix

    matrix = face_to_image_matrix(face.matrix, scale)
    centre = matrix @ np.array([size / 2, size / 2, 1.0])
    half = int(0.65 * size * np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    x0, y0 = max(0, int(centre[0]) - half), max(0, int(centre[1]) - half)
    x1, y1 = min(reference.shape[1], int(centre[0]) + half), min(reference.shape[0], int(centre[1]) + half)
    pick = [reference, outputs["square", "none"], outputs[DEFAULT_MASK, DEFAULT_COLOR_MATCH]]
    return [np.rint(np.clip(p[y0:y1, x0:x1], 0, 1) * 255).astype(np.uint8) for p in pick]


def figure(crops: dict, path: Path, side: int = 320) -> None:
    """One PNG: a row per face, columns degraded input | square + none | the default."""
    from dfdcore.face.blend import DEFAULT_MASK
    from dfdcore.face.colour import DEFAULT_COLOR_MATCH

    titles = ["degraded input (bicubic x2)", "square mask, no colour match",
              f"{DEFAULT_MASK} mask, {DEFAULT_COLOR_MATCH} (default)"]
    header = np.full((36, side * 3, 3), 255, np.uint8)
    for column, title in enumerate(titles):
        cv2.putText(header, title, (column * side + 8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    rows = [header]
    for name in FIGURE_FACES:
        if name in crops:
            rows.append(np.concatenate([cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA)
                                        for c in crops[name]], axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(rows, axis=0)[..., ::-1])


def summarise(rows: list[dict]) -> list[dict]:
    """Per combination and set (and all faces): mean seam ratio, mean ΔE00, mean ΔE00 of means, and the share of
    faces whose seam and ΔE00 are below square + none's."""
    baseline = {(r["photo"], r["face"]): r for r in rows if r["mask"] == "square" and r["color_match"] == "none"}
    table = []
    for subset in ("portraits", "groups", "all"):
        for mask, colour in COMBINATIONS:
            mine = [r for r in rows if r["mask"] == mask and r["color_match"] == colour
                    and (subset == "all" or r["set"] == subset) and (r["photo"], r["face"]) in baseline]
            if not mine:
                continue
            base = [baseline[r["photo"], r["face"]] for r in mine]
            table.append({"set": subset, "mask": mask, "color_match": colour, "faces": len(mine),
                          "seam": float(np.mean([r["seam"] for r in mine])),
                          "seam_median": float(np.median([r["seam"] for r in mine])),
                          "seam_vs_photo": float(np.mean([r["seam_vs_photo"] for r in mine])),
                          "border_step": float(np.mean([r["border_step"] for r in mine])),
                          "delta_e00": float(np.mean([r["delta_e00"] for r in mine])),
                          "delta_e00_of_means": float(np.mean([r["delta_e00_of_means"] for r in mine])),
                          "seam_lower": float(np.mean([r["seam"] < b["seam"] for r, b in zip(mine, base)])),
                          "step_lower": float(np.mean([r["border_step"] < b["border_step"]
                                                       for r, b in zip(mine, base)])),
                          "delta_e_lower": float(np.mean([r["delta_e00"] < b["delta_e00"]
                                                          for r, b in zip(mine, base)]))})
    return table


def markdown(table: list[dict]) -> str:
    lines = ["| set | mask | colour match | faces | seam ratio (mean / median) | seam vs photo | border step ΔE00 | "
             "skin ΔE00 (mean) | skin ΔE00 of means | faces: seam / step / ΔE00 < square+none |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['set']} | {t['mask']} | {t['color_match']} | {t['faces']} | {t['seam']:.3f} / "
                     f"{t['seam_median']:.3f} | {t['seam_vs_photo']:.2f} | {t['border_step']:.2f} | "
                     f"{t['delta_e00']:.2f} | {t['delta_e00_of_means']:.2f} | "
                     f"{t['seam_lower']:.0%} / {t['step_lower']:.0%} / {t['delta_e_lower']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("/work/shared/data/faces"),
                        help="folder holding portraits/ and groups/ (SOURCES.md)")
    parser.add_argument("--upscale", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos (a quick look)")
    parser.add_argument("--out", type=Path, default=None, help="JSON with every face's numbers and the table")
    parser.add_argument("--figure", type=Path, default=None,
                        help="PNG of before/after crops of bundled (public-domain) portraits")
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(args)
    table = summarise(result["rows"])
    print(markdown(table))
    print(f"{time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rounded = [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in result["rows"]]
        args.out.write_text(json.dumps({"table": table, "rows": rounded}, separators=(",", ":")))
    if args.figure and result["crops"]:
        figure(result["crops"], args.figure)


if __name__ == "__main__":
    main()
