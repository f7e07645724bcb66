"""evaluate: a model on the paired test set (made once from held-out faces) → per-image metrics in Parquet,
means in an MLflow run beside the bicubic baseline, so that runs compare in the MLflow UI and in ``dfd compare``."""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE

from dfdcore.io.parquet import write_parquet
from dfdcore.io.storage import exists, join_uri, write_bytes_atomic
from dfdcore.restoration.restorer import ModelSpec

EXPERIMENT = "dfd-evaluate"


@task(cache_policy=NONE, retries=1)
def test_set(faceset: str | None, testset: str, count: int | None, seed: int, degradation: str) -> str:
    """The pairs of ``testset`` (a folder), made from ``faceset``'s held-out faces the first time only."""
    from dfdcore.evaluation.pairs import make_pairs

    pairs = join_uri(testset, "pairs.parquet")
    if not exists(pairs):
        if faceset is None:
            raise ValueError(f"{pairs} does not exist yet: pass the faceset to make it from")
        made = make_pairs(faceset, pairs, count=count, seed=seed, degradation=degradation)
        print(f"test set made: {made} pairs from the held-out faces of {faceset} (seed {seed}, {degradation})")
    return pairs


@task(cache_policy=NONE)
def bicubic_baseline(pairs_uri: str, testset: str) -> dict:
    """Metrics of the bicubic-upsampled LQ, computed once per test set."""
    from dfdcore.evaluation.pairs import aggregate, lpips_or_reason, metric_rows, read_pairs

    uri = join_uri(testset, "bicubic.json")
    if exists(uri):
        from dfdcore.io.storage import read_bytes

        return json.loads(read_bytes(uri))
    pairs, _ = read_pairs(pairs_uri)
    lpips, _ = lpips_or_reason()
    rows = metric_rows([p["lq"] for p in pairs], pairs, lpips)
    write_parquet(join_uri(testset, "bicubic.parquet"), rows)
    means = aggregate(rows)
    write_bytes_atomic(uri, json.dumps(means).encode())
    return means


@task(cache_policy=NONE)
def score(spec: ModelSpec, pairs_uri: str, rows_uri: str) -> tuple[dict, str, list]:
    """Restore every pair's LQ with the model → (means, LPIPS note, first restored faces for the grid)."""
    from dfdcore.evaluation.pairs import aggregate, lpips_or_reason, metric_rows, read_pairs, restore_pairs
    from dfdcore.restoration.restorer import resolve_device

    pairs, meta = read_pairs(pairs_uri)
    model = replace(spec, face_size=int(meta["face_size"])).build()
    device = resolve_device(spec.device)
    outputs = list(restore_pairs(model, pairs, device=device))
    lpips, reason = lpips_or_reason(device)
    rows = metric_rows(outputs, pairs, lpips)
    write_parquet(rows_uri, rows)
    return aggregate(rows), reason, outputs[:4]


@dataclass
class EvalSummary:
    run_id: str = ""
    pairs: int = 0
    model: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    bicubic: dict = field(default_factory=dict)
    lpips_note: str = ""
    seconds: float = 0.0


def resolve_registered(spec: ModelSpec, registered: str | None) -> tuple[ModelSpec, dict]:
    """``name/version`` (or ``models:/name/version``) of the MLflow registry → the spec with its files."""
    if not registered:
        return spec, {}
    from mlflow import MlflowClient

    from dfd.flows.registry import registered_files

    name, version = registered.removeprefix("models:/").rsplit("/", 1)
    generator, dictionary = registered_files(name, version)
    run_id = MlflowClient().get_model_version(name, version).run_id
    return replace(spec, name="dfdnet", weights=str(generator), dictionary=str(dictionary),
                   random_weights=False), {"registered_model": f"{name}/{version}", "model_run_id": run_id}


@flow(name="evaluate", log_prints=True)
def evaluate(spec: ModelSpec, testset: str, faceset: str | None = None, registered: str | None = None,
             count: int | None = None, seed: int = 1234, degradation: str = "reference",
             label: str | None = None) -> EvalSummary:
    """Evaluate the model of ``spec`` (or the registered ``name/version``) on ``testset``'s pairs."""
    import mlflow
    import numpy as np

    from dfd.flows.tracking import mlflow_experiment
    from dfdcore.evaluation.pairs import read_pairs
    from dfdcore.io.hashing import sha256_path
    from dfdcore.io.images import write_image
    from dfdcore.viz import side_by_side

    started = time.perf_counter()
    experiment = mlflow_experiment(EXPERIMENT)  # before the registry is asked: it lives in the same store
    pairs_uri = test_set(faceset, testset, count, seed, degradation)
    bicubic = bicubic_baseline(pairs_uri, testset)
    spec, registry_tags = resolve_registered(spec, registered)
    label = label or registry_tags.get("registered_model", "").replace("/", "-v") or \
        ("identity" if spec.name == "identity" else Path(spec.weights or "random").stem)
    with mlflow.start_run(experiment_id=experiment, run_name=label) as run:
        rows_uri = join_uri(testset, f"metrics/{run.info.run_id}.parquet")
        means, lpips_note, firsts = score(spec, pairs_uri, rows_uri)
        pairs, meta = read_pairs(pairs_uri)
        mlflow.log_params({"model": label, "testset": testset, "pairs": len(pairs), **meta,
                           **{f"spec_{k}": v for k, v in asdict(spec).items()}})
        mlflow.set_tags({"testset_sha256": sha256_path(pairs_uri) if not pairs_uri.startswith(("s3:", "gs:")) else "",
                         "lpips": "computed" if not lpips_note else f"unavailable: {lpips_note}",
                         "random_weights": str(spec.random_weights), **registry_tags})
        mlflow.log_metrics(means | {f"bicubic_{k}": v for k, v in bicubic.items()})
        with tempfile.TemporaryDirectory() as tmp:
            grid = Path(tmp) / "samples.png"
            rows = [side_by_side([p["lq"], out, p["hq"]], ["LQ (bicubic)", label, "HQ"])
                    for p, out in zip(pairs, firsts)]
            write_image(grid, np.concatenate(rows, axis=0))
            mlflow.log_artifact(str(grid))
            if exists(rows_uri) and not rows_uri.startswith(("s3:", "gs:")):
                mlflow.log_artifact(rows_uri, "metrics")
    summary = EvalSummary(run_id=run.info.run_id, pairs=len(pairs), model={"label": label, **registry_tags},
                          metrics=means, bicubic=bicubic, lpips_note=lpips_note,
                          seconds=time.perf_counter() - started)
    return summary
