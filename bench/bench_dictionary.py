"""Dictionary pipeline benchmarks.

1. faces/s of the landmark step (dlib detection + 5/68 landmarks + pose/expression) and of the feature step
   (alignment + VGG19 taps + component crops → Parquet, official 512 size, random VGG) with 1 and 2 Ray workers,
   on the real photos of shared/data/faces (identities + portraits);
2. FAISS k-means against scikit-learn's KMeans on the same features (time, inertia = mean squared distance);
3. ``--memory``: k-means with K=512 over 2,000 synthetic rows at the official dimensions for all 16 (scale, part)
   partitions, peak RSS of that process (target < 12 GB).

    python bench/bench_dictionary.py --out bench/results/dictionary-cpu.json
    python bench/bench_dictionary.py --memory --out bench/results/dictionary-memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).parent
sys.path.insert(0, str(BENCH))
from bench_generator import machine  # noqa: E402

SHARED = Path(os.environ.get("DFD_SHARED", BENCH.parent.parent / "shared"))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def pipeline_bench(args) -> dict:
    import ray

    from dfd.tasks.dictionary import FeatureWorker, landmarks_batch
    from dfdcore.dictionary.collection import ok_rows, scan_image
    from dfdcore.io.storage import list_images

    faces_dir = SHARED / "data" / "faces"
    sources = list_images([str(faces_dir / "identities"), str(faces_dir / "portraits")])[: args.images]
    images = ok_rows(scan_image(s) for s in sources)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: dict = {"images": len(images), "landmarks": {}, "features": {}}
    faces = []
    for workers in (1, 2):
        parts = [images[i::workers] for i in range(workers)]
        started = time.perf_counter()
        rows = [r for part in ray.get([landmarks_batch.remote(p) for p in parts]) for r in part]
        seconds = time.perf_counter() - started
        faces = ok_rows(rows)
        results["landmarks"][workers] = {"faces": len(faces), "seconds": seconds, "faces_per_second": len(faces) / seconds}
        print(f"landmarks  {workers} worker(s): {len(faces)} faces in {seconds:.1f} s = {len(faces) / seconds:.2f} faces/s",
              flush=True)
    selected = faces[: args.features]
    with tempfile.TemporaryDirectory(dir=BENCH / ".cache") as out:
        for workers in (1, 2):
            # torch threads follow the CPUs Ray gives each actor: the 2 cores split between the workers
            actors = [FeatureWorker.options(num_cpus=2 / workers).remote(None, 0, 512, 64) for _ in range(workers)]
            ray.get([a.extractor.remote() for a in actors])  # models loaded before timing
            chunks = [selected[i:i + 8] for i in range(0, len(selected), 8)]
            started = time.perf_counter()
            ray.get([actors[i % workers].extract.remote(c, f"{out}/w{workers}", f"shard-{i:04d}", False)
                     for i, c in enumerate(chunks)])
            seconds = time.perf_counter() - started
            results["features"][workers] = {"faces": len(selected), "seconds": seconds,
                                            "faces_per_second": len(selected) / seconds}
            print(f"features   {workers} worker(s): {len(selected)} faces in {seconds:.1f} s = "
                  f"{len(selected) / seconds:.2f} faces/s", flush=True)
            for actor in actors:
                ray.kill(actor)
    ray.shutdown()
    results["kmeans"] = kmeans_comparison(args.kmeans_rows, args.k, args.repeat)
    return results


def synthetic_partition(root: str, scale: int, part: str, n: int, clusters: int, seed: int = 0) -> None:
    """n rows at the official (C, h, w) of (scale, part): a mixture of ``clusters`` non-negative blobs."""
    import torch

    from dfdcore.config import OFFICIAL
    from dfdcore.dictionary.store import write_feature_partition

    _, c, h, w = OFFICIAL.dict_shape(scale, part, 1)
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(clusters, c, h, w, generator=gen) * 2
    labels = torch.randint(0, clusters, (n,), generator=gen)
    rows = (centres[labels] + 0.5 * torch.randn(n, c, h, w, generator=gen)).clamp_(min=0)
    meta = [{"image_id": f"synthetic-{i}", "face_index": 0, "flip": False} for i in range(n)]
    write_feature_partition(root, scale, part, meta, rows, "shard-00000", extractor_checksum="synthetic",
                            random_vgg=True)


def timed(fn, repeat: int) -> tuple[object, float, float]:
    """``fn()`` run ``repeat`` times → (last result, best wall seconds, process CPU seconds of that run).

    CPU seconds count every thread of the process: with the cores shared they vary less than wall seconds."""
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return result, *best


def kmeans_comparison(n: int, k: int, repeat: int = 1) -> dict:
    """dfd's k-means (dfdcore.dictionary.kmeans) vs scikit-learn KMeans (n_init=1, k-means++, 20 iterations) on the
    same rows, in one process: dfd's defaults (greedy k-means++ on a sketch), dfd with one candidate per centre and
    exact distances (plain k-means++, the seeding before 2026-12) and scikit-learn. dfd's time includes reading the
    Parquet rows; scikit-learn gets them in memory."""
    import faiss  # noqa: F401 — imported before timing (kmeans_partition imports it lazily)
    import numpy as np
    from sklearn.cluster import KMeans

    from dfdcore.dictionary.kmeans import KMeansOptions, kmeans_partition
    from dfdcore.dictionary.store import iter_feature_batches

    # scikit-learn's first fit inspects the BLAS and OpenMP libraries (seconds): done here, outside the timing
    KMeans(n_clusters=2, n_init=1).fit(np.random.default_rng(0).random((16, 4)))
    comparison = {}
    for scale, part in ((32, "left_eye"), (64, "mouth")):
        with tempfile.TemporaryDirectory(dir=BENCH / ".cache") as root:
            synthetic_partition(root, scale, part, n, clusters=k)
            rows = np.concatenate(list(iter_feature_batches(root, scale, part))).astype(np.float32)

            def sklearn_inertia() -> float:
                return float(KMeans(n_clusters=k, n_init=1, max_iter=20, random_state=0).fit(rows).inertia_ / len(rows))

            runs = {"dfd": lambda: kmeans_partition(root, scale, part, KMeansOptions(k=k, seed=0)).inertia,
                    "sklearn": sklearn_inertia,
                    "dfd_plain": lambda: kmeans_partition(root, scale, part, KMeansOptions(
                        k=k, seed=0, init_trials=1, init_sketch=None)).inertia}
            entry = {"rows": len(rows), "dim": rows.shape[1], "k": k, "repeat": repeat}
            for name, run in runs.items():
                inertia, wall, cpu = timed(run, repeat)
                entry.update({f"{name}_seconds": wall, f"{name}_cpu_seconds": cpu, f"{name}_inertia": inertia})
                print(f"k-means    {scale}/{part} ({len(rows)} rows, d={rows.shape[1]}, K={k}) {name}: {wall:.2f} s "
                      f"(CPU {cpu:.2f} s) inertia {inertia:.5g}", flush=True)
        for name in ("dfd", "dfd_plain"):
            entry[f"{name}_inertia_ratio"] = entry[f"{name}_inertia"] / entry["sklearn_inertia"]
            entry[f"{name}_speedup"] = entry["sklearn_seconds"] / entry[f"{name}_seconds"]
            entry[f"{name}_cpu_speedup"] = entry["sklearn_cpu_seconds"] / entry[f"{name}_cpu_seconds"]
        comparison[f"{scale}/{part}"] = entry
        print(f"k-means    {scale}/{part}: dfd inertia {entry['dfd_inertia_ratio']:.4f} x scikit-learn's, "
              f"{entry['dfd_speedup']:.2f}x its speed (CPU {entry['dfd_cpu_speedup']:.2f}x)", flush=True)
    return comparison


def memory_bench(args) -> dict:
    import torch

    from dfdcore.config import OFFICIAL, PARTS
    from dfdcore.dictionary.kmeans import KMeansOptions, cluster_dictionary
    from dfdcore.dictionary.store import write_feature_partition

    with tempfile.TemporaryDirectory(dir=BENCH / ".cache") as root:
        started = time.perf_counter()
        for scale in OFFICIAL.scales:
            for part in PARTS:
                _, c, h, w = OFFICIAL.dict_shape(scale, part, 1)
                gen = torch.Generator().manual_seed(scale * 10 + PARTS.index(part))
                for shard in range(0, args.rows, 250):
                    n = min(250, args.rows - shard)
                    rows = torch.randn(n, c, h, w, generator=gen).abs_()
                    meta = [{"image_id": f"synthetic-{shard + i}", "face_index": 0, "flip": False} for i in range(n)]
                    write_feature_partition(root, scale, part, meta, rows, f"shard-{shard:05d}",
                                            extractor_checksum="synthetic", random_vgg=True)
        write_seconds = time.perf_counter() - started
        rss_after_write = peak_rss_gib()
        started = time.perf_counter()
        _, results = cluster_dictionary(root, OFFICIAL, KMeansOptions(k=args.k_memory, niter=args.niter, seed=0,
                                                                      max_train_bytes=4 * 2**30))
        seconds = time.perf_counter() - started
    return {"rows": args.rows, "k": args.k_memory, "niter": args.niter, "write_seconds": write_seconds,
            "kmeans_seconds": seconds, "peak_rss_gib": peak_rss_gib(), "peak_rss_gib_after_write": rss_after_write,
            "partitions": {f"{s}/{p}": r.summary() for (s, p), r in results.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--features", type=int, default=32, help="faces through the feature step")
    parser.add_argument("--k", type=int, default=64, help="K for the FAISS / scikit-learn comparison")
    parser.add_argument("--kmeans-rows", type=int, default=2000, help="synthetic rows for that comparison")
    parser.add_argument("--repeat", type=int, default=1, help="k-means runs per method, the fastest is kept")
    parser.add_argument("--kmeans-only", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--k-memory", type=int, default=512)
    parser.add_argument("--niter", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    (BENCH / ".cache").mkdir(exist_ok=True)
    if args.memory:
        result = memory_bench(args)
    elif args.kmeans_only:
        result = {"kmeans": kmeans_comparison(args.kmeans_rows, args.k, args.repeat)}
    else:
        result = pipeline_bench(args)
    result["machine"] = machine()
    if args.memory:
        print(json.dumps({k: v for k, v in result.items() if k != "partitions"}, indent=2, default=str))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
