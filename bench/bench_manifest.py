"""What recording a chunk costs as the manifest grows: N rows appended 8 at a time (a chunk), ``compact_tier``
every 4 appends (as ``restore_bucket``'s driver does), then the final ``compact``; the part write and the
compaction timed apart, and the rerun's plan read (``read_manifest(..., PLAN_COLUMNS)``) at the end.

    python bench/bench_manifest.py --n 1000,4000,16000,64000

Rows are synthetic but shaped like a restore's (2 faces with 5 and 68 landmarks, outputs, timings). Local disk.
Results: ``bench/results/manifest.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_scale import machine  # noqa: E402

RESULTS = HERE / "results" / "manifest.json"
CHUNK, TIER_EVERY = 8, 4


def row(i: int) -> dict:
    face = {"det_box": [10.0, 20.0, 110.0, 140.0], "det_score": 0.9, "lm5": [float(v) for v in range(10)],
            "lm68": [float(v) / 4 for v in range(136)]}
    return {"source_uri": f"/bucket/{i // 1000:04d}/img_{i:07d}.jpg", "relpath": f"{i // 1000:04d}/img_{i:07d}.jpg",
            "content_sha256": f"{i:064x}", "status": "ok", "error": None, "n_faces": 2, "faces": [face, face],
            "outputs": [f"/out/restored_imgs/{i // 1000:04d}/img_{i:07d}.jpg"], "model_id": '{"name":"identity"}',
            "config_hash": "c" * 16, "listing": f"size:{20000 + i};mtime:1796145790.{i}",
            "seconds": {"decode": 0.01, "detect": 0.05, "restore": 0.0, "paste": 0.01, "write": 0.01, "total": 0.08},
            "updated_at": dt.datetime.now(dt.timezone.utc)}


def measure(n: int) -> dict:
    from dfdcore.restoration.compaction import compact, compact_tier
    from dfdcore.restoration.manifest import PLAN_COLUMNS, append_rows, read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "manifest.parquet")
        write_s = tier_s = 0.0
        appends = 0
        for start in range(0, n, CHUNK):
            rows = [row(i) for i in range(start, min(n, start + CHUNK))]
            t0 = time.perf_counter()
            append_rows(uri, rows)
            t1 = time.perf_counter()
            appends += 1
            if appends % TIER_EVERY == 0:
                compact_tier(uri)
            write_s, tier_s = write_s + t1 - t0, tier_s + time.perf_counter() - t1
        t0 = time.perf_counter()
        compact(uri)
        final_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan = read_manifest(uri, PLAN_COLUMNS)
        plan_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(uri).rglob("*.parquet"))
    assert len(plan) == n
    return {"n": n, "appends": appends, "ms_write_per_append": 1000 * write_s / appends,
            "ms_compaction_per_append": 1000 * tier_s / appends, "final_compact_s": final_s, "plan_read_s": plan_s,
            "manifest_mib": size / 2**20, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1000,4000,16000,64000")
    args = parser.parse_args(argv)
    results = []
    for n in (int(v) for v in args.n.split(",")):
        results.append(measure(n))
        r = results[-1]
        print(f"{n:>7,} rows: {r['appends']:>5} appends, write {r['ms_write_per_append']:.1f} ms + compaction "
              f"{r['ms_compaction_per_append']:.1f} ms per append, final compact {r['final_compact_s']:.2f} s, "
              f"plan read {r['plan_read_s']:.2f} s, {r['manifest_mib']:.1f} MiB", flush=True)
    RESULTS.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
