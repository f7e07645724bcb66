"""train: photos (or a dictionary build, or a faceset) → aligned faces → Ray Train → checkpoints → registered model.

Rerunning with the same ``out`` resumes from the latest checkpoint and continues the same MLflow run.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from prefect import flow, task
from prefect.cache_policies import NONE

from dfdcore.io.storage import exists, join_uri, read_bytes, write_bytes_atomic
from dfdcore.training import TrainConfig

EXPERIMENT = "dfd-train"


@task(cache_policy=NONE, retries=1)
def prepare_faceset(source: str, faceset: str, face_size: int, test_fraction: float = 0.1, seed: int = 0) -> dict:
    """Make ``faceset`` from ``source`` unless it is there already → counts per split.

    ``source``: a faceset ``.parquet`` (used as is), a dictionary build folder (its ``faces.parquet``: landmarks
    known, no detection), or photos (any folder/URL/glob: faces detected and aligned here)."""
    from dfdcore.data.faceset import FaceSet, faces_from_photos, faces_from_table, write_faceset
    from dfdcore.dictionary.collection import read_table
    from dfdcore.io.storage import list_images

    if exists(faceset):
        return {"train": len(FaceSet(faceset, "train")), "test": len(FaceSet(faceset, "test")), "skipped": 0}
    table = join_uri(source, "faces.parquet")
    if exists(table):
        rows, skipped = list(faces_from_table(read_table(table), face_size)), []
    else:
        rows, skipped = faces_from_photos(list_images([source]), face_size)
    if not rows:
        raise ValueError(f"{source}: no usable face for training ({len(skipped)} photo(s) skipped)")
    counts = write_faceset(faceset, rows, face_size, test_fraction, seed)
    if skipped:
        print(f"{len(skipped)} photo(s) gave no face: " + "; ".join(f"{s['uri']}: {s['reason']}" for s in skipped))
    return counts | {"skipped": len(skipped)}


@task(cache_policy=NONE)
def run_training(cfg: TrainConfig, tracking_uri: str, run_id: str, max_failures: int) -> None:
    from dfd.tasks.train import Tracking, fit

    fit(cfg, Tracking(tracking_uri, run_id), max_failures=max_failures)


@dataclass
class TrainSummary:
    run_id: str = ""
    steps: int = 0
    resumed_from: int = 0
    train_faces: int = 0
    test_faces: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    final: dict | None = None
    validation: dict | None = None  # of the registered generator (the best validated one)
    generator: str = ""
    dictionary: str = ""
    model_name: str = ""
    model_version: str = ""


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


def chosen_generator(out: str) -> tuple[str, dict | None]:
    """The generator a finished training folder offers: its best validated one (and the figures), else the final."""
    from dfd.tasks.train import best_uris

    generator, figures = best_uris(out)
    if exists(generator) and exists(figures):
        return generator, json.loads(read_bytes(figures))
    return join_uri(out, "generator.safetensors"), None


def _run_id_file(out: str) -> str:
    return join_uri(out, "mlflow_run.json")


def _existing_run(out: str) -> str | None:
    """The MLflow run an earlier, interrupted call on ``out`` opened (so a resume continues it)."""
    import mlflow

    if not exists(_run_id_file(out)):
        return None
    run_id = json.loads(read_bytes(_run_id_file(out)))["run_id"]
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    return run_id


@flow(name="train", log_prints=True)
def train(config: TrainConfig, source: str | None = None, test_fraction: float = 0.1,
          register_as: str = "dfd-generator", max_failures: int = 2) -> TrainSummary:
    """Train the generator described by ``config`` (faces from ``source`` when ``config.faceset`` is not made yet),
    log it to MLflow and register the final generator with its dictionary.

    ``max_failures``: Ray Train restarts of the workers from the latest checkpoint (``tasks.train.fit``)."""
    import mlflow

    from dfd.flows.registry import register_generator
    from dfd.flows.tracking import mlflow_experiment
    from dfdcore.training import latest_checkpoint

    started = time.perf_counter()
    if not exists(config.faceset):
        if source is None:
            raise ValueError(f"{config.faceset} does not exist: pass source= (photos, a dictionary build or a faceset)")
    counts = prepare_faceset(source or config.faceset, config.faceset, config.face_size, test_fraction, config.seed)
    experiment = mlflow_experiment(EXPERIMENT)
    resumed = latest_checkpoint(config.out)
    resumed_step = int(resumed.rsplit("step_", 1)[1][:8]) if resumed else 0
    with mlflow.start_run(run_id=_existing_run(config.out), experiment_id=experiment) as run:
        write_bytes_atomic(_run_id_file(config.out), json.dumps({"run_id": run.info.run_id}).encode())
        if not resumed:
            mlflow.log_params(asdict(config) | {"source": source, "test_fraction": test_fraction,
                                                "train_faces": counts["train"], "test_faces": counts["test"]})
            mlflow.set_tags({"random_vgg": str(config.random_vgg), "dictionary": config.dictionary})
        run_training(config, mlflow.get_tracking_uri(), run.info.run_id, max_failures)
        generator, validation = chosen_generator(config.out)
        seconds = time.perf_counter() - started
        images = (config.steps - resumed_step) * config.batch_size
        mlflow.log_metrics({"train_seconds": seconds, "images_per_second": images / seconds})
        if validation:
            mlflow.log_metrics({f"best_{k}": v for k, v in validation.items()})
        version = register_generator(_local_copy(generator), _local_copy(config.dictionary), register_as,
                                     validation=validation, best_metric=config.best_metric)
        final = {k: v for k, v in mlflow.get_run(run.info.run_id).data.metrics.items()}
    return TrainSummary(run_id=run.info.run_id, steps=config.steps, resumed_from=resumed_step,
                        train_faces=counts["train"], test_faces=counts["test"], seconds=seconds,
                        images_per_second=images / seconds, final=final, validation=validation, generator=generator,
                        dictionary=config.dictionary, model_name=register_as, model_version=version)
