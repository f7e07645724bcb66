"""Ray Data against dfd's own actors for bulk restoration: the same bucket, model, workers and chunk size, a fresh
output each; wall time, steady seconds per photo, driver peak RSS.

    python bench/bench_ray_data.py --bucket scale/bucket-1000 --work scale/raydata

``actors``: ``dfd.tasks.restore.restore_parallel`` (what ``restore_bucket`` runs: the driver plans, hands chunks
of 8 to 2 ``RestoreWorker`` actors, 2 chunks in flight each, appends each chunk's rows to the manifest).
``ray-data``: ``ray.data.from_items`` over the planned sources → ``map_batches`` with a callable class holding the
``Restorer`` on ``ActorPoolStrategy(size=2)``, batches of 8 → the driver iterates the output batches (rows
pickled in one column) and appends each to the manifest. Everything but the execution engine is shared:
``restore_sources`` restores each batch in both. Results: ``bench/results/ray-data.json``.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_scale import PeakRSS, machine, steady_rate  # noqa: E402

RESULTS = HERE / "results" / "ray-data.json"


class RestoreBatch:
    """Ray Data's callable class: one Restorer per actor; a batch of sources → their manifest rows (pickled)."""

    def __init__(self, out: str, threads: int) -> None:
        import torch

        from dfdcore.restoration.bulk import RunOptions
        from dfdcore.restoration.restorer import ModelSpec, RestoreOptions, Restorer

        torch.set_num_threads(threads)
        self.out, self.run = out, RunOptions()
        self.restorer = Restorer.from_spec(ModelSpec("identity"), RestoreOptions(), self.run.batch_size)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from dfdcore.io.storage import Source
        from dfdcore.restoration.bulk import restore_sources

        sources = [pickle.loads(item) for item in batch["source"]]
        assert all(isinstance(s, Source) for s in sources)
        summary = restore_sources(sources, self.out, self.restorer, self.run, previous={}, record=False)
        return {"rows": np.array([pickle.dumps(row) for row in summary.rows], dtype=object)}


def run_ray_data(bucket: str, out: str, chunk: int, workers: int) -> int:
    import numpy as np  # noqa: F401 - Ray Data's numpy batches
    import ray

    from dfd.tasks.runtime import ensure_ray, threads_per_worker
    from dfdcore.io.storage import RESTORABLE_EXTENSIONS, join_uri, list_images
    from dfdcore.restoration.bulk import MANIFEST_NAME, prepare_run
    from dfdcore.restoration.compaction import compact, compact_tier
    from dfdcore.restoration.manifest import append_rows

    ensure_ray()
    planned, _, _ = prepare_run(list_images([bucket], RESTORABLE_EXTENSIONS, with_others=True), out)
    dataset = ray.data.from_items([{"source": pickle.dumps(s)} for s in planned])
    restored = dataset.map_batches(RestoreBatch, batch_size=chunk, batch_format="numpy",
                                   compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
                                   fn_constructor_kwargs={"out": out, "threads": threads_per_worker(workers)})
    manifest, appends = join_uri(out, MANIFEST_NAME), 0
    for batch in restored.iter_batches(batch_size=None, batch_format="numpy"):
        append_rows(manifest, [pickle.loads(item) for item in batch["rows"]])
        appends += 1
        if appends % 4 == 0:
            compact_tier(manifest)
    compact(manifest)
    return len(planned)


def run_actors(bucket: str, out: str, chunk: int, workers: int) -> int:
    from dfd.tasks.restore import restore_parallel
    from dfdcore.io.storage import RESTORABLE_EXTENSIONS, list_images
    from dfdcore.restoration.bulk import RunOptions
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions

    summary = restore_parallel(list_images([bucket], RESTORABLE_EXTENSIONS, with_others=True), out,
                               ModelSpec("identity"), RestoreOptions(), RunOptions(workers=workers, chunk=chunk))
    return summary.images


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--work", type=Path, required=True, help="outputs go to WORK/actors and WORK/ray-data")
    parser.add_argument("--engine", choices=("actors", "ray-data"), required=True, help="one per process (RSS)")
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    out = args.work / args.engine
    if out.exists():
        raise SystemExit(f"{out} exists: remove it for a first run")
    runner = run_actors if args.engine == "actors" else run_ray_data
    titles = ("ray::RestoreWorker", "ray::MapWorker", "ray::_MapWorker", "ray::IDLE")
    with PeakRSS(titles=titles) as rss:
        started, started_wall = time.perf_counter(), time.time()
        photos = runner(args.bucket, str(out), args.chunk, args.workers)
        seconds = time.perf_counter() - started
    result = {"engine": args.engine, "bucket": args.bucket, "photos": photos, "seconds": seconds,
              **steady_rate(out, started_wall), "seconds_per_photo": seconds / photos,
              "driver_peak_rss_mib": rss.driver / 2**20,
              "worker_peak_rss_mib": sorted(v / 2**20 for v in rss.workers.values())[-4:],
              "chunk": args.chunk, "workers": args.workers, "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(result, indent=1))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps(results + [result], indent=1))


if __name__ == "__main__":
    main()
