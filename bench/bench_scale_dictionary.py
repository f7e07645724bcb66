"""How build_dictionary grows with the collection: scan → landmarks → select → features → k-means on a bucket of N
photos (``bench/make_bucket.py``), each step's seconds, driver and Ray worker peak RSS, and the output's size.

    python bench/bench_scale_dictionary.py --n 1000 --work scale       # uses scale/bucket-1000 (made if missing)

Scan and landmarks touch every photo (their seconds per photo should stay constant); select, features and k-means
work on the ``--select`` faces chosen, whatever N (constant seconds once N has that many faces). The extractor is
a seeded random VGG19 at ``--face-size`` (the cost of a trained one is the same), k-means K=``--k``. Results are
appended to ``bench/results/scale-dictionary.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_scale import PeakRSS, folder_bytes, machine  # noqa: E402

RESULTS = HERE / "results" / "scale-dictionary.json"
STEPS = ("scan", "landmarks", "select", "features", "kmeans")
WORKER_TITLES = ("ray::IDLE", "ray::scan_batch", "ray::landmarks_batch", "ray::FeatureWorker")


def measure(n: int, work: Path, select: int, face_size: int, k: int, workers: int) -> dict:
    from dfd.flows.build_dictionary import DictionaryConfig, build_dictionary
    from dfdcore.dictionary.kmeans import KMeansOptions

    bucket, out = work / f"bucket-{n}", work / f"dictionary-{n}"
    if not bucket.exists():
        raise SystemExit(f"{bucket} missing: make it with bench/make_bucket.py (or run bench_scale.py first)")
    if out.exists():
        raise SystemExit(f"{out} exists: remove it for a first run")
    config = DictionaryConfig(kmeans=KMeansOptions(k=k), select=select, face_size=face_size, random_vgg=True,
                              workers=workers)
    with PeakRSS(titles=WORKER_TITLES) as rss:
        started = time.perf_counter()
        summary = build_dictionary(str(bucket), str(out), config)
        seconds = time.perf_counter() - started
    steps = {name: json.loads((out / ".steps" / f"{name}.json").read_text()).get("seconds") for name in STEPS}
    return {"n": n, "seconds": seconds, "steps": steps, "images": summary.images,
            "failed_images": summary.failed_images, "faces": summary.faces, "selected": summary.selected,
            "seconds_per_photo_scan_landmarks": (steps["scan"] + steps["landmarks"]) / n,
            "timing": summary.timing,  # per step: start-up seconds and steady seconds per item (10th-90th pct)
            "steady_seconds_per_photo_scan_landmarks": _steady_sum(summary.timing),
            "driver_peak_rss_mib": rss.driver / 2**20,
            "worker_peak_rss_mib": sorted(v / 2**20 for v in rss.workers.values())[-4:],
            "output_mib": folder_bytes(out)[0] / 2**20,
            "config": {"select": select, "face_size": face_size, "k": k, "workers": workers},
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _steady_sum(timing: dict) -> float | None:
    rates = [timing.get(step, {}).get("steady_seconds_per_item") for step in ("scan", "landmarks")]
    return None if None in rates else sum(rates)


def table(results: list[dict]) -> str:
    lines = ["| photos | faces | selected | scan | landmarks | scan+landmarks s/photo | steady s/photo | select | "
             "features | k-means | wall | driver peak RSS | worker peak RSS | output |", "|---" * 14 + "|"]
    for r in sorted(results, key=lambda r: r["n"]):
        s = r["steps"]
        lines.append(f"| {r['n']:,} | {r['faces']:,} | {r['selected']:,} | {s['scan']:.0f} s | "
                     f"{s['landmarks']:.0f} s | "
                     f"{r['seconds_per_photo_scan_landmarks']:.4f} | "
                     f"{_num(r.get('steady_seconds_per_photo_scan_landmarks'))} | "
                     f"{s['select']:.1f} s | {s['features']:.0f} s | "
                     f"{s['kmeans']:.0f} s | {r['seconds']:.0f} s | {r['driver_peak_rss_mib']:.0f} MiB | "
                     f"{max(r['worker_peak_rss_mib']):.0f} MiB | {r['output_mib']:.0f} MiB |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = sorted(results, key=lambda r: r["n"])
    ns = [r["n"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(ns, [r["seconds_per_photo_scan_landmarks"] for r in results], "o-", label="wall / N")
    steady = [r.get("steady_seconds_per_photo_scan_landmarks") for r in results]
    if all(v is not None for v in steady):
        axes[0].plot(ns, steady, "s--", label="steady (10th-90th pct)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("scan + landmarks: seconds per photo", fontsize=10)
    for name in ("select", "features", "kmeans"):
        axes[1].plot(ns, [r["steps"][name] for r in results], "o-", label=name)
    axes[1].legend(fontsize=8)
    axes[1].set_title(f"steps on the {results[0]['config']['select']:,} selected: seconds", fontsize=10)
    axes[2].plot(ns, [r["driver_peak_rss_mib"] for r in results], "o-")
    axes[2].set_title("driver peak RSS (MiB)", fontsize=10)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("photos in the collection")
        ax.set_ylim(bottom=0)
    cfg = results[0]["config"]
    fig.suptitle(f"build_dictionary, random VGG19 at {cfg['face_size']} px, K={cfg['k']}, {cfg['workers']} Ray workers "
                 "on 2 CPU cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--work", type=Path, required=True, help="folder holding bucket-N; dictionary-N goes there")
    parser.add_argument("--select", type=int, default=2000)
    parser.add_argument("--face-size", type=int, default=128)
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="only print the table of the results so far")
    parser.add_argument("--plot", action="store_true", help="draw RESULTS.png from all results")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text()) if args.results.exists() else []
    if not args.table:
        result = measure(args.n, args.work, args.select, args.face_size, args.k, args.workers)
        print(json.dumps(result, indent=1), flush=True)
        results = [r for r in results if r["n"] != args.n] + [result]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1))
    print(table(results))
    if args.plot:
        plot(results, args.results.with_suffix(".png"))


if __name__ == "__main__":
    main()
