"""Training throughput (images/s) with 1 and 2 Ray Train workers (gloo DDP on the CPU), and one process without Ray.

images/s = timed optimisation steps × global batch / wall seconds of those steps. The first step (allocations,
Adam state, DDP bucket set-up) is never timed, nor are Ray start-up, model building, the final checkpoint/sample
grid or the export: for the Ray rows the clock is the ``loss_g`` metric history that rank 0 logs to a throwaway
MLflow SQLite run (``Metric.timestamp``, ms, taken right after each step), so the timed window runs from the
end of step 1 to the end of step N. Rows:

  reference  ``dfdcore.training.Trainer`` in one process, ``--threads`` torch threads, each step timed with
             ``perf_counter`` (no logging at all)
  ray        ``dfd.tasks.train.fit`` with W workers (cpu_count // W torch threads each, as tasks/train.py gives them)
             ``log_every=1``: one MLflow ``log_batch`` + ``ray.train.report`` after every step (per-step times)
  ray sparse the same with ``log_every=N``: metrics logged after steps 1 and N only, so the window holds the
             steps and one ``log_batch`` — the difference to ``ray`` is the per-step logging/report overhead

Configurations: ``small`` (the tests' network: 128-px faces, ngf 8, discriminator width 8, K 8; global batch 2 and 4)
and ``official`` (512-px faces, ngf 64, discriminator width 64, random K 16 dictionary; global batch 2; a few
steps, each takes minutes on 2 CPU cores). Faces: the portraits of shared/data/faces, detected and aligned once into
a faceset (7 train / 2 test photos, as in the tests); VGG19 random (``random_vgg``). Every row runs in its own
child process with its own local Ray instance (``DFD_HOME`` in a temporary folder, ``RAY_ADDRESS`` cleared).

Besides throughput each row records peak RSS (reference: ``ru_maxrss``; Ray: ``VmHWM`` of each of this run's
RayTrainWorker processes), the load average before and after, and two contention indicators over the timed window:
the cores used by the training processes (their CPU seconds / wall seconds) and by the whole machine
(/proc/stat busy time / wall seconds) — the difference is what everything else on the machine took.

    python bench/bench_train.py --out bench/results/train.json             # small + official (about 30 min)
    python bench/bench_train.py --only small --small-steps 10              # smoke run (about 3 min)

Over 400 lines on purpose: one self-contained script (parent, child rows and their measurements), run as a file;
its parts share the row format and are read together with bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

BENCH = Path(__file__).parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))
from bench_generator import machine

SHARED = Path(os.environ.get("DFD_SHARED", ROOT.parent / "shared"))
CONFIGS = {  # name → (face_size, ngf, d_dim, K, global batches)
    "small": (128, 8, 8, 8, (2, 4)),
    "official": (512, 64, 64, 16, (2,)),
}


def prepare(cache: Path, name: str) -> Path:
    """A faceset of the portrait photos at the configuration's size and a random K-entry dictionary → folder."""
    from dfdcore import ComponentDictionary, GeneratorConfig
    from dfdcore.data.faceset import faces_from_photos, write_faceset
    from dfdcore.io.storage import list_images

    face_size, ngf, _, k, _ = CONFIGS[name]
    folder = cache / f"train_{face_size}_{ngf}_{k}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "faceset.parquet").exists():
        print(f"aligning the portraits to {face_size} px ...", flush=True)
        rows, skipped = faces_from_photos(list_images([str(SHARED / "data/faces/portraits")]), face_size)
        if skipped:
            print(f"skipped: {skipped}", file=sys.stderr)
        write_faceset(str(folder / "faceset.parquet"), rows, face_size, test_fraction=0.2)
    if not (folder / "dictionary.safetensors").exists():
        ComponentDictionary.random(GeneratorConfig(face_size, ngf), k=k, seed=0).save(folder / "dictionary.safetensors")
    return folder


def train_config(args, data: Path, out: str, batch: int, workers: int, log_every: int):
    from dfdcore.training import TrainConfig

    face_size, ngf, d_dim, _, _ = CONFIGS[args.config]
    big = 10**9  # no checkpoint or sample grid inside the timed window (the last step always writes both)
    return TrainConfig(faceset=str(data / "faceset.parquet"), dictionary=str(data / "dictionary.safetensors"),
                       out=out, face_size=face_size, ngf=ngf, d_dim=d_dim, random_vgg=True, steps=args.steps,
                       batch_size=batch, workers=workers, log_every=log_every, checkpoint_every=big,
                       sample_every=big, samples=1, seed=0)


def machine_busy_seconds() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0)


def child_reference(args, data: Path) -> dict:
    """One process, no Ray: each train_step timed."""
    import torch

    from dfdcore.training import Trainer

    torch.set_num_threads(args.threads)
    loadavg_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dfdb") as tmp:
        trainer = Trainer(train_config(args, data, tmp, args.batch, 1, 1))
        seconds, cpu, busy = [], [], []
        for _ in range(args.steps):
            t0, c0, b0 = time.perf_counter(), time.process_time(), machine_busy_seconds()
            trainer.train_step()
            seconds.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            busy.append(machine_busy_seconds() - b0)
    timed = sum(seconds[1:])
    return {"step_seconds": seconds, "timed_seconds": timed,
            "training_cores": sum(cpu[1:]) / timed, "machine_busy_cores": sum(busy[1:]) / timed,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30,
            "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg()}


def child_breakdown(args, data: Path) -> dict:
    """Where one single-process step's time goes: ``Trainer.train_step`` replayed phase by phase (same calls, same
    order, float32 on the CPU) after ``args.steps - 1`` ordinary warm-up steps."""
    import torch

    from dfdcore.data.faceset import training_batch
    from dfdcore.training import Trainer
    from dfdcore.training.losses import hinge_d_loss, hinge_g_loss, pixel_loss

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dfdb") as tmp:
        t = Trainer(train_config(args, data, tmp, args.batch, 1, 1))
        for _ in range(args.steps - 1):
            t.train_step()
        cfg, w, phases = t.cfg, t.cfg.loss_weights, {}
        clock = [time.perf_counter()]

        def mark(name: str) -> None:
            now = time.perf_counter()
            phases[name] = phases.get(name, 0.0) + now - clock[0]
            clock[0] = now

        batch = training_batch(t.faces, t.batch_positions(t.step, 1), cfg.seed, t.degradation)
        lq, hq, boxes = batch.lq, batch.hq, batch.boxes
        mark("data (decode, degrade)")
        t.discriminator.requires_grad_(False)
        restored = t.generator(lq, boxes)
        mark("G forward")
        pixel = pixel_loss(restored, hq)
        content, style = t.perceptual(restored, hq)
        mark("perceptual loss forward (VGG19 on restored and target)")
        adversarial = hinge_g_loss(t.discriminator(restored))
        mark("D forward on restored (G step)")
        loss_g = w.pixel * pixel + w.perceptual * content + w.style * style + w.adversarial * adversarial
        t.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        mark("G-step backward (through D, VGG loss, G)")
        t.opt_g.step()
        mark("Adam (G)")
        t.discriminator.requires_grad_(True)
        loss_d = hinge_d_loss(t.discriminator(hq), t.discriminator(restored.detach()))
        mark("D forward real + fake (D step)")
        t.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        mark("D-step backward")
        t.opt_d.step()
        mark("Adam (D)")
    total = sum(phases.values())
    return {"phases_seconds": phases, "total_seconds": total, "warmup_steps": args.steps - 1,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30,
            "loadavg_after": os.getloadavg()}


class WorkerSampler(threading.Thread):
    """Every ``period`` s: CPU seconds and VmHWM of this process's RayTrainWorker descendants, machine busy time."""

    def __init__(self, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        import psutil

        self.period, self.me, self.stop = period, psutil.Process(), threading.Event()
        self.samples: list[tuple[float, float, float]] = []  # (unix ms, workers' CPU s, machine busy s)
        self.hwm: dict[int, int] = {}  # pid → VmHWM bytes
        self.cpu: dict[int, float] = {}  # pid → last CPU seconds seen (a worker's CPU stays counted once it exits)

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                children = self.me.children(recursive=True)
            except psutil.Error:
                children = []
            for p in children:
                try:
                    if "RayTrainWorker" not in " ".join(p.cmdline()):
                        continue
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
                    status = Path(f"/proc/{p.pid}/status").read_text()
                    hwm = [l for l in status.splitlines() if l.startswith("VmHWM:")]
                    if hwm:
                        self.hwm[p.pid] = int(hwm[0].split()[1]) * 1024
                except (psutil.Error, OSError):
                    continue
            self.samples.append((time.time() * 1000, sum(self.cpu.values()), machine_busy_seconds()))
            self.stop.wait(self.period)

    def rates(self, start_ms: float, end_ms: float) -> tuple[float | None, float | None]:
        """(training cores, machine busy cores) between the first and last samples inside [start, end]."""
        inside = [s for s in self.samples if start_ms <= s[0] <= end_ms]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1000 * self.period:
            return None, None
        wall = (inside[-1][0] - inside[0][0]) / 1000
        return (inside[-1][1] - inside[0][1]) / wall, (inside[-1][2] - inside[0][2]) / wall


def child_ray(args, data: Path) -> dict:
    """tasks.train.fit with ``args.workers`` workers; step times from the MLflow loss_g timestamps."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="dfdb") as tmp:
        os.environ.pop("RAY_ADDRESS", None)  # never join somebody else's cluster
        os.environ["DFD_HOME"] = tmp  # short: Ray's socket paths live under it
        from dfd.tasks.train import Tracking, fit

        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        experiment = client.create_experiment("bench", artifact_location=Path(tmp, "artifacts").as_uri())
        run_id = client.create_run(experiment).info.run_id
        log_every = args.steps if args.sparse else 1
        cfg = train_config(args, data, str(Path(tmp) / "out"), args.batch, args.workers, log_every)
        loadavg_before = os.getloadavg()
        sampler = WorkerSampler()
        sampler.start()
        started = time.perf_counter()
        fit(cfg, Tracking(client.tracking_uri, run_id))
        fit_seconds = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        loadavg_after = os.getloadavg()
        history = sorted((m.step, m.timestamp) for m in client.get_metric_history(run_id, "loss_g"))
        import ray

        ray.shutdown()
    stamps = dict(history)
    first, last = stamps[1], stamps[args.steps]
    timed = (last - first) / 1000
    steps = sorted(stamps)
    intervals = [(stamps[b] - stamps[a]) / 1000 / (b - a) for a, b in pairwise(steps)]
    training_cores, busy_cores = sampler.rates(first, last)
    return {"logged_steps": steps, "step_seconds_from_timestamps": intervals, "timed_seconds": timed,
            "fit_seconds": fit_seconds, "training_cores": training_cores, "machine_busy_cores": busy_cores,
            "peak_rss_gib_per_worker": sorted(v / 2**30 for v in sampler.hwm.values()),
            "peak_rss_gib": sum(sampler.hwm.values()) / 2**30 if sampler.hwm else None,
            "loadavg_before": loadavg_before, "loadavg_after": loadavg_after}


def wait_quiet(max_busy: float, timeout: float, window: float = 5.0) -> dict:
    """Wait (at most ``timeout`` s) until the machine's busy cores over ``window`` s drop below ``max_busy``: other
    people's jobs share these 2 cores, and under contention torch's spinning OpenMP threads slow down many-fold."""
    started = time.perf_counter()
    while True:
        b0 = machine_busy_seconds()
        time.sleep(window)
        busy = (machine_busy_seconds() - b0) / window
        waited = time.perf_counter() - started
        if busy < max_busy or waited >= timeout:
            return {"busy_cores_before": busy, "waited_seconds": waited, "quiet": busy < max_busy}


def run_child(args, config: str, mode: str, batch: int, workers: int, steps: int, sparse: bool) -> dict:
    """One row in a child process; retried (up to ``--tries`` times) while other jobs took more than
    ``--max-foreign`` cores during its timed window. Every try is kept in ``tries``."""
    tries = []
    for _ in range(args.tries if config == "small" else args.official_tries):
        quiet = wait_quiet(args.quiet_below, args.quiet_timeout)
        cmd = [sys.executable, __file__, "--cache", str(args.cache), "--threads", str(args.threads),
               "--child", config, mode, str(batch), str(workers), str(steps), str(int(sparse))]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout[-3000:], proc.stderr[-6000:], file=sys.stderr)
            raise SystemExit(f"child {config} {mode} b={batch} w={workers} failed")
        r = json.loads(line[0][7:])
        foreign = None if r["machine_busy_cores"] is None else r["machine_busy_cores"] - r["training_cores"]
        tries.append(quiet | r | {"foreign_cores": foreign, "seconds_per_step": r["timed_seconds"] / (steps - 1)})
        print(f"  try {len(tries)}: {tries[-1]['seconds_per_step']:.3f} s/step, other jobs "
              f"{'?' if foreign is None else f'{foreign:.2f}'} cores", flush=True)
        if foreign is not None and foreign <= args.max_foreign:
            break
    r = min(tries, key=lambda t: t["seconds_per_step"])  # the least disturbed try
    face_size, ngf, d_dim, k, _ = CONFIGS[config]
    timed_steps = steps - 1
    row = {"config": config, "face_size": face_size, "ngf": ngf, "d_dim": d_dim, "k": k,
           "mode": mode + (" sparse" if sparse else ""), "workers": workers, "global_batch": batch,
           "torch_threads_per_process": args.threads if mode == "reference" else max(1, (os.cpu_count() or 1) // workers),
           "steps": steps, "timed_steps": timed_steps,
           "images_per_second": timed_steps * batch / r["timed_seconds"]} | r | {"tries": tries}
    cores = "-" if r["training_cores"] is None else f"{r['training_cores']:.2f}"
    busy = "-" if r["machine_busy_cores"] is None else f"{r['machine_busy_cores']:.2f}"
    rss = "-" if r["peak_rss_gib"] is None else f"{r['peak_rss_gib']:.2f}"
    print(f"{config:8} {row['mode']:10} w={workers} b={batch} {timed_steps:3d} steps  {row['seconds_per_step']:8.3f} s/step "
          f"{row['images_per_second']:7.3f} img/s  peak RSS {rss} GiB  cores train/machine {cores}/{busy}  "
          f"loadavg {r['loadavg_before'][0]:.2f}→{r['loadavg_after'][0]:.2f}", flush=True)
    return row


def breakdown(args, config: str) -> dict:
    quiet = wait_quiet(args.quiet_below, args.quiet_timeout)
    batch = CONFIGS[config][4][0]
    cmd = [sys.executable, __file__, "--cache", str(args.cache), "--threads", str(args.threads),
           "--child", config, "breakdown", str(batch), "1", "2", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
        print(proc.stdout[-3000:], proc.stderr[-6000:], file=sys.stderr)
        raise SystemExit(f"breakdown {config} failed")
    r = json.loads(line[0][7:])
    print(f"{config} b={batch}: one step {r['total_seconds']:.2f} s")
    for name, seconds in r["phases_seconds"].items():
        print(f"  {name:55} {seconds:8.2f} s  {100 * seconds / r['total_seconds']:5.1f} %")
    return {"config": config, "mode": "breakdown", "global_batch": batch, "threads": args.threads} | quiet | r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["small", "official", "all"], default="all")
    parser.add_argument("--small-steps", type=int, default=30, help="steps per small row (the first is not timed)")
    parser.add_argument("--official-steps", type=int, default=2, help="steps per official-size row")
    parser.add_argument("--workers", default="1,2", help="Ray Train worker counts")
    parser.add_argument("--modes", default="reference,ray,sparse",
                        help="rows to run: reference (no Ray), ray (log_every=1), sparse (log_every=N, small only)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the reference (no Ray) row")
    parser.add_argument("--small-repeats", type=int, default=1, help="run every small row this many times (interleaved)")
    parser.add_argument("--official-repeats", type=int, default=1)
    parser.add_argument("--quiet-below", type=float, default=0.3,
                        help="before each row wait until the machine's busy cores (5 s window) fall below this")
    parser.add_argument("--tries", type=int, default=4, help="tries of a small row while the machine is disturbed")
    parser.add_argument("--official-tries", type=int, default=1, help="tries of an official-size row")
    parser.add_argument("--max-foreign", type=float, default=0.4,
                        help="a try is disturbed when other processes took more cores than this in its timed window")
    parser.add_argument("--quiet-timeout", type=float, default=300, help="... but wait at most this many seconds")
    parser.add_argument("--cache", type=Path, default=BENCH / ".cache")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead: time the phases of one single-process step (after 1 warm-up step) per config")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        args.config, mode = args.child[0], args.child[1]
        args.batch, args.workers, args.steps = map(int, args.child[2:5])
        args.sparse = bool(int(args.child[5]))
        data = prepare(args.cache, args.config)
        run = {"reference": child_reference, "breakdown": child_breakdown, "ray": child_ray}[mode]
        result = run(args, data)
        print("RESULT " + json.dumps(result), flush=True)
        return

    started = time.perf_counter()
    report = {"machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "loadavg_start": os.getloadavg(),
              "rows": []}
    names = ["small", "official"] if args.only == "all" else [args.only]
    workers = [int(w) for w in args.workers.split(",")]
    for name in names:
        prepare(args.cache, name)
    if args.breakdown:  # stored under "breakdown" of the results file, beside the rows of the throughput run
        rows = [breakdown(args, name) for name in names]
        if args.out:
            earlier = json.loads(args.out.read_text()) if args.out.exists() else {"machine": report["machine"]}
            done = {r["config"] for r in rows}
            earlier["breakdown"] = [r for r in earlier.get("breakdown", []) if r["config"] not in done] + [
                r | {"date": report["date"], "command": report["command"]} for r in rows]
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(earlier, indent=2))
        return
    for name in names:
        steps = args.small_steps if name == "small" else args.official_steps
        for batch in CONFIGS[name][4]:
            modes = args.modes.split(",")
            rows = [("reference", 1, False)] if "reference" in modes else []
            rows += [("ray", w, False) for w in workers] if "ray" in modes else []
            if name == "small" and "sparse" in modes:
                rows += [("ray", w, True) for w in workers]
            for repeat in range(args.small_repeats if name == "small" else args.official_repeats):
                for mode, w, sparse in rows:
                    report["rows"].append(run_child(args, name, mode, batch, w, steps, sparse) | {"repeat": repeat})
            if args.out:  # partial results survive an interrupted run
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.with_suffix(".partial.json").write_text(json.dumps(report, indent=2))
    report["loadavg_end"] = os.getloadavg()
    report["total_seconds"] = time.perf_counter() - started
    if args.out and args.out.exists():  # keep the rows of an earlier run that this run did not measure again
        earlier = json.loads(args.out.read_text())
        ran = {(r["config"], r["mode"], r["workers"], r["global_batch"]) for r in report["rows"]}
        kept = [r for r in earlier.get("rows", []) if (r["config"], r["mode"], r["workers"], r["global_batch"]) not in ran]
        runs = earlier.get("runs", [{k: earlier.get(k) for k in ("date", "command", "loadavg_start", "loadavg_end",
                                                                  "total_seconds")}])
        report["rows"] = kept + report["rows"]
        report["runs"] = runs + [{k: report[k] for k in ("date", "command", "loadavg_start", "loadavg_end",
                                                          "total_seconds")}]
    print(f"total {report['total_seconds']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        args.out.with_suffix(".partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
