"""Face detectors compared on the real photos of shared/data/faces: dlib HOG (one upsampling step), dlib CNN and
OpenCV's YuNet, and YuNet + HOG combined (dfd's default). Recall and precision at IoU >= 0.4 against the boxes of dlib's landmark XML files, the smallest
annotated face found, time per megapixel, and the 68-point landmark error (dlib's shape predictor seeded with each
detector's box, against the XML's 68 points, normalised by the outer-eye-corner distance).

    python bench/bench_detectors.py --out bench/results/detectors.json

Photo sets: "groups" = the PASCAL VOC photos the XML files annotate; "groups x0.6" = the same photos resized to 0.6
(boxes and points scaled), the small-face case (faces of 17-50 px); "other" = the remaining photos of groups/ and
portraits/, which have no boxes: there the detections are compared with the number of people in the photo.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfdcore.face.detect import pair_boxes

FACES = Path(os.environ.get("DFD_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / "faces"
IOU = 0.4
# People in the photos without boxes (shared/data/faces/SOURCES.md; dogs.jpg shows dogs only), checked by eye.
PEOPLE = {"Tom_Cruise_avp_2014_4.jpg": 1, "bald_guys.jpg": 24, "dogs.jpg": 0, "landmarks_5.jpg": 2, "test.jpg": 1,
          "test2.jpg": 1, "32bit.png": 1, "astronaut.png": 1, "biden.jpg": 1, "grace_hopper.jpg": 1, "obama.jpg": 1,
          "obama2.jpg": 1, "obama3.jpg": 1, "obama_partial_face.jpg": 1, "obama_partial_face2.jpg": 1}


@dataclass(frozen=True)
class Truth:
    """One annotated face: ``box`` x1, y1, x2, y2 in pixels, ``points`` (68, 2) float64 or None."""

    box: tuple[float, float, float, float]
    points: np.ndarray | None


def read_truth(xml_path: Path) -> dict[str, list[Truth]]:
    """dlib's imglab XML → {image file name: its annotated faces}; boxes marked ignore='1' are left out."""
    truth: dict[str, list[Truth]] = {}
    for image in ET.parse(xml_path).getroot().iter("image"):
        faces = truth.setdefault(Path(image.get("file")).name, [])
        for box in image.iter("box"):
            if box.get("ignore") == "1":
                continue
            left, top, width, height = (float(box.get(k)) for k in ("left", "top", "width", "height"))
            parts = sorted(box.iter("part"), key=lambda p: int(p.get("name")))
            points = np.array([(float(p.get("x")), float(p.get("y"))) for p in parts]) if len(parts) == 68 else None
            faces.append(Truth((left, top, left + width, top + height), points))
    return truth


def landmark_error(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Mean point distance of two (68, 2) arrays over the reference's outer-eye-corner distance (points 36, 45)."""
    return float(np.linalg.norm(predicted - reference, axis=1).mean() / np.linalg.norm(reference[36] - reference[45]))


def scaled(rgb: np.ndarray, faces: list[Truth], factor: float) -> tuple[np.ndarray, list[Truth]]:
    import cv2
    small = cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    return small, [Truth(tuple(v * factor for v in t.box), None if t.points is None else t.points * factor)
                   for t in faces]


def photo_sets(scale: float) -> dict[str, list[tuple[str, np.ndarray, list[Truth] | None]]]:
    from dfdcore.io.images import read_rgb
    truth: dict[str, list[Truth]] = {}
    for xml in sorted((FACES / "groups").glob("*.xml")):
        truth.update(read_truth(xml))
    groups = [(name, read_rgb(FACES / "groups" / name), faces) for name, faces in sorted(truth.items())]
    small = [(name, *scaled(rgb, faces, scale)) for name, rgb, faces in groups]
    other = [(name, read_rgb(path), None) for path in sorted((FACES / "groups").glob("*.jpg"))
             + sorted((FACES / "portraits").iterdir()) if (name := path.name) not in truth]
    return {"groups": groups, f"groups x{scale:g}": small, "other": other}


def run_detector(detector: str, rgb: np.ndarray, min_score: float | None):
    from dfdcore.face import detect_faces
    start = time.perf_counter()
    faces = detect_faces(rgb, upsample=1, min_score=min_score, detector=detector)
    return faces, time.perf_counter() - start


def evaluate(detector: str, photos, min_score: float | None, max_megapixels: float | None) -> dict:
    """One detector over one photo set → counts, timings and landmark errors (per photo and summed)."""
    from dfdcore.face import landmarks
    rows, seconds, pixels, errors, found_sizes = [], 0.0, 0, [], []
    tp = fp = fn = 0
    for name, rgb, truth in photos:
        if max_megapixels is not None and rgb.shape[0] * rgb.shape[1] / 1e6 > max_megapixels:
            continue
        faces, dt = run_detector(detector, rgb, min_score)
        seconds += dt
        pixels += rgb.shape[0] * rgb.shape[1]
        row = {"photo": name, "size": [rgb.shape[1], rgb.shape[0]], "detections": len(faces), "seconds": dt,
               "scores": [round(f.score, 3) for f in faces]}
        if truth is None:
            row["people"] = PEOPLE.get(name)
        else:
            pairs = pair_boxes([t.box for t in truth], [f.box for f in faces], IOU)
            row.update(truth=len(truth), found=len(pairs), false=len(faces) - len(pairs))
            tp, fp, fn = tp + len(pairs), fp + len(faces) - len(pairs), fn + len(truth) - len(pairs)
            for i, j in pairs:
                found_sizes.append(truth[i].box[2] - truth[i].box[0])
                if truth[i].points is not None:
                    errors.append(landmark_error(landmarks(rgb, faces[j].box), truth[i].points))
                    row.setdefault("errors", {})[str(i)] = errors[-1]
            row["missed_widths"] = sorted(round(truth[i].box[2] - truth[i].box[0]) for i in
                                          set(range(len(truth))) - {i for i, _ in pairs})
        rows.append(row)
    summary = {"photos": len(rows), "megapixels": pixels / 1e6, "seconds": seconds,
               "seconds_per_megapixel": seconds / (pixels / 1e6) if pixels else None}
    if any("truth" in r for r in rows):
        summary.update(truth=tp + fn, found=tp, false=fp, recall=tp / (tp + fn) if tp + fn else None,
                       precision=tp / (tp + fp) if tp + fp else None,
                       smallest_found=min(found_sizes, default=None),
                       landmark_error_mean=float(np.mean(errors)) if errors else None,
                       landmark_error_median=float(np.median(errors)) if errors else None)
    else:
        people = sum(r["people"] for r in rows)
        summary.update(people=people, detections=sum(r["detections"] for r in rows),
                       extra=sum(max(0, r["detections"] - r["people"]) for r in rows),
                       short=sum(max(0, r["people"] - r["detections"]) for r in rows))
    return {"summary": summary, "photos": rows}


def score_sweep(photos_by_set, thresholds) -> list[dict]:
    """YuNet at each score threshold: true and false detections on the annotated sets, detections on dogs.jpg."""
    out = []
    for threshold in thresholds:
        entry = {"min_score": threshold}
        for set_name, photos in photos_by_set.items():
            result = evaluate("yunet", photos, threshold, None)["summary"]
            entry[set_name] = ({"found": result["found"], "false": result["false"]} if "found" in result
                               else {"extra": result["extra"], "short": result["short"]})
        out.append(entry)
    return out


def machine() -> dict:
    try:
        model = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], check=False, capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    import cv2
    import dlib
    return {"cpu": model, "cores": os.cpu_count(), "gpu": None, "opencv": cv2.__version__, "dlib": dlib.__version__,
            "date": time.strftime("%Y-%m-%d")}


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(results: dict) -> str:
    header = ("| photos | detector | faces found / annotated | recall | precision | smallest found (px) | s / MP | "
              "landmark error (mean / median) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for set_name, by_detector in results.items():
        for detector, result in by_detector.items():
            s = result["summary"]
            if "truth" in s:
                lines.append(f"| {set_name} | {detector} | {s['found']} / {s['truth']} ({s['false']} false) | "
                             f"{fmt(s['recall'], '.3f')} | {fmt(s['precision'], '.3f')} | "
                             f"{fmt(s['smallest_found'], '.0f')} | {fmt(s['seconds_per_megapixel'], '.2f')} | "
                             f"{fmt(s['landmark_error_mean'], '.3f')} / {fmt(s['landmark_error_median'], '.3f')} |")
            else:
                lines.append(f"| {set_name} ({s['photos']} photos, {s['people']} people) | {detector} | "
                             f"{s['detections']} detections ({s['extra']} extra, {s['short']} short) | – | – | – | "
                             f"{fmt(s['seconds_per_megapixel'], '.2f')} | – |")
    return "\n".join(lines)


def against_hog(results: dict) -> list[str]:
    """Each detector against HOG, photo by photo: photos where it finds fewer annotated faces (or, on photos without
    boxes, fewer detections than people while HOG has more), precision over the original photos (groups + other),
    and the landmark error on the faces HOG finds too (mean / median; HOG's own on the same faces)."""
    lines = []
    for detector in next(iter(results.values())):
        if detector == "hog":
            continue
        fewer, true, false, mine, hogs = [], 0, 0, [], []
        for set_name, by_detector in results.items():
            if detector not in by_detector or "hog" not in by_detector:
                continue
            hog_rows = {r["photo"]: r for r in by_detector["hog"]["photos"]}
            for row in by_detector[detector]["photos"]:
                hog = hog_rows.get(row["photo"])
                if hog is None:
                    continue
                if "truth" in row:
                    fewer += [f"{set_name}/{row['photo']}"] if row["found"] < hog["found"] else []
                    both = set(row.get("errors", {})) & set(hog.get("errors", {}))
                    mine += [row["errors"][i] for i in both]
                    hogs += [hog["errors"][i] for i in both]
                elif min(row["detections"], row["people"]) < min(hog["detections"], hog["people"]):
                    fewer.append(f"{set_name}/{row['photo']}")
                if not set_name.startswith("groups x"):
                    found = row["found"] if "truth" in row else min(row["detections"], row["people"])
                    true, false = true + found, false + row["detections"] - found
        precision = true / (true + false) if true + false else float("nan")
        errors = (f"landmark error on the {len(mine)} faces hog finds too {np.mean(mine):.4f} / "
                  f"{np.median(mine):.4f} (hog {np.mean(hogs):.4f} / {np.median(hogs):.4f})" if mine else
                  "no per-face landmark errors in these results")  # e.g. reused from an older file
        lines.append(f"{detector}: photos with fewer faces than hog: {fewer or 'none'}; precision on the original "
                     f"photos {precision:.3f} ({false} false in {true + false}); {errors}")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default="hog,cnn,yunet,yunet+hog")
    parser.add_argument("--reuse", default="",
                        help="detectors whose results are taken from --out as they are (e.g. cnn: ~15 min here)")
    parser.add_argument("--scale", type=float, default=0.6, help="resize factor of the small-face copy of groups")
    parser.add_argument("--cnn-max-megapixels", type=float, default=0.5,
                        help="dlib's CNN takes ~100 s per megapixel on 2 cores: skip larger photos")
    parser.add_argument("--sweep", default="0.5,0.6,0.7,0.8,0.9", help="YuNet score thresholds to tabulate")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "detectors.json")
    args = parser.parse_args(argv)
    sets = photo_sets(args.scale)
    reused = json.loads(args.out.read_text())["results"] if args.reuse else {}
    results: dict = {}
    for set_name, photos in sets.items():
        for detector in args.detectors.split(","):
            if detector in args.reuse.split(","):
                results.setdefault(set_name, {})[detector] = reused[set_name][detector]
                continue
            limit = args.cnn_max_megapixels if detector == "cnn" else None
            results.setdefault(set_name, {})[detector] = evaluate(detector, photos, None, limit)
            print(f"{set_name} {detector}: {results[set_name][detector]['summary']}", flush=True)
    sweep = score_sweep(sets, [float(v) for v in args.sweep.split(",")]) if args.sweep else []
    print(table(results))
    checks = against_hog(results)
    for line in checks:
        print(line)
    for entry in sweep:
        print(entry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "iou": IOU, "scale": args.scale,
                                    "cnn_max_megapixels": args.cnn_max_megapixels, "results": results,
                                    "yunet_score_sweep": sweep, "against_hog": checks}, indent=1))


if __name__ == "__main__":
    main()
