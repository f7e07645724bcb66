"""K-means over streamed component features (FAISS) → ComponentDictionary.

Per partition (scale, part): a seeded uniform sample of at most k·max_points_per_centroid rows trains FAISS k-means
from greedy k-means++ seeds, then every row is assigned to its nearest centre in streamed batches to count cluster
sizes. No step holds more than the sample.

Notation for the memory formulas: n rows in the partition, d = C·h·w, m = training rows (≤ k·max_points_per_centroid,
≤ n), B = batch_rows, G = one Parquet row group (≤ features.ROW_GROUP_BYTES ≈ 64 MiB).
For the official 512 model, mouth_256 has d = 387,200: m = 131,072 (k 512 × 256) would need 203 GB of float32 for
the sample, hence ``KMeansOptions.max_train_bytes`` (4 GiB by default).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from dfdcore.config import PARTS, GeneratorConfig
from dfdcore.dictionary.format import ComponentDictionary, Key
from dfdcore.dictionary.store import iter_feature_batches, partition_schema

Progress = Callable[[int, int, Key, "KMeansResult"], None]
INITS = ("kmeans++", "random")


@dataclass(frozen=True)
class KMeansOptions:
    """How every partition is clustered; carried whole from the command line to the library.

    k: centres per (scale, part). niter: FAISS iterations. seed: sample, seeding and FAISS.
    max_points_per_centroid, max_train_bytes: bounds of the training sample (``sample_size``); the default 4 GiB of
    float32 keeps the official mouth_256 (1.5 MiB a row) at 2,773 rows instead of 131,072 (203 GB).
    gpu: None → a GPU when FAISS sees one. batch_rows: rows per streamed batch (B in the memory formulas).
    init: "kmeans++" (``kmeans_plus_plus``) or "random" (FAISS's own seeding with k random sample rows).
    init_trials: candidates per k-means++ centre, the one that lowers the potential most is kept (greedy
    k-means++); None → ``default_trials(k)``; 1 → plain D²-sampling (with init_sketch None: the seeding before
    2026-12).
    init_sketch: rows wider than this are seeded on a sketch of that width (``sketch_rows``); None → exact.
    """

    k: int = 512
    niter: int = 20
    seed: int = 0
    max_points_per_centroid: int = 256
    max_train_bytes: int | None = 4 * 2**30
    gpu: bool | None = None
    batch_rows: int = 4096
    init: str = "kmeans++"
    init_trials: int | None = None
    init_sketch: int | None = 1024

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if min(self.k, self.niter, self.max_points_per_centroid, self.batch_rows) < 1:
            raise ValueError(f"k, niter, max_points_per_centroid and batch_rows must be >= 1, got {self.k}, "
                             f"{self.niter}, {self.max_points_per_centroid}, {self.batch_rows}")
        if any(v is not None and v < 1 for v in (self.init_trials, self.init_sketch)):
            raise ValueError(f"init_trials and init_sketch must be >= 1 or None, got {self.init_trials} and "
                             f"{self.init_sketch}")


@dataclass
class KMeansResult:
    """Outcome of one partition's k-means.

    centroids: (k, C, h, w) float32. objective: FAISS's per-iteration objective (sum of squared distances of the
    training sample; FAISS stops early once it no longer changes, so it may be shorter than niter).
    cluster_sizes: (k,) int64 rows of the whole partition nearest to each centre.
    inertia: mean squared distance of all rows to their centre.
    """

    scale: int
    part: str
    centroids: np.ndarray
    objective: list[float]
    cluster_sizes: np.ndarray
    empty_clusters: int
    n_rows: int
    n_train: int
    inertia: float
    seconds: float
    params: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-friendly summary (no centroids), e.g. for run logs and dictionary provenance."""
        return {"scale": self.scale, "part": self.part, "k": int(self.centroids.shape[0]),
                "shape": list(self.centroids.shape[1:]), "n_rows": self.n_rows, "n_train": self.n_train,
                "empty_clusters": self.empty_clusters, "inertia": self.inertia,
                "final_objective": self.objective[-1] if self.objective else None,
                "seconds": round(self.seconds, 3), **self.params}


def default_gpu() -> bool:
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return bool(get and get() > 0)


def sample_size(n_rows: int, k: int, dim: int, max_points_per_centroid: int,
                max_train_bytes: int | None = None) -> int:
    """Training rows m = min(n, k·max_points_per_centroid, max_train_bytes // (4·d)), at least k."""
    m = min(n_rows, k * max_points_per_centroid)
    if max_train_bytes is not None:
        m = min(m, max(k, max_train_bytes // (4 * dim)))
    return m


def sample_rows(root_uri: str, scale: int, part: str, n_rows: int, m: int, seed: int,
                batch_rows: int = 4096) -> np.ndarray:
    """A uniform sample without replacement of ``m`` of the ``n_rows`` rows, in file order → (m, d) float32.

    The row indices are drawn up front (n is known from the footers), so the sample depends only on ``seed`` and
    the data, not on batch boundaries. Peak memory: m·d·4 + m·8 (indices) + G + B·d·2.
    """
    picks = np.sort(np.random.default_rng(seed).choice(n_rows, size=m, replace=False)) if m < n_rows \
        else np.arange(n_rows)
    out: np.ndarray | None = None
    start = filled = 0
    for batch in iter_feature_batches(root_uri, scale, part, batch_rows):
        if out is None:
            out = np.empty((m, batch.shape[1]), dtype=np.float32)
        lo, hi = np.searchsorted(picks, [start, start + len(batch)])
        out[filled:filled + hi - lo] = batch[picks[lo:hi] - start]  # float16 → float32 only for picked rows
        filled += hi - lo
        start += len(batch)
    if out is None or filled != m or start != n_rows:
        raise RuntimeError(f"scale={scale}/part={part}: read {start} rows, footers say {n_rows}; the partition "
                           f"changed while it was being read")
    return out


def default_trials(k: int) -> int:
    """Candidates per k-means++ centre: 8·(2 + ⌊ln k⌋), i.e. 48 for k = 64 and 64 for k = 512.

    scikit-learn draws 2 + ⌊ln k⌋. In the sketch space (``sketch_rows``) candidates are cheap, and on the benchmark
    mixture (bench/RESULTS.md, "Dictionary pipeline") 8× as many left far fewer clusters without a centre.
    """
    return 8 * (2 + int(np.log(k)))


def sketch_rows(x: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """Signed random sketch of (m, d) float32 rows → (m, width) float32, width < d.

    The d coordinates are shuffled into ``width`` groups of ⌊d/width⌋ or ⌈d/width⌉, each multiplied by a random
    ±1 and summed per group: E‖s(x) − s(y)‖² = ‖x − y‖², with a relative spread ≈ √(2/width) (4 % at 1,024) —
    close enough to rank seeding candidates, at m·d additions instead of k passes over (m, d) rows.
    Extra memory: m·width·4 + a block of ≈ 1 MiB.
    """
    d = x.shape[1]
    if not 1 <= width < d:  # a group per coordinate or more would copy rows, not sketch them
        raise ValueError(f"sketch width must be in [1, d = {d}), got {width}")
    order = rng.permutation(d)
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=d)
    starts = np.arange(width) * d // width
    out = np.empty((len(x), width), dtype=np.float32)
    block = max(1, 2**18 // d)  # rows per step: the column gather stays in cache
    for i in range(0, len(x), block):
        shuffled = np.take(x[i:i + block], order, axis=1)
        shuffled *= signs
        out[i:i + block] = np.add.reduceat(shuffled, starts, axis=1)
    return out


def sq_distances(x: np.ndarray, sq_norms: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Squared distances of (m, d) float32 ``x`` to its rows ``rows`` (L indices) → (m, L) float64, ≥ 0.

    ‖x‖² − 2x·c + ‖c‖² with one float32 (m, d)·(d, L) product: no (m, d) temporary; float64 for the sums.
    """
    dots = (x @ x[rows].T).astype(np.float64)
    return np.maximum(sq_norms[:, None] - 2 * dots + sq_norms[rows][None, :], 0.0)


def draw_weighted(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` row indices drawn with replacement with probability ∝ (m,) ``weights`` (D²-sampling) → (count,)."""
    cumulative = np.cumsum(weights)
    total = cumulative[-1]
    if total <= 0:  # every row already coincides with a centre (duplicates): any row will do
        return rng.integers(len(weights), size=count)
    return np.minimum(np.searchsorted(cumulative, rng.random(count) * total, side="right"), len(weights) - 1)


def greedy_seeds(z: np.ndarray, k: int, trials: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ over (m, p) float32 rows → (k,) indices of the rows chosen as centres.

    Each centre: ``trials`` D²-drawn candidates, the one that lowers the potential (Σ squared distance to the
    nearest centre) most is kept. A single draw (trials = 1, plain k-means++) lands in an already covered cluster
    more and more often as the uncovered ones get few. Cost: k·m·p·trials multiply-adds.
    Extra memory ≈ m·(24 + 20·trials) (norms, nearest distances, the (m, trials) distance blocks).
    """
    sq_norms = np.einsum("ij,ij->i", z, z, dtype=np.float64)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(len(z))
    nearest = sq_distances(z, sq_norms, chosen[:1])[:, 0]
    for i in range(1, k):
        candidates = draw_weighted(nearest, trials, rng)
        dist = sq_distances(z, sq_norms, candidates)
        best = int(np.argmin(np.minimum(dist, nearest[:, None]).sum(axis=0)))
        np.minimum(nearest, dist[:, best], out=nearest)
        chosen[i] = candidates[best]
    return chosen


def kmeans_plus_plus(x: np.ndarray, k: int, seed: int, trials: int | None = None,
                     sketch_width: int | None = 1024) -> np.ndarray:
    """Greedy k-means++ seeding of (m, d) float32 rows → (k, d) initial centres (rows of ``x``).

    FAISS seeds with k random rows, which often puts two seeds in one cluster and leaves Lloyd's iterations stuck
    there; ``greedy_seeds`` avoids nearly all of that. trials None → ``default_trials(k)``; 1 → plain k-means++.
    Rows wider than ``sketch_width`` are seeded on their sketch (``sketch_rows``; None → exact distances): seeding
    costs k·m·width·trials instead of k·m·d·trials, and the centres are still exact rows of ``x``.
    Extra memory ≈ m·(24 + 20·trials) + m·width·4 + k·d·4.
    """
    trials = default_trials(k) if trials is None else trials
    if trials < 1 or (sketch_width is not None and sketch_width < 1):
        raise ValueError(f"trials and sketch_width must be >= 1, got {trials} and {sketch_width}")
    rng = np.random.default_rng(seed)
    z = sketch_rows(x, sketch_width, rng) if sketch_width is not None and sketch_width < x.shape[1] else x
    return x[greedy_seeds(z, k, trials, rng)]


def assign(index, batches: Iterable[np.ndarray], k: int) -> tuple[np.ndarray, float]:
    """Nearest centre of every row of ``batches`` ((B, d) each) in a FAISS ``index`` of k centres
    → ((k,) int64 rows per centre, Σ squared distance to the nearest centre)."""
    sizes = np.zeros(k, dtype=np.int64)
    total_sq = 0.0
    for batch in batches:
        dist, labels = index.search(np.ascontiguousarray(batch, dtype=np.float32), 1)
        sizes += np.bincount(labels[:, 0], minlength=k)
        total_sq += float(dist.sum(dtype=np.float64))
    return sizes, total_sq


def kmeans_partition(root_uri: str, scale: int, part: str, options: KMeansOptions = KMeansOptions()) -> KMeansResult:
    """FAISS k-means of one feature partition → KMeansResult with (k, C, h, w) float32 centroids.

    Steps and peak memory (bytes):
    1. sample: m·d·4 + m·8 + G + B·d·2 (``sample_rows``).
    2. train: m·d·4 (sample) + 2·k·d·4 (centroids + FAISS's flat index copy) + m·12 (labels, distances)
       + FAISS's distance blocks (≈ 1024·k·4 per thread-block on CPU); k-means++ seeding adds
       m·(24 + 20·L + 4·p) + k·d·4 (L = init_trials, p = init_sketch, ``kmeans_plus_plus``).
    3. assign all n rows: k·d·4 (index) + G + B·d·(2 + 4) (float16 batch + float32 copy) + B·(8 + 4) + B·k·4
       (distance block); the sample is freed before this step. When the sample is the whole partition (m = n)
       it is assigned instead of read again: m·d·4 + k·d·4 + B·(12 + k·4), under step 2's peak.
    FAISS warns when m < 39·k (too few points per centroid) but still runs.

    Fewer rows than ``k`` is an error (FAISS cannot seed k distinct centres from fewer points and padding with
    duplicates would make a dictionary of repeated entries); use a smaller k or extract more faces.
    Deterministic for a given seed, data and thread count.
    """
    import faiss  # imported lazily: feature extraction and inference do not need FAISS

    o = options
    began = time.perf_counter()
    schema = partition_schema(root_uri, scale, part)
    n, dim = schema.num_rows, schema.dim
    if n < o.k:
        raise ValueError(f"scale={scale}/part={part}: {n} feature rows for k={o.k} centres; k-means needs at least "
                         f"k rows — lower k or extract features from more faces")
    gpu = default_gpu() if o.gpu is None else o.gpu
    m = sample_size(n, o.k, dim, o.max_points_per_centroid, o.max_train_bytes)
    sample = sample_rows(root_uri, scale, part, n, m, o.seed, o.batch_rows)
    # min_points_per_centroid only decides when FAISS prints a "too few points" warning (once per partition,
    # to stderr); the run records the row counts instead.
    km = faiss.Kmeans(dim, o.k, niter=o.niter, seed=o.seed, max_points_per_centroid=o.max_points_per_centroid,
                      min_points_per_centroid=1, gpu=gpu, verbose=False)
    trials = default_trials(o.k) if o.init_trials is None else o.init_trials
    sketch = o.init_sketch if o.init_sketch is not None and o.init_sketch < dim else None  # None: exact distances
    seeds = kmeans_plus_plus(sample, o.k, o.seed, trials, sketch) if o.init == "kmeans++" else None
    km.train(sample, init_centroids=seeds)
    objective = [float(v) for v in km.obj]
    if m == n:  # the sample is every row in file order: reading the partition again would only cost time
        batches = (sample[i:i + o.batch_rows] for i in range(0, m, o.batch_rows))
    else:
        del sample  # step 3 must not hold the sample as well
        batches = iter_feature_batches(root_uri, scale, part, o.batch_rows)
    sizes, total_sq = assign(km.index, batches, o.k)
    centroids = np.asarray(km.centroids, dtype=np.float32).reshape(o.k, schema.channels, schema.height,
                                                                   schema.width)
    params = {"niter": o.niter, "seed": o.seed, "init": o.init,
              "init_trials": trials if o.init == "kmeans++" else None, "init_sketch": sketch,
              "max_points_per_centroid": o.max_points_per_centroid, "gpu": gpu,
              "extractor_checksum": schema.extractor_checksum, "random_vgg": schema.random_vgg}
    return KMeansResult(scale=int(scale), part=part, centroids=centroids, objective=objective, cluster_sizes=sizes,
                        empty_clusters=int((sizes == 0).sum()), n_rows=n, n_train=m, inertia=total_sq / n,
                        seconds=time.perf_counter() - began, params=params)


def cluster_dictionary(root_uri: str, config: GeneratorConfig, options: KMeansOptions = KMeansOptions(),
                       progress: Progress | None = None) -> tuple[ComponentDictionary, dict[Key, KMeansResult]]:
    """k-means over all 16 partitions (scales × PARTS) → (ComponentDictionary, {(scale, part): KMeansResult}).

    Partitions run one after another with the same ``options``, so each entry equals ``kmeans_partition`` of that
    partition. Peak memory = the largest partition's ``kmeans_partition`` peak + the centroids kept so far
    (Σ k·d·4; ≈ 3 GiB for the official sizes with k = 512). All partitions must come from one extractor.
    ``progress(done, total, key, result)`` is called after each partition.
    """
    keys = [(scale, part) for scale in config.scales for part in PARTS]
    schemas = {key: partition_schema(root_uri, *key) for key in keys}  # fail early, before hours of k-means
    for key, schema in schemas.items():
        expected = config.dict_shape(*key, options.k)[1:]
        if (schema.channels, schema.height, schema.width) != expected:
            found = (schema.channels, schema.height, schema.width)
            raise ValueError(f"scale={key[0]}/part={key[1]}: features of shape {found}, the configuration "
                             f"(face size {config.face_size}, ngf {config.ngf}) needs {expected}")
    sources = {(s.extractor_checksum, s.random_vgg) for s in schemas.values()}
    if len(sources) != 1:
        raise ValueError(f"partitions come from {len(sources)} different extractors; rebuild the features with one")
    results: dict[Key, KMeansResult] = {}
    for done, key in enumerate(keys, start=1):
        results[key] = kmeans_partition(root_uri, *key, options)
        if progress is not None:
            progress(done, len(keys), key, results[key])
    checksum, random_vgg = sources.pop()
    provenance = {"kind": "kmeans", **asdict(options), "extractor_checksum": checksum, "random_vgg": random_vgg,
                  "partitions": {f"{s}/{p}": r.summary() for (s, p), r in results.items()}}
    entries = {key: result.centroids for key, result in results.items()}
    return ComponentDictionary(entries, config, {"provenance": provenance}), results
