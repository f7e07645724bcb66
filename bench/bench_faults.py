"""Faults at bucket scale: kill -9 the restore_bucket driver mid-run, rerun, kill -9 one Ray worker mid-run, let
the rerun finish; then check that every input has exactly one manifest row, that the outputs on disk are exactly
the outputs the rows name (each once, each a readable image), and count the work redone.

    python bench/bench_faults.py --bucket scale/bucket-16000 --out scale/faults-16000

The flow runs in a child process (the driver: Ray is started from it, as ``dfd`` or a Prefect worker would),
identity model, 2 Ray workers, chunks of 8. The driver is killed once ``--driver-at`` of the inputs have an output
file, the worker once ``--worker-at`` have. Redone work: outputs that existed at a kill and were written again
after it (a new inode: outputs are renamed into place). Results go to ``bench/results/faults.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "faults.json"


def child(bucket: str, out: str, summary_path: str) -> None:
    """The driver: the restore_bucket flow, its summary's counts written to ``summary_path`` at the end."""
    from dataclasses import asdict

    from dfd.flows.restore_bucket import restore_bucket
    from dfdcore.restoration.bulk import RunOptions
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions

    summary = restore_bucket(bucket, out, ModelSpec("identity"), RestoreOptions(), RunOptions(workers=2, chunk=8))
    counts = {k: v for k, v in asdict(summary).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    Path(summary_path).write_text(json.dumps(counts))


def outputs_on_disk(out: Path) -> dict[str, tuple[int, int]]:
    """{path: (inode, mtime_ns)} of every finished output file (temporary ``.part`` files left out)."""
    found = {}
    for root, _, names in os.walk(out / "restored_imgs"):
        for name in names:
            if not name.endswith(".part"):
                path = os.path.join(root, name)
                stat = os.stat(path)
                found[path] = (stat.st_ino, stat.st_mtime_ns)
    return found


def part_files(out: Path) -> list[str]:
    return [os.path.join(r, n) for r, _, names in os.walk(out) for n in names if n.endswith(".part")]


def workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if " ".join(proc.info["cmdline"] or []).startswith("ray::RestoreWorker"):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def start(bucket: Path, out: Path, tag: str) -> tuple[subprocess.Popen, Path]:
    summary = out.parent / f"{out.name}-{tag}.json"
    summary.unlink(missing_ok=True)
    log = open(out.parent / f"{out.name}-{tag}.log", "w")
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(bucket), str(out), str(summary)],
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, summary


def wait_for_outputs(out: Path, count: int, proc: subprocess.Popen) -> float:
    started = time.perf_counter()
    while len(outputs_on_disk(out)) < count:
        if proc.poll() is not None:
            raise SystemExit(f"the run ended (rc {proc.returncode}) before {count} outputs")
        time.sleep(2)
    return time.perf_counter() - started


def recorded(out: Path) -> dict[str, dict]:
    from dfdcore.restoration.manifest import read_manifest

    return read_manifest(str(out / "manifest.parquet"))


def redone(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> int:
    return sum(1 for path, stamp in before.items() if path in after and after[path][0] != stamp[0])


def verify(bucket: Path, out: Path) -> dict:
    """Rows per input, outputs against rows, every output decoded."""
    import pyarrow.dataset as ds
    from PIL import Image

    inputs = sum(len(names) for _, _, names in os.walk(bucket))
    rows = recorded(out)
    stored = ds.dataset(str(out / "manifest.parquet")).count_rows()  # after the final compaction: one per input
    named = [uri for row in rows.values() for uri in row["outputs"] or ()]
    on_disk = outputs_on_disk(out)
    unreadable = 0
    for path in on_disk:
        try:
            with Image.open(path) as image:
                image.load()
        except Exception:  # noqa: BLE001 - counted
            unreadable += 1
    statuses: dict[str, int] = {}
    for row in rows.values():
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    died = sum(1 for row in rows.values() if "worker died" in (row.get("error") or ""))
    return {"inputs": inputs, "rows": len(rows), "rows_stored": stored, "statuses": statuses,
            "outputs_named": len(named), "outputs_named_distinct": len(set(named)), "outputs_on_disk": len(on_disk),
            "outputs_not_named": len(set(on_disk) - set(named)), "named_missing": len(set(named) - set(on_disk)),
            "unreadable_outputs": unreadable, "rows_worker_died": died, "part_files_left": len(part_files(out))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="a new output folder")
    parser.add_argument("--driver-at", type=float, default=0.3, help="share of inputs with outputs at the kill")
    parser.add_argument("--worker-at", type=float, default=0.65)
    args = parser.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: the fault run needs a new output folder")
    inputs = sum(len(names) for _, _, names in os.walk(args.bucket))
    result: dict = {"bucket": str(args.bucket), "inputs": inputs, "date": time.strftime("%Y-%m-%d %H:%M")}
    began = time.perf_counter()

    driver, _ = start(args.bucket, args.out, "run1")
    result["driver_kill_after_s"] = wait_for_outputs(args.out, int(args.driver_at * inputs), driver)
    spawned = psutil.Process(driver.pid).children(recursive=True)  # Ray's head processes, Prefect's server
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    at_kill = outputs_on_disk(args.out)
    rows_at_kill = recorded(args.out)
    gone = time.perf_counter()
    while workers() and time.perf_counter() - gone < 120:
        time.sleep(1)
    orphans, described = [], set()
    for proc in spawned:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                described.add(" ".join(proc.cmdline()[:2])[-60:])
                orphans.append(proc)
        except psutil.Error:
            continue
    result["driver_kill"] = {"outputs_on_disk": len(at_kill), "rows_recorded": len(rows_at_kill),
                             "workers_gone_after_s": round(time.perf_counter() - gone, 1),
                             "workers_left": len(workers()), "part_files": len(part_files(args.out)),
                             "orphaned_processes": sorted(described)}
    for proc in workers() + orphans:  # what outlives its driver would compete with the rerun: counted, ended
        try:
            proc.kill()
        except psutil.Error:
            pass

    rerun, summary_path = start(args.bucket, args.out, "run2")
    wait_for_outputs(args.out, int(args.worker_at * inputs), rerun)
    victims = workers()
    before_worker_kill = outputs_on_disk(args.out)
    victims[0].kill()
    result["worker_kill"] = {"outputs_on_disk": len(before_worker_kill), "workers_before": len(victims)}
    rerun.wait()
    result["rerun_rc"] = rerun.returncode
    result["rerun_summary"] = json.loads(summary_path.read_text()) if summary_path.exists() else None
    final = outputs_on_disk(args.out)
    result["redone_after_driver_kill"] = redone(at_kill, final)
    # written again after the worker kill, and not a file left from the driver kill still waiting for its redo
    result["redone_after_worker_kill"] = sum(
        1 for path, stamp in before_worker_kill.items() if path in final and final[path][0] != stamp[0]
        and (path not in at_kill or at_kill[path][0] != stamp[0]))
    result["seconds"] = time.perf_counter() - began

    third, third_summary = start(args.bucket, args.out, "run3")  # over the unchanged bucket: nothing to do
    third.wait()
    result["third_run_summary"] = json.loads(third_summary.read_text()) if third_summary.exists() else None
    result["check"] = verify(args.bucket, args.out)
    print(json.dumps(result, indent=1))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results + [result], indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
    else:
        main()
