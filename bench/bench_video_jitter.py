"""Frame-to-frame jitter of the 5 alignment landmarks in a video, before and after dfd's temporal smoothing.

A bundled portrait is filmed by a synthetic camera: each frame is the portrait under a known similarity (a slow
drift plus a small random sub-pixel shake), encoded with dfd's own H.264 writer and decoded back. Landmarks are
found on every frame (the restorer's detector, dlib's 5-point predictor), mapped back through the inverse of the
frame's true similarity, so that what remains is the landmark error alone; jitter is the mean |Δ| of that error
between consecutive frames, in reference pixels and relative to the eye distance. The same for the points after
``link_tracks`` + ``smooth_tracks``. Also the mean error against the points found on the unmoved portrait.

    .venv/bin/python bench/bench_video_jitter.py [--frames 60] [--size 256] [--shake 0.4]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dfdcore.face.detect import detect_faces, landmarks
from dfdcore.face.track import Observation, face_motion, link_tracks, smooth_tracks
from dfdcore.io.video import SegmentWriter, read_frames
from dfdcore.restoration.restorer import DEFAULT_DETECTOR

ASSETS = Path(__file__).resolve().parents[1] / "dfdcore" / "assets"
RESULTS = Path(__file__).resolve().parent / "results" / "video_jitter.json"


def camera_path(frames: int, size: int, shake_px: float, seed: int = 0) -> list[np.ndarray]:
    """(2, 3) similarities reference → frame: a slow drift (a few px, ±1°, ±2 % scale) plus a random shake of
    ``shake_px`` px standard deviation in translation (and 0.1°, 0.1 % of scale)."""
    rng = np.random.default_rng(seed)
    matrices = []
    for t in range(frames):
        phase = 2 * np.pi * t / max(frames, 1)
        angle = 1.0 * np.sin(phase) + rng.normal(0, 0.1)
        scale = 1.0 + 0.02 * np.sin(phase / 2) + rng.normal(0, 0.001)
        m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
        m[:, 2] += [3.0 * np.sin(phase), 2.0 * np.cos(phase)] + rng.normal(0, shake_px, 2)
        matrices.append(m)
    return matrices


def shaky_video(portrait: Path, path: Path, frames: int, size: int, shake_px: float, seed: int = 0,
                frame_rate: Fraction = Fraction(25)) -> tuple[np.ndarray, list[np.ndarray]]:
    """Write the shaken portrait (``size``² px) to ``path`` (H.264); → (reference frame, true similarities)."""
    reference = np.asarray(Image.open(portrait).convert("RGB").resize((size, size), Image.LANCZOS))
    matrices = camera_path(frames, size, shake_px, seed)
    with SegmentWriter(path, frame_rate) as writer:
        for m in matrices:
            writer.write(cv2.warpAffine(reference, m, (size, size), flags=cv2.INTER_CUBIC,
                                        borderMode=cv2.BORDER_REFLECT))
    return reference, matrices


def detected_points(path: Path, motion: bool = True) -> list[list[Observation]]:
    """Per frame: the largest face, its 5 landmarks (as the restorer finds them: its default detector, one
    upsampling, dlib's 5-point predictor) and,
    with ``motion``, its motion since the previous frame (as ``restore_video`` measures it)."""
    frames, previous = [], None
    for index, rgb in enumerate(read_frames(path)):
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        found = detect_faces(rgb, upsample=1, detector=DEFAULT_DETECTOR)[:1]
        frames.append([Observation(index, np.asarray(f.box, np.float64), landmarks(rgb, f.box, points=5), f.score,
                                   face_motion(previous, grey, np.asarray(f.box)) if motion and index else None)
                       for f in found])
        previous = grey
    return frames


def to_reference(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(5, 2) frame points → reference pixels through the inverse of the (2, 3) reference → frame similarity."""
    inverse = cv2.invertAffineTransform(matrix)
    return points @ inverse[:, :2].T + inverse[:, 2]


def jitter(series: dict[int, np.ndarray]) -> float:
    """Mean |Δ| (Euclidean, per landmark) between consecutive frames both present in ``series``."""
    steps = [np.linalg.norm(series[t] - series[t - 1], axis=1).mean() for t in sorted(series) if t - 1 in series]
    return float(np.mean(steps)) if steps else float("nan")


def measure(portrait: Path, frames: int = 60, size: int = 256, shake_px: float = 0.4, seed: int = 0) -> dict:
    """Jitter and error of the raw and the smoothed landmarks on one shaken portrait (see the module's doc)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shaky.mp4"
        reference, matrices = shaky_video(portrait, path, frames, size, shake_px, seed)
        t0 = time.perf_counter()
        observed = detected_points(path)
        detect_s = time.perf_counter() - t0
    truth = landmarks(reference, detect_faces(reference, upsample=1, detector=DEFAULT_DETECTOR)[0].box, points=5)
    t0 = time.perf_counter()
    smoothed = smooth_tracks(link_tracks(observed), len(observed))
    smooth_s = time.perf_counter() - t0
    # the same window without the motions: the weighted line alone (what a filled gap gets)
    still = [[dataclasses.replace(o, motion=None) for o in f] for f in observed]
    lined = smooth_tracks(link_tracks(still), len(still))
    measured = [o.motion is not None for f in observed[1:] for o in f]
    raw = {t: to_reference(f[0].points5, matrices[t]) for t, f in enumerate(observed) if f}
    smooth = {t: to_reference(f[0].points5, matrices[t]) for t, f in enumerate(smoothed) if f}
    line = {t: to_reference(f[0].points5, matrices[t]) for t, f in enumerate(lined) if f}
    eyes = float(np.linalg.norm(truth[0:2].mean(0) - truth[2:4].mean(0)))
    result = {"portrait": portrait.name, "frames": frames, "size": size, "shake_px": shake_px,
              "frames_detected": len(raw), "frames_smoothed": len(smooth), "eye_distance_px": eyes,
              "motion_measured": float(np.mean(measured)) if measured else 0.0,
              "detect_s_per_frame": detect_s / frames, "smooth_s_per_frame": smooth_s / frames}
    for label, series in (("raw", raw), ("smoothed", smooth), ("line", line)):
        result[f"jitter_{label}_px"] = jitter(series)
        result[f"jitter_{label}_rel"] = result[f"jitter_{label}_px"] / eyes
        result[f"error_{label}_px"] = float(np.mean([np.linalg.norm(p - truth, axis=1).mean()
                                                     for p in series.values()]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--shake", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--portraits", nargs="+", default=["grace_hopper.jpg", "astronaut.png", "obama.jpg"])
    args = parser.parse_args()
    rows = [measure(ASSETS / name, args.frames, args.size, shake) for name in args.portraits for shake in args.shake]
    print("| portrait | shake px | frames found | eye dist px | jitter raw px (rel) | jitter line only px (rel) | "
          "jitter smoothed px (rel) | error raw / line / smoothed px |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['portrait']} | {r['shake_px']} | {r['frames_detected']}/{r['frames']} | "
              f"{r['eye_distance_px']:.1f} | {r['jitter_raw_px']:.3f} ({r['jitter_raw_rel']:.4f}) | "
              f"{r['jitter_line_px']:.3f} ({r['jitter_line_rel']:.4f}) | "
              f"{r['jitter_smoothed_px']:.3f} ({r['jitter_smoothed_rel']:.4f}) | {r['error_raw_px']:.3f} / "
              f"{r['error_line_px']:.3f} / {r['error_smoothed_px']:.3f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
