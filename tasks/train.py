"""Ray Train around ``dfdcore.training``: a TorchTrainer whose workers each run a ``Trainer`` under DDP
(gloo on CPU, NCCL on GPU), resume from the latest checkpoint under ``out/checkpoints`` and, on rank 0, log
metrics, sample grids and checkpoints to the MLflow run the driver opened. Checkpoints are Ray Train checkpoints
kept ``keep_checkpoints`` at a time, on disk and in the MLflow run alike (``tasks.checkpoints``).

A worker that dies (a busy or preempted machine) costs the steps since the last checkpoint: Ray Train starts a new
worker group up to ``max_failures`` times (default ``DEFAULT_MAX_FAILURES``), each resumes from the latest
checkpoint, and rank 0 does not log again the metrics an earlier attempt logged for the same steps."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dfd.tasks.checkpoints import (
    DEFAULT_KEEP_CHECKPOINTS,
    checkpoint_config,
    drop_pruned_artifacts,
    log_checkpoint,
    ray_storage,
    report,
    resume_uri,
)
from dfd.tasks.runtime import ensure_ray, threads_per_worker, train_patience
from dfdcore.io.storage import exists, join_uri, read_bytes, write_bytes_atomic
from dfdcore.training import TrainConfig, Trainer
from dfdcore.training.loop import CHECKPOINTS

GENERATOR_NAME = "generator.safetensors"
HISTORY_NAME = "validations.json"
DIVERGED_DB = 1.0  # a validation this far below bicubic marks the run as diverged
DEFAULT_MAX_FAILURES = 2  # worker-group restarts from the latest checkpoint within one fit()


@dataclass(frozen=True)
class Tracking:
    """Where rank 0 logs: an MLflow tracking URI and the run the driver opened (None: no logging)."""

    uri: str | None = None
    run_id: str | None = None


class _RunLog:
    """Rank 0's view of the MLflow run: metrics in batches, files as artifacts.

    A metric is logged once per step: an attempt that resumed from a checkpoint older than what an earlier attempt
    (a restarted worker group, or an interrupted call) already logged skips the steps already in the run, so the
    curves have one point per step. Files are logged under the same names again (they replace the earlier ones)."""

    def __init__(self, tracking: Tracking) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking.uri) if tracking.run_id else None
        self.run_id = tracking.run_id
        self.logged: dict[str, int] = {}  # metric → the highest step the run has for it
        if self.client is not None:
            for key in self.client.get_run(self.run_id).data.metrics:
                self.logged[key] = max(m.step for m in self.client.get_metric_history(self.run_id, key))

    def metrics(self, values: dict[str, float], step: int, again: bool = False) -> None:
        """Log ``values`` at ``step``, except those the run already has at this step or later (unless ``again``)."""
        if self.client is None:
            return
        import time

        from mlflow.entities import Metric

        new = {k: v for k, v in values.items() if again or step > self.logged.get(k, -1)}
        if not new:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in new.items()])
        self.logged.update({k: max(step, self.logged.get(k, -1)) for k in new})

    def has(self, key: str, step: int) -> bool:
        return self.logged.get(key, -1) >= step

    def artifact(self, local_path: str, folder: str) -> None:
        if self.client is not None:
            self.client.log_artifact(self.run_id, local_path, folder)

    def checkpoint(self, uri: str, out: str) -> None:
        """The checkpoint just written (``uri``) as an artifact, and the artifacts of those pruned since gone."""
        if self.client is not None:
            log_checkpoint(self.client, self.run_id, uri)
            drop_pruned_artifacts(self.client, self.run_id, out)


def train_loop(config: dict) -> None:
    """The per-worker loop (``train_loop_per_worker``)."""
    import ray.train
    import ray.train.torch
    import torch

    from dfdcore.io.images import write_image

    cfg = TrainConfig.from_dict(config["train"])
    torch.set_num_threads(config["threads"])  # Ray sets 1 thread per worker otherwise
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    def wrap(module):
        if world == 1:
            return module
        # Buffers are not broadcast per step: SN vectors evolve identically from identical weights, and the
        # dictionary bank (up to 3 GiB) never changes. Unused parameters: a component outside the face is skipped.
        return ray.train.torch.prepare_model(module, move_to_device=False, parallel_strategy_kwargs={
            "find_unused_parameters": True, "broadcast_buffers": False})

    trainer = Trainer(cfg, device, rank=rank, wrap=wrap)
    resumed = resume_uri(cfg.out)
    if resumed:
        trainer.load(resumed)
    log = _RunLog(Tracking(**config["tracking"])) if rank == 0 else None
    if log and resumed:  # every resume is recorded, a restart from the same checkpoint too
        log.metrics({"resumed_from_step": trainer.step}, trainer.step, again=True)
    best = BestGenerator(cfg) if rank == 0 else None
    if best and trainer.step == 0 and cfg.val_every:  # where the curves start, and the model to beat
        start = trainer.validate()
        if log and not log.has("val_psnr", 0):
            log.metrics(start, 0)
        best.offer(trainer, start)
    while trainer.step < cfg.steps:
        metrics = trainer.train_step(world)
        step, last = trainer.step, trainer.step == cfg.steps
        if log and (step % cfg.log_every == 0 or last or step == 1):
            log.metrics(metrics, step)
        if log and (step % cfg.sample_every == 0 or last):
            with tempfile.TemporaryDirectory() as tmp:
                grid = Path(tmp) / f"step_{step:08d}.png"
                write_image(grid, trainer.sample_grid())
                log.artifact(str(grid), "samples")
            log.metrics(trainer.validation_loss(), step)
        if best and ((cfg.val_every and step % cfg.val_every == 0) or last):
            validation = trainer.validate()
            if log:
                log.metrics(validation, step)
            best.offer(trainer, validation)
        checkpointed = step % cfg.checkpoint_every == 0 or last
        saved = trainer.save() if rank == 0 and checkpointed else None
        if checkpointed or step % cfg.log_every == 0:
            report(metrics, step, checkpointed, rank)  # every rank: Ray Train registers rank 0's checkpoint
        if log and saved:
            log.checkpoint(saved, cfg.out)
    if rank == 0:  # the final generator beside the checkpoints, through a local file (OUT may be an object store)
        _export(trainer, join_uri(cfg.out, GENERATOR_NAME), best.last)


def _export(trainer, uri: str, validation: dict | None) -> None:
    """The trainer's generator (with its validation figures) → ``uri``, written atomically from a local file."""
    with tempfile.TemporaryDirectory() as tmp:
        local = trainer.export_generator(Path(tmp) / GENERATOR_NAME, validation)
        write_bytes_atomic(uri, local.read_bytes())


class BestGenerator:
    """Keeps ``out/best/generator.safetensors`` as the validated generator with the best ``cfg.best_metric`` so far,
    its figures in ``out/best/validation.json`` (read back on resume), and every validation in
    ``out/validations.json`` (``validation_history``).

    Step 0 is offered too: the starting point (bicubic itself for a residual model) is a candidate, so the kept,
    exported and registered generator is never worse than where the run started."""

    def __init__(self, cfg) -> None:
        from dfdcore.evaluation.pairs import HIGHER_IS_BETTER

        self.metric, self.higher = f"val_{cfg.best_metric}", cfg.best_metric in HIGHER_IS_BETTER
        self.generator_uri, self.figures_uri = best_uris(cfg.out)
        self.history_uri = join_uri(cfg.out, HISTORY_NAME)
        self.best = json.loads(read_bytes(self.figures_uri)) if exists(self.figures_uri) else None
        self.history = validation_history(cfg.out)
        self.last: dict | None = None

    def offer(self, trainer, validation: dict) -> bool:
        self.last = validation | {"step": trainer.step}
        self.history = [h for h in self.history if h["step"] != trainer.step] + [self.last]
        write_bytes_atomic(self.history_uri, json.dumps(self.history, indent=1).encode())
        value = validation.get(self.metric)
        if value is None:
            return False
        kept = (self.best or {}).get(self.metric)  # None: nothing kept yet, or kept by another metric
        if kept is not None and not (value > kept if self.higher else value < kept):
            return False
        _export(trainer, self.generator_uri, self.last)
        write_bytes_atomic(self.figures_uri, json.dumps(self.last, indent=2).encode())
        self.best = self.last
        return True


def validation_history(out: str) -> list[dict]:
    """Every validation of the training folder ``out`` so far (step 0 first): the figures ``Trainer.validate`` gives
    plus ``step``."""
    uri = join_uri(out, HISTORY_NAME)
    return sorted(json.loads(read_bytes(uri)), key=lambda h: h["step"]) if exists(uri) else []


def divergence_warning(history: list[dict], margin_db: float = DIVERGED_DB) -> str:
    """A plain sentence when a validation's PSNR fell more than ``margin_db`` below bicubic's, else ""."""
    fallen = [h for h in history if h.get("val_psnr") is not None and h.get("bicubic_psnr") is not None
              and h["val_psnr"] < h["bicubic_psnr"] - margin_db]
    if not fallen:
        return ""
    worst = min(fallen, key=lambda h: h["val_psnr"] - h["bicubic_psnr"])
    return (f"the run diverged: validation PSNR fell {worst['bicubic_psnr'] - worst['val_psnr']:.1f} dB below bicubic "
            f"at step {worst['step']} ({worst['val_psnr']:.2f} vs {worst['bicubic_psnr']:.2f} dB; more than "
            f"{margin_db:g} dB below at {len(fallen)} of {len(history)} validations); the kept model is the best "
            f"validated one, never worse than step 0")


def best_uris(out: str) -> tuple[str, str]:
    """(generator, figures) of the best validated generator of the training folder ``out``."""
    return join_uri(out, f"best/{GENERATOR_NAME}"), join_uri(out, "best/validation.json")


def _with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Workers do not run in the caller's folder: make local paths absolute (URLs stay as they are)."""
    from dataclasses import replace

    from dfdcore.io.storage import is_local

    def absolute(uri: str | None) -> str | None:
        return os.path.abspath(uri) if uri and is_local(uri) and "://" not in uri else uri

    return replace(cfg, faceset=absolute(cfg.faceset), dictionary=absolute(cfg.dictionary), out=absolute(cfg.out),
                   init_weights=absolute(cfg.init_weights), vgg_weights=absolute(cfg.vgg_weights))


def fit(cfg: TrainConfig, tracking: Tracking = Tracking(), max_failures: int = DEFAULT_MAX_FAILURES,
        loop=train_loop, keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS) -> None:
    """Run the training with ``cfg.workers`` Ray Train workers (GPUs when ``cfg.use_gpu``) until ``cfg.steps``,
    then write the final generator to ``cfg.out/generator.safetensors``.

    A rerun with the same ``cfg.out`` resumes from its latest checkpoint; within one call, Ray Train starts the
    workers again from that checkpoint up to ``max_failures`` times when one dies or fails (-1: without limit, 0:
    the first failure ends the call). Ray Train's start-up and health-check timeouts are raised first
    (``runtime.TRAIN_PATIENCE``): a worker slowed by other work on the machine is not a dead one. ``loop``: the
    per-worker function (tests wrap ``train_loop``). ``keep_checkpoints``: the latest checkpoints Ray Train keeps
    (0 or -1: all), on disk and in the MLflow run (``tasks.checkpoints``); the best generator (out/best/) is apart.

    The Ray Train run is ``out/checkpoints`` itself (storage ``out``, name ``checkpoints``): the same folder for
    every call on ``out``, from which Ray restores its list of checkpoints when a call resumes."""
    from mlflow import MlflowClient
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    train_patience()
    ensure_ray()
    cfg = _with_absolute_paths(cfg)
    storage_path, storage_filesystem = ray_storage(cfg.out)
    threads = 1 if cfg.use_gpu else threads_per_worker(cfg.workers)
    trainer = TorchTrainer(
        loop,
        train_loop_config={"train": cfg.to_dict(), "threads": threads,
                           "tracking": {"uri": tracking.uri, "run_id": tracking.run_id}},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=None if cfg.use_gpu else {"CPU": 1}),
        run_config=RunConfig(name=CHECKPOINTS, storage_path=storage_path, storage_filesystem=storage_filesystem,
                             checkpoint_config=checkpoint_config(keep_checkpoints),
                             failure_config=FailureConfig(max_failures)),
    )
    trainer.fit()
    if tracking.run_id:  # Ray prunes a little after the last report: the run's artifacts follow once more
        drop_pruned_artifacts(MlflowClient(tracking.uri), tracking.run_id, cfg.out)
