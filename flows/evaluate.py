"""evaluate: a model on the paired test set (made once from held-out faces) → per-image metrics in Parquet,
means in an MLflow run beside the bicubic baseline, so that runs compare in the MLflow UI and in ``dfd compare``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE

from dfd.flows.datasets import log_test_set
from dfd.flows.registry import resolve_registered
from dfd.flows.steps import MADE_ONCE, Summary, flow_run, run_step
from dfdcore.io.parquet import write_parquet
from dfdcore.io.storage import join_uri
from dfdcore.restoration.restorer import ModelSpec

EXPERIMENT = "dfd-evaluate"


@task(cache_policy=NONE, retries=1)
def test_set(faceset: str | None, testset: str, count: int | None, seed: int, degradation: str) -> dict:
    """Degrade ``faceset``'s held-out faces into ``testset``/pairs.parquet (the flow makes it once per folder, so
    that every run on the folder is scored on the same pairs) → {pairs, sha256 of the file}."""
    from dfdcore.evaluation.pairs import make_pairs
    from dfdcore.io.hashing import sha256_bytes
    from dfdcore.io.storage import read_bytes

    pairs = join_uri(testset, "pairs.parquet")
    if faceset is None:
        raise ValueError(f"{testset} holds no test set yet: pass the faceset to make it from")
    made = make_pairs(faceset, pairs, count=count, seed=seed, degradation=degradation)
    print(f"test set made: {made} pairs from the held-out faces of {faceset} (seed {seed}, {degradation})")
    return {"pairs": made, "sha256": sha256_bytes(read_bytes(pairs))}


@task(cache_policy=NONE)
def bicubic_baseline(testset: str) -> dict:
    """Metrics of the bicubic-upsampled LQ of ``testset``'s pairs (per image in bicubic.parquet) → their means."""
    from dfdcore.evaluation.pairs import aggregate, lpips_or_reason, metric_rows, read_pairs

    pairs, _ = read_pairs(join_uri(testset, "pairs.parquet"))
    lpips, _ = lpips_or_reason()
    rows = metric_rows([p["lq"] for p in pairs], pairs, lpips)
    write_parquet(join_uri(testset, "bicubic.parquet"), rows)
    return aggregate(rows)


@task(cache_policy=NONE)
def score(spec: ModelSpec, testset: str, rows_uri: str, label: str) -> dict:
    """Restore every pair's LQ with the model, per-image metrics → ``rows_uri`` → {means, lpips_note, pairs, meta
    (the test set's), grid (LQ | restored | HQ of the first four pairs, uint8)}."""
    import numpy as np

    from dfdcore.evaluation.pairs import aggregate, lpips_or_reason, metric_rows, read_pairs, restore_pairs
    from dfdcore.restoration.restorer import resolve_device
    from dfdcore.viz import side_by_side

    pairs, meta = read_pairs(join_uri(testset, "pairs.parquet"))
    model = replace(spec, face_size=int(meta["face_size"])).build()
    device = resolve_device(spec.device)
    outputs = list(restore_pairs(model, pairs, device=device))
    lpips, reason = lpips_or_reason(device)
    rows = metric_rows(outputs, pairs, lpips)
    write_parquet(rows_uri, rows)
    grid = np.concatenate([side_by_side([p["lq"], out, p["hq"]], ["LQ (bicubic)", label, "HQ"])
                           for p, out in zip(pairs[:4], outputs)], axis=0)
    return {"means": aggregate(rows), "lpips_note": reason, "pairs": len(pairs), "meta": meta, "grid": grid}


@dataclass
class EvalSummary(Summary):
    pairs: int = 0
    model: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    bicubic: dict = field(default_factory=dict)
    lpips_note: str = ""


def run_label(spec: ModelSpec, registry_tags: dict) -> str:
    """The run's name: the registered NAME-vVERSION, "identity", the bundled model's name or the weights' file
    stem."""
    registered = registry_tags.get("registered_model", "").replace("/", "-v")
    return registered or ("identity" if spec.name == "identity" else spec.bundled or
                          Path(spec.weights or "random").stem)


@flow(name="evaluate", log_prints=True)
def evaluate(spec: ModelSpec, testset: str, faceset: str | None = None, registered: str | None = None,
             count: int | None = None, seed: int = 1234, degradation: str = "reference",
             label: str | None = None) -> EvalSummary:
    """Evaluate the model of ``spec`` (or the registered ``NAME/VERSION`` or ``NAME@ALIAS``: ``registered``, or
    ``spec.registered``; naming no model: the bundled one) on ``testset``'s pairs."""
    with flow_run(EXPERIMENT) as run:  # opened before the registry is asked: it lives in the same store
        made = run_step(testset, "pairs", MADE_ONCE, test_set, faceset, testset, count, seed, degradation)
        log_test_set(join_uri(testset, "pairs.parquet"), made["sha256"])  # the run's dataset input (testing)
        bicubic = run_step(testset, "bicubic", made["sha256"], bicubic_baseline, testset)
        spec, registry_tags = resolve_registered(spec, registered)  # NAME@ALIAS: the version it points to now
        spec = spec.resolved()  # naming no model: the bundled one
        if spec.bundled:
            registry_tags = registry_tags | {"bundled_model": spec.bundled}
        label = label or run_label(spec, registry_tags)
        rows_uri = join_uri(testset, f"metrics/{run.run_id}.parquet")
        scored = score(spec, testset, rows_uri, label)
        run.name(label)
        run.log(params={"model": label, "testset": testset, "pairs": scored["pairs"], **scored["meta"],
                        **{f"spec_{k}": v for k, v in asdict(spec).items()}},
                tags={"testset_sha256": made["sha256"], "random_weights": spec.random_weights,
                      "lpips": f"unavailable: {scored['lpips_note']}" if scored["lpips_note"] else "computed",
                      **registry_tags},
                metrics=scored["means"] | {f"bicubic_{k}": v for k, v in bicubic.items()})
        run.image("samples.png", scored["grid"])
        run.files(testset, [f"metrics/{run.run_id}.parquet"], "metrics")
        summary = EvalSummary(run_id=run.run_id, seconds=run.seconds(), pairs=scored["pairs"],
                              model={"label": label, **registry_tags}, metrics=scored["means"], bicubic=bicubic,
                              lpips_note=scored["lpips_note"])
    return summary
