"""Head pose and expression descriptors from 68 iBUG landmarks, and pose/expression-balanced face selection.

The dictionary builder clusters component features of many faces; a crawl of photos is dominated by frontal,
neutral faces, so the clusters would follow that skew. This module describes each face by a few numbers
(yaw, pitch, roll, eye and mouth openness) and picks a subset whose histogram over those numbers is as flat
as the data allows.

Conventions (camera frame: x to the image's right, y down, z away from the camera):

- ``yaw``   > 0: the subject turns towards the image's right (the nose tip moves right), i.e. the subject's left.
- ``pitch`` > 0: the subject looks up (the nose tip moves up in the image).
- ``roll``  > 0: the head tilts counter-clockwise as the image is displayed, the same sense as the ``angle``
  of ``cv2.getRotationMatrix2D``: rotating a photo by +20° with it raises the roll by 20°.

All angles are in degrees. The rotation of the head (model → camera) is ``Rz(roll) @ Rx(pitch) @ Ry(yaw)`` in
those signed senses: yaw about the head's vertical axis first, then pitch, then the in-image roll.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

# A generic head in millimetres, in the camera frame of a frontal face (x right in the image, y down, z away
# from the camera), nose tip at the origin. Rough adult averages, written for this module: inter-ocular outer
# corners ~90 mm apart, eyes ~35 mm above and ~30 mm behind the nose tip, mouth ~30 mm below it. Only points the
# shape predictor places stably in most poses are used (no jaw-line points: they slide along the silhouette).
MODEL_INDEX = np.array([30, 8, 36, 39, 42, 45, 27, 33, 48, 54])
MODEL_POINTS = np.array([
    [0.0, 0.0, 0.0],        # 30 nose tip
    [0.0, 66.0, 22.0],      # 8 chin
    [-44.0, -33.0, 32.0],   # 36 outer corner of the image-left eye (subject's right eye)
    [-15.0, -32.0, 28.0],   # 39 inner corner of the image-left eye
    [15.0, -32.0, 28.0],    # 42 inner corner of the image-right eye
    [44.0, -33.0, 32.0],    # 45 outer corner of the image-right eye
    [0.0, -36.0, 20.0],     # 27 nose bridge between the eyes
    [0.0, 13.0, 14.0],      # 33 base of the nose
    [-25.0, 30.0, 24.0],    # 48 image-left mouth corner
    [25.0, 30.0, 24.0],     # 54 image-right mouth corner
])

POSE_NAMES = ("yaw", "pitch", "roll")
EXPRESSION_NAMES = ("eye_open_left", "eye_open_right", "mouth_open", "mouth_width")
DESCRIPTOR_NAMES = POSE_NAMES + EXPRESSION_NAMES
METHODS = ("stratified", "farthest")


def _check_landmarks(landmarks: np.ndarray, batched: bool) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    want = "(N, 68, 2)" if batched else "(68, 2)"
    ok = points.shape == (68, 2) if not batched else (points.ndim == 3 and points.shape[1:] == (68, 2))
    if not ok:
        raise ValueError(f"expected landmarks of shape {want}, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("landmarks contain NaN or infinite values")
    return points


# --------------------------------------------------------------------------------------------------- rotations

def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) head rotation (model → camera) for angles in degrees, in this module's sign conventions.

    The plain right-handed rotations in a y-down frame turn the other way from the conventions above (a positive
    ``_ry`` moves the nose left, ``_rx`` moves it down, ``_rz`` turns clockwise on screen), hence the negations.
    """
    y, p, r = np.radians([yaw, pitch, roll])
    return _rz(-r) @ _rx(-p) @ _ry(-y)


def euler_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """(3, 3) rotation → (yaw, pitch, roll) in degrees; the inverse of :func:`rotation_matrix` for |pitch| < 90°.

    With ``a, b, c = -yaw, -pitch, -roll`` the bottom row of ``Rz(c) Rx(b) Ry(a)`` is
    ``(-cos b sin a, sin b, cos b cos a)`` and its middle column's top two entries ``(-sin c cos b, cos c cos b)``.
    """
    rot = np.asarray(rotation, dtype=np.float64)
    if rot.shape != (3, 3):
        raise ValueError(f"expected a (3, 3) rotation matrix, got {rot.shape}")
    b = np.arcsin(np.clip(rot[2, 1], -1.0, 1.0))
    a = np.arctan2(-rot[2, 0], rot[2, 2])
    c = np.arctan2(-rot[0, 1], rot[1, 1])
    return float(-np.degrees(a)), float(-np.degrees(b)), float(-np.degrees(c))


def camera_matrix(image_size: tuple[float, float]) -> np.ndarray:
    """(3, 3) pinhole intrinsics for an image of ``(width, height)`` pixels: focal length = width (a ~53° field of
    view, typical of phone and portrait photos), principal point at the centre. Pose is insensitive to the exact
    focal length at portrait distances, where perspective is weak."""
    width, height = (float(v) for v in image_size)
    if not (width > 0 and height > 0):
        raise ValueError(f"expected a positive (width, height), got {tuple(image_size)}")
    return np.array([[width, 0.0, width / 2], [0.0, width, height / 2], [0.0, 0.0, 1.0]])


# -------------------------------------------------------------------------------------------------------- pose

def head_pose(landmarks68: np.ndarray, image_size: tuple[float, float]) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of one face from its (68, 2) landmarks in photo pixels.

    ``image_size``: (width, height) of the photo the landmarks are in (sets the pinhole camera). A PnP fit of
    :data:`MODEL_POINTS` to the matching landmarks, started from a frontal head in front of the camera so the
    iterative solver cannot settle on the mirrored solution behind the camera.
    """
    points = _check_landmarks(landmarks68, batched=False)
    image_points = points[MODEL_INDEX]
    cam = camera_matrix(image_size)
    # Start depth: the model's outer eye corners are 88 mm apart; at depth z they span f * 88 / z pixels.
    eye_span = max(float(np.linalg.norm(points[45] - points[36])), 1.0)
    z0 = cam[0, 0] * 88.0 / eye_span
    centre = image_points.mean(0)
    t0 = np.array([(centre[0] - cam[0, 2]) * z0 / cam[0, 0], (centre[1] - cam[1, 2]) * z0 / cam[1, 1], z0])
    ok, rvec, _ = cv2.solvePnP(MODEL_POINTS, image_points, cam, None, rvec=np.zeros((3, 1)),
                               tvec=t0.reshape(3, 1), useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise RuntimeError("cv2.solvePnP found no head pose for these landmarks")
    return euler_angles(cv2.Rodrigues(rvec)[0])


def head_poses(landmarks: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    """(N, 68, 2) landmarks in photo pixels and (N, 2) or (2,) (width, height) → (N, 3) (yaw, pitch, roll) degrees.

    OpenCV's PnP solves one face at a time, so this loops; ~0.1 ms a face."""
    points = _check_landmarks(landmarks, batched=True)
    sizes = np.asarray(image_sizes, dtype=np.float64)
    if sizes.shape == (2,):
        sizes = np.broadcast_to(sizes, (len(points), 2))
    if sizes.shape != (len(points), 2):
        raise ValueError(f"expected image_sizes of shape ({len(points)}, 2) or (2,), got {sizes.shape}")
    out = np.zeros((len(points), 3))
    for i, (lm, size) in enumerate(zip(points, sizes)):
        out[i] = head_pose(lm, tuple(size))
    return out


def project_model(yaw: float, pitch: float, roll: float, image_size: tuple[float, float] = (512, 512),
                  distance: float = 600.0) -> tuple[np.ndarray, np.ndarray]:
    """Project :data:`MODEL_POINTS` rotated by the given angles, ``distance`` mm in front of the image centre.

    → ((K, 2) pixel points, (K,) their landmark indices :data:`MODEL_INDEX`); for tests and sanity checks."""
    rotated = MODEL_POINTS @ rotation_matrix(yaw, pitch, roll).T + np.array([0.0, 0.0, distance])
    pix = rotated @ camera_matrix(image_size).T
    return pix[:, :2] / pix[:, 2:], MODEL_INDEX.copy()


# -------------------------------------------------------------------------------------------------- expression

def _dist(points: np.ndarray, i: int, j: int) -> np.ndarray:
    return np.linalg.norm(points[:, i] - points[:, j], axis=-1)


def expressions(landmarks: np.ndarray) -> np.ndarray:
    """(N, 68, 2) landmarks (any similarity frame) → (N, 4) :data:`EXPRESSION_NAMES`, all scale-free ratios:

    - ``eye_open_left``/``_right``: eye aspect ratio of the image-left eye (points 36–41) / image-right eye
      (42–47): mean of the two vertical lid distances over the corner-to-corner width (~0.3 open, < 0.15 closed).
    - ``mouth_open``: mean inner-lip gap (61–67, 62–66, 63–65) over mouth width (48–54); 0 with closed lips.
    - ``mouth_width``: mouth corners distance (48–54) over the distance between the two eye centres (~0.8–1.0
      neutral, larger when smiling).
    """
    p = _check_landmarks(landmarks, batched=True)
    tiny = 1e-9  # degenerate (collapsed) landmark sets give 0 rather than a division error
    left = (_dist(p, 37, 41) + _dist(p, 38, 40)) / (2 * np.maximum(_dist(p, 36, 39), tiny))
    right = (_dist(p, 43, 47) + _dist(p, 44, 46)) / (2 * np.maximum(_dist(p, 42, 45), tiny))
    width = _dist(p, 48, 54)
    gap = (_dist(p, 61, 67) + _dist(p, 62, 66) + _dist(p, 63, 65)) / 3
    eyes = np.linalg.norm(p[:, 36:42].mean(1) - p[:, 42:48].mean(1), axis=-1)
    return np.stack([left, right, gap / np.maximum(width, tiny), width / np.maximum(eyes, tiny)], axis=1)


def expression(landmarks68: np.ndarray) -> dict[str, float]:
    """One face's (68, 2) landmarks → {name: value} for :data:`EXPRESSION_NAMES` (see :func:`expressions`)."""
    values = expressions(_check_landmarks(landmarks68, batched=False)[None])[0]
    return {name: float(v) for name, v in zip(EXPRESSION_NAMES, values)}


def descriptors(landmarks: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    """(N, 68, 2) photo-pixel landmarks, (N, 2) image (width, height) → (N, 7) :data:`DESCRIPTOR_NAMES`."""
    return np.concatenate([head_poses(landmarks, image_sizes), expressions(landmarks)], axis=1)


# --------------------------------------------------------------------------------------------------- selection

def _check_descriptors(descriptors: np.ndarray) -> np.ndarray:
    d = np.asarray(descriptors, dtype=np.float64)
    if d.ndim == 1:
        d = d[:, None]
    if d.ndim != 2 or len(d) == 0:
        raise ValueError(f"expected descriptors of shape (N, D) with N > 0, got {np.shape(descriptors)}")
    if not np.isfinite(d).all():
        raise ValueError("descriptors contain NaN or infinite values; drop those faces first")
    return d


def bin_edges(descriptors: np.ndarray, bins: int | Sequence = 3) -> list[np.ndarray]:
    """Per-column bin edges for (N, D) descriptors: D arrays of ``k + 1`` increasing edges.

    ``bins``: an int (that many bins for every column), or one item per column, each an int or explicit edges.
    Counted bins are equal-width over the column's range, not quantiles: quantile bins hold equal counts by
    construction, so a 90 % frontal set would get most of its bins inside the frontal cluster and round-robin over
    them would reproduce the skew instead of lifting the rare poses.
    """
    d = _check_descriptors(descriptors)
    spec = [bins] * d.shape[1] if np.isscalar(bins) else list(bins)
    if len(spec) != d.shape[1]:
        raise ValueError(f"expected bins as an int or one entry per descriptor column ({d.shape[1]}), "
                         f"got {len(spec)} entries")
    edges = []
    for j, item in enumerate(spec):
        if np.isscalar(item):
            k = int(item)
            if k < 1:
                raise ValueError(f"column {j}: expected at least 1 bin, got {item}")
            lo, hi = float(d[:, j].min()), float(d[:, j].max())
            edges.append(np.linspace(lo, hi if hi > lo else lo + 1.0, k + 1))
        else:
            e = np.asarray(item, dtype=np.float64)
            if e.ndim != 1 or len(e) < 2 or not (np.diff(e) > 0).all():
                raise ValueError(f"column {j}: expected at least 2 strictly increasing edges, got {item!r}")
            edges.append(e)
    return edges


def assign_bins(descriptors: np.ndarray, edges: Sequence[np.ndarray]) -> np.ndarray:
    """(N, D) descriptors → (N,) joint bin id (row-major over the per-column bins); values outside the edges go
    to the end bins, so explicit edges need not cover the data."""
    d = _check_descriptors(descriptors)
    if len(edges) != d.shape[1]:
        raise ValueError(f"expected {d.shape[1]} edge arrays, got {len(edges)}")
    per_column = [np.clip(np.searchsorted(e, d[:, j], side="right") - 1, 0, len(e) - 2)
                  for j, e in enumerate(edges)]
    return np.ravel_multi_index(per_column, [len(e) - 1 for e in edges]).astype(np.int64)


def evenness(counts: np.ndarray, n_bins: int | None = None) -> float:
    """Normalised Shannon entropy of bin counts in [0, 1]: 1 = all ``n_bins`` bins equally full.

    ``n_bins`` (default: len(counts)) is the number of bins that could be filled, so a subset that empties bins
    the full set occupies scores lower."""
    c = np.asarray(counts, dtype=np.float64)
    k = len(c) if n_bins is None else int(n_bins)
    if k <= 1 or c.sum() <= 0:
        return 1.0
    p = c[c > 0] / c.sum()
    return float(-(p * np.log(p)).sum() / np.log(k))


def _stratified(bin_id: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Round-robin over occupied bins, random within a bin: equivalent to sorting faces by (rank inside their
    shuffled bin, the bin's place in a shuffled bin order) and taking the first n. Each bin ends with
    min(count, level) or one more, the flattest histogram possible for n."""
    order = rng.permutation(len(bin_id))
    shuffled_bins = bin_id[order]
    # Rank of each face inside its bin, in shuffled order (stable sort keeps the shuffle within a bin).
    by_bin = np.argsort(shuffled_bins, kind="stable")
    sorted_bins = shuffled_bins[by_bin]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_bins)) + 1]
    sizes = np.diff(np.r_[starts, len(sorted_bins)])
    rank = np.empty(len(bin_id), dtype=np.int64)
    rank[by_bin] = np.arange(len(bin_id)) - np.repeat(starts, sizes)
    # Which bins win the last, partial round: a seeded order, the same in every round.
    occupied = np.unique(bin_id)
    bin_order = np.empty(occupied.max() + 1, dtype=np.int64)
    bin_order[occupied] = rng.permutation(len(occupied))
    pick = np.lexsort((bin_order[shuffled_bins], rank))[:n]
    return np.sort(order[pick])


def _farthest(d: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy farthest-point sampling in z-scored space from a seeded start; O(n N)."""
    std = d.std(0)
    z = (d - d.mean(0)) / np.where(std > 0, std, 1.0)  # constant columns carry no spread: leave them at 0
    chosen = [int(rng.integers(len(z)))]
    nearest = np.linalg.norm(z - z[chosen[0]], axis=1)
    nearest[chosen[0]] = -np.inf  # never pick a face twice, even among exact duplicates
    for _ in range(n - 1):
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(z - z[nxt], axis=1))
        nearest[chosen] = -np.inf
    return np.sort(np.array(chosen, dtype=np.int64))


def select_balanced(descriptors: np.ndarray, n: int, method: str = "stratified", bins: int | Sequence = 3,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pick ``n`` of N faces so their (N, D) descriptors cover the space evenly.

    ``method``: "stratified" (bin each column, see :func:`bin_edges`; round-robin over occupied joint bins,
    random within a bin) or "farthest" (greedy farthest-point sampling on z-scored descriptors). Both are
    deterministic for a ``seed``; ``n >= N`` returns every face.

    → (selected (n,) int64 sorted indices, bin_id (N,) joint bin of every face, stats) where stats holds
    ``bins`` (K,) occupied bin ids, ``counts_before``/``counts_after`` (K,), ``evenness_before``/``_after``
    (normalised entropy over the K bins the full set occupies), ``cv_before``/``_after`` (coefficient of variation
    of those counts), ``edges`` (per-column bin edges), ``method``, ``n``.
    """
    d = _check_descriptors(descriptors)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if int(n) < 1:
        raise ValueError(f"expected n >= 1, got {n}")
    n = min(int(n), len(d))
    edges = bin_edges(d, bins)
    bin_id = assign_bins(d, edges)
    rng = np.random.default_rng(seed)
    if n == len(d):
        selected = np.arange(len(d), dtype=np.int64)
    elif method == "stratified":
        selected = _stratified(bin_id, n, rng)
    else:
        selected = _farthest(d, n, rng)
    occupied, before = np.unique(bin_id, return_counts=True)
    after = np.array([(bin_id[selected] == b).sum() for b in occupied], dtype=np.int64)
    stats = {
        "method": method, "n": n, "edges": edges, "bins": occupied,
        "counts_before": before, "counts_after": after,
        "evenness_before": evenness(before), "evenness_after": evenness(after, len(occupied)),
        "cv_before": float(before.std() / before.mean()), "cv_after": float(after.std() / after.mean()),
    }
    return selected, bin_id, stats


# ------------------------------------------------------------------------------------------------------- plots

def selection_histogram(descriptors: np.ndarray, selected: np.ndarray, names: Sequence[str] | None,
                        path: str | Path, bins: int = 20) -> Path:
    """PNG with one panel per descriptor column: the fraction of all faces vs of the selected faces per
    histogram bin (fractions, so the two sizes compare). ``descriptors``: (N, D); ``selected``: (n,) indices."""
    import matplotlib
    matplotlib.use("Agg")  # headless workers; set here, not at import, so callers' backends stay untouched
    import matplotlib.pyplot as plt

    d = _check_descriptors(descriptors)
    sel = np.asarray(selected, dtype=np.int64)
    if sel.ndim != 1 or len(sel) == 0 or sel.min() < 0 or sel.max() >= len(d):
        raise ValueError(f"expected selected as a non-empty (n,) index array into {len(d)} faces, got {sel}")
    names = list(names) if names is not None else [f"d{j}" for j in range(d.shape[1])]
    if len(names) != d.shape[1]:
        raise ValueError(f"expected {d.shape[1]} names, got {len(names)}")
    cols = min(d.shape[1], 4)
    rows = -(-d.shape[1] // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for j, ax in enumerate(axes.flat):
        if j >= d.shape[1]:
            ax.axis("off")
            continue
        edges = np.histogram_bin_edges(d[:, j], bins=bins)
        ax.hist(d[:, j], bins=edges, weights=np.full(len(d), 1 / len(d)), alpha=0.5, label=f"all ({len(d)})")
        ax.hist(d[sel, j], bins=edges, weights=np.full(len(sel), 1 / len(sel)), histtype="step", linewidth=1.5,
                label=f"selected ({len(sel)})")
        ax.set_title(names[j], fontsize=9)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    axes.flat[0].set_ylabel("fraction")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
