"""How restore_bucket grows with the bucket: wall time, photos/s, peak RSS of the driver and of each Ray worker,
Ray object-store use and spilling, output and manifest sizes, time per manifest update, and the rerun.

    python bench/bench_scale.py --n 1000 --work scale      # makes scale/bucket-1000 if missing
    python bench/bench_scale.py --n 1000,4000,16000 --work scale --plot
    python bench/bench_scale.py --n 1000 --work scale/small --face-px 40,200 --max-side 400 \
        --model small-dfdnet --results bench/results/scale-small-dfdnet.json

Each N: a bucket from ``bench/make_bucket.py`` (same seed: the 1,000 photos are the first of the 4,000), the flow
with ``--model`` (identity: detection, alignment, paste-back, encoding, everything but the network; small-dfdnet: a
seeded random DFDNet at 128 px, 16 channels, K=64; official-size: the official 512 px, 64 channels, K=512 with random
weights) on ``--workers`` Ray actors, then a rerun over the unchanged
bucket (photos read, seconds). Results are added to ``--results`` (``bench/results/scale.json``); ``--plot`` draws
the PNG beside it from all of them. Run each N in a process of its own: the driver's RSS is this process's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.json"


class PeakRSS:
    """Samples the RSS of this process (the driver: the flow runs in it) and of every Ray worker process
    (``titles``: how their titles start) every ``interval`` seconds, and Ray's object store every 10th time;
    peaks in bytes (object store: MiB)."""

    def __init__(self, interval: float = 0.5, titles: tuple[str, ...] = ("ray::RestoreWorker",)) -> None:
        self.interval, self.titles, self.driver, self.workers = interval, titles, 0, {}
        self.store_used_mib, self.store_spilled_mib = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        ticks = 0
        while not self._stop.wait(self.interval):
            ticks += 1
            self.driver = max(self.driver, me.memory_info().rss)
            if ticks % 10 == 0:
                store = object_store()
                self.store_used_mib = max(self.store_used_mib, store.get("used_mib") or 0)
                self.store_spilled_mib = max(self.store_spilled_mib, store.get("spilled_mib") or 0)
            for proc in psutil.process_iter(["pid", "cmdline"]):
                try:
                    title = " ".join(proc.info["cmdline"] or [])
                    if title.startswith(self.titles):
                        self.workers[proc.pid] = max(self.workers.get(proc.pid, 0), proc.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue


def folder_bytes(path: Path) -> tuple[int, int]:
    """(bytes, files) under ``path``."""
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


def object_store() -> dict:
    """Ray's object store now: used and spilled MiB (from ``ray memory --stats-only``'s summary); {} before this
    process has started Ray."""
    import re

    import ray
    from ray._private.internal_api import memory_summary

    if not ray.is_initialized():
        return {}
    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    used = re.search(r"Plasma memory usage (\d+) MiB", text)
    spilled = re.search(r"Spilled (\d+) MiB", text)
    return {"used_mib": int(used.group(1)) if used else None, "spilled_mib": int(spilled.group(1)) if spilled else 0}


MODELS = {  # --model: what the workers run
    "identity": {"name": "identity"},
    "small-dfdnet": {"name": "dfdnet", "random_weights": True, "face_size": 128, "ngf": 16, "k": 64},
    "official-size": {"name": "dfdnet", "random_weights": True, "face_size": 512, "ngf": 64, "k": 512},
}


def run_once(bucket: Path, out: Path, workers: int, chunk: int, model: str = "identity") -> dict:
    from dfd.flows.restore_bucket import restore_bucket
    from dfdcore.restoration.bulk import RunOptions
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions

    with PeakRSS() as rss:
        started, started_wall = time.perf_counter(), time.time()
        summary = restore_bucket(str(bucket), str(out), ModelSpec(**MODELS[model]), RestoreOptions(),
                                 RunOptions(workers=workers, chunk=chunk))
        seconds = time.perf_counter() - started
    processed = summary.restored + summary.no_face + summary.failed
    steady = steady_rate(out, started_wall)
    return {"seconds": seconds, **steady, **stage_seconds(out, started_wall),
            "listed": summary.listed, "restored": summary.restored,
            "no_face": summary.no_face, "failed": summary.failed, "skipped": summary.skipped, "read": summary.read,
            "faces": summary.faces,
            "photos_per_second": processed / seconds if processed else None,
            "seconds_per_photo": seconds / processed if processed else None,
            "driver_peak_rss_mib": rss.driver / 2**20,
            "worker_peak_rss_mib": sorted(v / 2**20 for v in rss.workers.values()),
            "manifest_appends": summary.manifest_appends,
            "seconds_per_manifest_append": summary.manifest_seconds / max(1, summary.manifest_appends),
            "object_store_peak_used_mib": rss.store_used_mib, "object_store_peak_spilled_mib": rss.store_spilled_mib}


def steady_rate(out: Path, started_wall: float) -> dict:
    """From the manifest rows' ``updated_at``: seconds from the run's start to the first row (start-up: flow, Ray,
    actors, listing, planning) and seconds per photo between the 10th and 90th percentile of rows written this run
    (the marginal cost, without start-up and the last chunks' tail)."""
    import pyarrow.dataset as ds

    stamps = ds.dataset(str(out / "manifest.parquet")).to_table(columns=["updated_at"])["updated_at"]
    times = sorted(t.timestamp() for t in stamps.to_pylist() if t.timestamp() >= started_wall)
    if len(times) < 20:
        return {"startup_seconds": None, "steady_seconds_per_photo": None}
    lo, hi = times[len(times) // 10], times[9 * len(times) // 10]
    return {"startup_seconds": times[0] - started_wall,
            "steady_seconds_per_photo": (hi - lo) / (9 * len(times) // 10 - len(times) // 10)}


def stage_seconds(out: Path, since: float = 0.0) -> dict:
    """Per stage (decode, detect, restore — the network —, paste, write), the seconds the workers spent on the rows
    written after ``since`` (a Unix time), summed from the manifest's ``seconds``; and the network's seconds per
    face restored."""
    import pyarrow.dataset as ds

    rows = ds.dataset(str(out / "manifest.parquet")).to_table(
        columns=["seconds", "n_faces", "status", "updated_at"]).to_pylist()
    rows = [r for r in rows if r["updated_at"].timestamp() >= since and r["seconds"]]
    stages = {name: sum(r["seconds"].get(name) or 0.0 for r in rows) for name in rows[0]["seconds"]} if rows else {}
    faces = sum(r["n_faces"] or 0 for r in rows if r["status"] == "ok")
    return {"stage_seconds": stages, "faces_restored": faces,
            "network_seconds_per_face": stages.get("restore", 0.0) / faces if faces else None}


def measure(n: int, work: Path, workers: int, chunk: int, bucket_args: list[str], model: str = "identity") -> dict:
    bucket = work / f"bucket-{n}"
    if not bucket.exists():
        subprocess.run([sys.executable, str(HERE / "make_bucket.py"), "--n", str(n), "--out", str(bucket),
                        *bucket_args], check=True)
    out = work / (f"out-{n}" if model == "identity" else f"out-{model}-{n}")
    if out.exists():
        raise SystemExit(f"{out} exists: remove it for a first run")
    first = run_once(bucket, out, workers, chunk, model)
    output_bytes, output_files = folder_bytes(out / "restored_imgs")
    manifest_bytes, manifest_files = folder_bytes(out / "manifest.parquet")
    rerun = run_once(bucket, out, workers, chunk, model)
    return {"n": n, "model": model, "workers": workers, "chunk": chunk, "bucket_args": bucket_args,
            "first": first, "rerun": rerun,
            "output_mib": output_bytes / 2**20, "output_files": output_files,
            "manifest_mib": manifest_bytes / 2**20, "manifest_files": manifest_files,
            "input_mib": folder_bytes(bucket)[0] / 2**20, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}


def machine() -> dict:
    return {"cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average": os.getloadavg(), "gpu": None}


def plot(results: list[dict], path: Path) -> None:
    """One panel per figure, one line per model (steady seconds per photo dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("seconds per photo (wall / N; steady: dashed)", lambda r: r["first"]["seconds_per_photo"]),
              ("driver peak RSS (MiB)", lambda r: r["first"]["driver_peak_rss_mib"]),
              ("ms per manifest append", lambda r: 1000 * r["first"]["seconds_per_manifest_append"]),
              ("rerun seconds / first run seconds", lambda r: r["rerun"]["seconds"] / r["first"]["seconds"])]
    models = sorted({r.get("model", "identity") for r in results})
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for model in models:
        series = sorted((r for r in results if r.get("model", "identity") == model), key=lambda r: r["n"])
        ns = [r["n"] for r in series]
        steady = [r["first"].get("steady_seconds_per_photo") for r in series]
        for ax, (title, value) in zip(axes, panels):
            line, = ax.plot(ns, [value(r) for r in series], "o-", label=model)
            if ax is axes[0] and all(v is not None for v in steady):
                ax.plot(ns, steady, "s--", color=line.get_color())
    for ax, (title, _) in zip(axes, panels):
        ax.set_xscale("log")
        ax.set_xlabel("photos in the bucket")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"restore_bucket, 2 Ray workers on 2 CPU cores; bucket "
                 f"{' '.join(results[0].get('bucket_args') or [])}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: list[dict]) -> str:
    """The markdown table of docs/scale.md and bench/RESULTS.md."""
    lines = ["| photos | wall (first run) | photos/s | s per photo | start-up | steady s per photo | driver peak RSS | "
             "worker peak RSS | manifest appends | ms per append | rerun | rerun reads | outputs | manifest |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: r["n"]):
        f, g = r["first"], r["rerun"]
        lines.append(
            f"| {r['n']:,} | {f['seconds']:.0f} s | {f['photos_per_second']:.2f} | {f['seconds_per_photo']:.3f} | "
            f"{_num(f.get('startup_seconds'), '.0f', ' s')} | {_num(f.get('steady_seconds_per_photo'), '.4f')} | "
            f"{f['driver_peak_rss_mib']:.0f} MiB | {max(f['worker_peak_rss_mib']):.0f} MiB | {f['manifest_appends']} | "
            f"{1000 * f['seconds_per_manifest_append']:.0f} | {g['seconds']:.1f} s "
            f"({100 * g['seconds'] / f['seconds']:.1f} %) | {g['read']} | {r['output_mib']:.0f} MiB | "
            f"{r['manifest_mib']:.2f} MiB |")
    return "\n".join(lines)


def _num(value, spec: str, unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1000", help="bucket sizes, comma-separated")
    parser.add_argument("--work", type=Path, required=True, help="folder for the buckets and outputs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--face-px", default="40,600", help="make_bucket.py --face-px (for buckets it makes)")
    parser.add_argument("--max-side", default="1024", help="make_bucket.py --max-side (for buckets it makes)")
    parser.add_argument("--model", choices=sorted(MODELS), default="identity")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON file the results are added to")
    parser.add_argument("--plot", action="store_true", help="draw the PNG beside --results from its results and "
                        "those of --plot-with")
    parser.add_argument("--plot-with", type=Path, nargs="*", default=[],
                        help="more results files (other models) drawn in the same plot")
    parser.add_argument("--table", action="store_true", help="only print the table of the results so far")
    parser.add_argument("--stages", type=Path, help="only print the per-stage seconds of this output folder's rows")
    args = parser.parse_args(argv)
    if args.stages:
        print(json.dumps(stage_seconds(args.stages), indent=1))
        return
    if args.table:
        print(table(json.loads(args.results.read_text())))
        if args.plot:
            plot(_with(json.loads(args.results.read_text()), args.plot_with), args.results.with_suffix(".png"))
        return
    bucket_args = ["--face-px", args.face_px, "--max-side", args.max_side]
    results = json.loads(args.results.read_text()) if args.results.exists() else []
    for n in (int(v) for v in args.n.split(",")):
        args.work.mkdir(parents=True, exist_ok=True)
        result = measure(n, args.work, args.workers, args.chunk, bucket_args, args.model)
        print(json.dumps(result, indent=1), flush=True)
        results = [r for r in results if r["n"] != n] + [result]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(_with(results, args.plot_with), args.results.with_suffix(".png"))


def _with(results: list[dict], others: list[Path]) -> list[dict]:
    return results + [r for path in others for r in json.loads(path.read_text())]


if __name__ == "__main__":
    main()
