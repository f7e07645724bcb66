"""Pose/expression-balanced face selection for building dictionaries.

A crawl of photos is dominated by frontal, neutral faces, so clusters of their component features would follow
that skew. Each face is described by the numbers of ``dfdcore.face.pose.descriptors`` (yaw, pitch, roll, eye and
mouth openness); ``select_balanced`` picks a subset whose histogram over them is as flat as the data allows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

METHODS = ("stratified", "farthest")


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
