"""train: photos (or a dictionary build, or a faceset) → aligned faces → Ray Train → checkpoints → registered model.

Rerunning with the same ``out`` resumes from the latest checkpoint and continues the same MLflow run (``flows.steps``
keeps its id in ``out``); the faceset is made once, so its held-out faces stay held out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from prefect import flow, task
from prefect.cache_policies import NONE

from dfd.flows.steps import MADE_ONCE, Summary, flat_params, flow_run, run_step
from dfd.tasks.checkpoints import DEFAULT_KEEP_CHECKPOINTS
from dfdcore.io.storage import exists, join_uri, read_bytes
from dfdcore.training import TrainConfig

EXPERIMENT = "dfd-train"


@task(cache_policy=NONE, retries=1)
def prepare_faceset(source: str, faceset: str, face_size: int, test_fraction: float = 0.1, seed: int = 0,
                    held_out: str | None = None) -> dict:
    """Make ``faceset`` from ``source`` → counts per split (and photos without a usable face).

    ``source``: the faceset itself (used as is), a dictionary build folder (its ``faces.parquet``: landmarks
    known, no detection), or photos (any folder/URL/glob: faces detected and aligned here). ``held_out``: photos
    whose faces are the test split (chosen by the caller, e.g. by person); every face of ``source`` then trains."""
    from dfdcore.data.faceset import FaceSet, faces_from_photos, faces_from_table, write_faceset
    from dfdcore.dictionary.collection import read_table
    from dfdcore.io.storage import list_images

    if source == faceset:
        if not exists(faceset):
            raise ValueError(f"{faceset} does not exist: pass source= (photos, a dictionary build or a faceset)")
        return {"train": len(FaceSet(faceset, "train")), "test": len(FaceSet(faceset, "test")), "skipped": 0}
    table = join_uri(source, "faces.parquet")
    if exists(table):
        rows, skipped = list(faces_from_table(read_table(table), face_size)), []
    else:
        rows, skipped = faces_from_photos(list_images([source]), face_size)
    if not rows:
        raise ValueError(f"{source}: no usable face for training ({len(skipped)} photo(s) skipped)")
    if held_out:
        test_rows, test_skipped = faces_from_photos(list_images([held_out]), face_size)
        rows = [r | {"split": "train"} for r in rows] + [r | {"split": "test"} for r in test_rows]
        skipped += test_skipped
    counts = write_faceset(faceset, rows, face_size, test_fraction, seed)
    if skipped:
        print(f"{len(skipped)} photo(s) gave no face: " + "; ".join(f"{s['uri']}: {s['reason']}" for s in skipped))
    return counts | {"skipped": len(skipped)}


@task(cache_policy=NONE)
def run_training(cfg: TrainConfig, tracking_uri: str, run_id: str, max_failures: int,
                 keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS) -> dict:
    """Ray Train workers train the generator until ``cfg.steps`` (resuming from the latest checkpoint of
    ``cfg.out``, keeping the ``keep_checkpoints`` latest), rank 0 logging into the MLflow run ``run_id`` →
    {resumed_from (0: a new training), train_seconds, images_per_second}."""
    import time

    from dfd.tasks.train import Tracking, fit
    from dfdcore.training import checkpoint_step, latest_checkpoint

    resumed = latest_checkpoint(cfg.out)
    resumed_from = checkpoint_step(resumed) if resumed else 0
    started = time.perf_counter()
    fit(cfg, Tracking(tracking_uri, run_id), max_failures=max_failures, keep_checkpoints=keep_checkpoints)
    seconds = time.perf_counter() - started
    return {"resumed_from": resumed_from, "train_seconds": seconds,
            "images_per_second": (cfg.steps - resumed_from) * cfg.batch_size / seconds}


@dataclass
class TrainSummary(Summary):
    steps: int = 0
    resumed_from: int = 0
    train_faces: int = 0
    test_faces: int = 0
    images_per_second: float = 0.0
    final: dict | None = None
    validation: dict | None = None  # of the registered generator (the best validated one)
    generator: str = ""
    dictionary: str = ""
    model_name: str = ""
    model_version: str = ""
    warning: str = ""  # the run diverged (a validation > 1 dB below bicubic): tasks.train.divergence_warning


def _local_copy(uri: str) -> str:
    """``uri`` itself when local, else a copy under the dfd home (MLflow logs artifacts from local files)."""
    from dfdcore.io.storage import is_local
    from dfdcore.runtime import dfd_home

    if is_local(uri):
        return uri
    local = dfd_home() / "downloads" / uri.split("://", 1)[1]
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(read_bytes(uri))
    return str(local)


def training_warning(out: str) -> str:
    """What a person must hear about the training folder ``out``: that it diverged, or ""."""
    from dfd.tasks.train import divergence_warning, validation_history

    return divergence_warning(validation_history(out))


def chosen_generator(out: str) -> tuple[str, dict | None]:
    """The generator a finished training folder offers: its best validated one (and the figures), else the final."""
    from dfd.tasks.train import best_uris

    generator, figures = best_uris(out)
    if exists(generator) and exists(figures):
        return generator, json.loads(read_bytes(figures))
    return join_uri(out, "generator.safetensors"), None


@flow(name="train", log_prints=True)
def train(config: TrainConfig, source: str | None = None, test_fraction: float = 0.1,
          register_as: str = "dfd-generator", max_failures: int = 2, held_out: str | None = None,
          options: dict | None = None, keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS,
          system_metrics: bool = False) -> TrainSummary:
    """Train the generator described by ``config`` (faces from ``source`` when ``config.faceset`` is not made yet),
    log it to MLflow and register the chosen generator with its dictionary.

    ``max_failures``: Ray Train restarts of the workers from the latest checkpoint (``tasks.train.fit``);
    ``keep_checkpoints``: the latest checkpoints kept, on disk and in the run (0 or -1: all; ``tasks.checkpoints``);
    ``system_metrics``: MLflow samples the machine's CPU, memory, GPU ... into the run (system/*) while it trains.
    The faceset's training and held-out faces are the run's dataset inputs (``flows.datasets``).
    ``held_out``: photos whose faces are the test split (``test_fraction`` is then unused). ``options``: what
    ``dfd train`` resolved (CLI names → values), logged as the artifact config.yaml (each call: a resumed run's is
    the latest call's)."""
    from dfd.flows.datasets import log_faceset

    with flow_run(EXPERIMENT, keep_in=config.out, system_metrics=system_metrics) as run:
        counts = run_step(config.out, "faceset", MADE_ONCE, prepare_faceset, source or config.faceset,
                          config.faceset, config.face_size, test_fraction, config.seed, held_out)
        log_faceset(config.faceset, config.face_size)
        if not run.continued:
            run.log(params=flat_params(config) | {"source": source, "test_fraction": test_fraction,
                                                  "held_out": held_out, "keep_checkpoints": keep_checkpoints,
                                                  "train_faces": counts["train"], "test_faces": counts["test"]},
                    tags={"random_vgg": config.random_vgg, "dictionary": config.dictionary})
        if options:
            run.config("dfd train", options)
        trained = run_training(config, run.tracking_uri, run.run_id, max_failures, keep_checkpoints)
        generator, validation = chosen_generator(config.out)
        warning = training_warning(config.out)
        if warning:
            print(f"WARNING: {warning}")
            run.log(tags={"diverged": "true"})
        version = register(run, config, generator, validation, register_as, trained)
        summary = TrainSummary(run_id=run.run_id, seconds=run.seconds(), steps=config.steps,
                               resumed_from=trained["resumed_from"], train_faces=counts["train"],
                               test_faces=counts["test"], images_per_second=trained["images_per_second"],
                               final=run.metrics(), validation=validation, generator=generator,
                               dictionary=config.dictionary, model_name=register_as, model_version=version,
                               warning=warning)
    return summary


def register(run, config: TrainConfig, generator: str, validation: dict | None, name: str, trained: dict) -> str:
    """The training's speed and best validation figures in its run, ``generator`` registered as ``name`` → the
    version."""
    from dfd.flows.registry import register_generator

    run.log(metrics={k: v for k, v in trained.items() if k != "resumed_from"})
    if validation:
        run.log(metrics={f"best_{k}": v for k, v in validation.items()})
    return register_generator(_local_copy(generator), _local_copy(config.dictionary), name,
                              validation=validation, best_metric=config.best_metric, faceset=config.faceset)
