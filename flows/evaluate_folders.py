"""evaluate on folders: LQ photos paired with their HQ originals by file name, or real photos with no reference →
per-photo rows in ``OUTPUT/metrics/<run>.parquet`` and an MLflow run in the same experiment as the synthetic
evaluation, under the same metric names where they apply (``psnr``… beside ``bicubic_psnr``…), so ``dfd compare``
reads these runs too. What is measured is in ``dfdcore.evaluation.folders``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prefect import flow, task
from prefect.cache_policies import NONE

from dfd.flows.datasets import log_listing
from dfd.flows.evaluate import EXPERIMENT, run_label
from dfd.flows.registry import resolve_registered
from dfd.flows.steps import Summary, flow_run
from dfdcore.io.storage import join_uri, list_images
from dfdcore.restoration.restorer import ModelSpec

PAIRED, NO_REFERENCE = "pairs", "no-reference"


def _restorer(spec: ModelSpec):
    from dfdcore.restoration.restorer import RestoreOptions, Restorer

    return Restorer.from_spec(spec, RestoreOptions())  # dfd restore's defaults: its detector, every face


def _grid(samples: list[tuple], captions: list[str]):
    """The first faces' panels (input | restored[ | HQ]) stacked → (H, W, 3) uint8, or None without faces."""
    import numpy as np

    from dfdcore.viz import side_by_side

    rows = [side_by_side(list(faces), captions) for faces in samples[:4]]
    return np.concatenate(rows, axis=0) if rows else None


def _finish(scored: list, rows_uri: str, schema, names: tuple[str, ...]) -> dict:
    """Write the rows, and sum them up → {means (``names`` and ``bicubic_`` ones, computed only), photos, scored,
    faces, left (image → reason), sha256 (the inputs' fingerprint)}."""
    from dfdcore.evaluation.folders import fingerprint, mean_of
    from dfdcore.io.parquet import write_parquet

    rows = [s.row for s in scored]
    write_parquet(rows_uri, rows, schema)
    done = [r for r in rows if r["reason"] is None]
    means = mean_of(done, [*names, *(f"bicubic_{n}" for n in names if f"bicubic_{n}" in schema.names)])
    return {"means": {k: v for k, v in means.items() if v is not None}, "photos": len(rows), "scored": len(done),
            "faces": sum(r["faces"] for r in rows), "left": {r["image"]: r["reason"] for r in rows if r["reason"]},
            "sha256": fingerprint(scored)}


@task(cache_policy=NONE)
def score_paired(spec: ModelSpec, lq_dir: str, hq_dir: str, rows_uri: str, label: str) -> dict:
    """Every LQ photo of ``lq_dir`` restored and scored against the HQ photo of the same name in ``hq_dir`` →
    ``_finish``'s summary with the LPIPS note and a sample grid (LQ | restored | HQ)."""
    from dfdcore.evaluation.folders import PAIRED_METRICS, PAIRED_SCHEMA, match_pairs, score_pairs
    from dfdcore.evaluation.pairs import lpips_or_reason
    from dfdcore.io.storage import list_images

    restorer = _restorer(spec)
    lpips, note = lpips_or_reason(restorer.device)
    scored = list(score_pairs(restorer, match_pairs(list_images([lq_dir]), list_images([hq_dir])), lpips=lpips))
    samples = [faces for s in scored for faces in s.samples]
    return _finish(scored, rows_uri, PAIRED_SCHEMA, PAIRED_METRICS) | {
        "lpips_note": note, "grid": _grid(samples, ["LQ (bicubic)", label, "HQ"])}


@task(cache_policy=NONE)
def score_unreferenced(spec: ModelSpec, folder: str, rows_uri: str, label: str) -> dict:
    """Every photo of ``folder`` restored and scored without a reference → ``_finish``'s summary with a sample grid
    (input | restored)."""
    from dfdcore.evaluation.folders import NO_REFERENCE_METRICS, NO_REFERENCE_SCHEMA, score_photos
    from dfdcore.io.storage import list_images

    restorer = _restorer(spec)
    scored = list(score_photos(restorer, list_images([folder])))
    samples = [faces for s in scored for faces in s.samples]
    return _finish(scored, rows_uri, NO_REFERENCE_SCHEMA, NO_REFERENCE_METRICS) | {
        "lpips_note": "", "grid": _grid(samples, ["input", label])}


@dataclass
class FolderSummary(Summary):
    mode: str = PAIRED
    photos: int = 0      # rows: every photo (pair) found, scored or not
    scored: int = 0      # rows with metrics
    faces: int = 0       # faces restored and scored
    left: dict = field(default_factory=dict)   # image → why it was not scored
    model: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    bicubic: dict = field(default_factory=dict)
    lpips_note: str = ""
    rows_uri: str = ""


def _evaluate(mode: str, spec: ModelSpec, inputs: dict, output: str, registered: str | None,
              label: str | None) -> FolderSummary:
    with flow_run(EXPERIMENT) as run:  # opened before the registry is asked: it lives in the same store
        spec, registry_tags = resolve_registered(spec, registered)
        spec = spec.resolved()  # naming no model: the bundled one
        if spec.bundled:
            registry_tags = registry_tags | {"bundled_model": spec.bundled}
        label = label or run_label(spec, registry_tags)
        relative = f"metrics/{run.run_id}.parquet"
        rows_uri = join_uri(output, relative)
        if mode == PAIRED:
            scored = score_paired(spec, inputs["lq_dir"], inputs["hq_dir"], rows_uri, label)
        else:
            scored = score_unreferenced(spec, inputs["folder"], rows_uri, label)
        means = scored["means"]
        counts = {"photos": scored["photos"], "scored_photos": scored["scored"], "faces": scored["faces"]}
        for name, folder in inputs.items():  # the run's dataset inputs: lq_dir and hq_dir, or folder
            log_listing(folder, list_images([folder]), name=name, context="testing")
        run.name(label)
        run.log(params={"model": label, "mode": mode, "testset": " ".join(inputs.values()), **inputs,
                        **{f"spec_{k}": v for k, v in asdict(spec).items()}},
                tags={"testset_sha256": scored["sha256"], "evaluation": mode, "random_weights": spec.random_weights,
                      "lpips": f"unavailable: {scored['lpips_note']}" if scored["lpips_note"] else
                      ("computed" if mode == PAIRED else "not applicable (no reference)"), **registry_tags},
                metrics=means | counts)
        if scored["grid"] is not None:
            run.image("samples.png", scored["grid"])
        run.files(output, [relative], "metrics")
        summary = FolderSummary(
            run_id=run.run_id, seconds=run.seconds(), mode=mode, photos=scored["photos"], scored=scored["scored"],
            faces=scored["faces"], left=scored["left"], model={"label": label, **registry_tags},
            metrics={k: v for k, v in means.items() if not k.startswith("bicubic_")},
            bicubic={k.removeprefix("bicubic_"): v for k, v in means.items() if k.startswith("bicubic_")},
            lpips_note=scored["lpips_note"], rows_uri=rows_uri)
    return summary


@flow(name="evaluate-pairs", log_prints=True)
def evaluate_pairs(spec: ModelSpec, lq_dir: str, hq_dir: str, output: str, registered: str | None = None,
                   label: str | None = None) -> FolderSummary:
    """Evaluate the model of ``spec`` (or the registered ``registered``; naming no model: the bundled one) on the
    photos of ``lq_dir`` against the originals of the same names in ``hq_dir``."""
    return _evaluate(PAIRED, spec, {"lq_dir": lq_dir, "hq_dir": hq_dir}, output, registered, label)


@flow(name="evaluate-no-reference", log_prints=True)
def evaluate_no_reference(spec: ModelSpec, folder: str, output: str, registered: str | None = None,
                          label: str | None = None) -> FolderSummary:
    """Evaluate the model of ``spec`` (as ``evaluate_pairs``) on the real photos of ``folder``, with no reference:
    NIQE of input and restored faces, identity distance between them, faces found."""
    return _evaluate(NO_REFERENCE, spec, {"folder": folder}, output, registered, label)
