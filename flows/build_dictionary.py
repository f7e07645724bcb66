"""build_dictionary: images → faces & landmarks → balanced selection → VGG features → k-means → dictionary.

Each step writes its tables under OUT and is recorded as done with a content key of its inputs and settings
(``flows.steps``, keys from ``step_keys``); a rerun skips every step whose key is unchanged (changing only the
k-means options reruns only k-means and export), and the feature step also skips shards already written, so a killed
run resumes where it stopped.
"""
from __future__ import annotations

import itertools
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, task
from prefect.cache_policies import NONE

from dfd.flows.steps import Summary, flat_params, flow_run, run_step
from dfdcore.dictionary.collection import (
    EXPRESSION_COLUMNS,
    FACES_SCHEMA,
    IMAGES_SCHEMA,
    ok_rows,
    read_arrow,
    read_table,
)
from dfdcore.dictionary.kmeans import KMeansOptions
from dfdcore.io.hashing import sha256_json
from dfdcore.io.parquet import write_parquet
from dfdcore.io.storage import Source, exists, join_uri, list_images, write_bytes_atomic

EXPERIMENT = "dfd-build-dictionary"


@dataclass(frozen=True)
class DictionaryConfig:
    """A dictionary build: the k-means options, the balanced selection (``select`` faces, ``seed``), the VGG19
    extractor (``vgg_weights`` or, for tests and demos, a seeded ``random_vgg``) at ``face_size``/``ngf``, and how the
    work is cut (``batch`` images or faces per Ray task, ``workers`` feature actors, each on ``gpus_per_worker`` of
    a GPU when set: not in the step keys, as where features are computed is not what they are)."""

    kmeans: KMeansOptions = KMeansOptions()
    select: int = 10_000
    selection_method: str = "stratified"
    flip: bool = False
    face_size: int = 512
    ngf: int = 64
    vgg_weights: str | None = None
    random_vgg: bool = False
    seed: int = 0
    upsample: int = 1
    batch: int = 16
    workers: int = 2
    gpus_per_worker: float = 0.0


def step_keys(uris: list[str], cfg: DictionaryConfig) -> dict[str, str]:
    """The content key of every step: each covers its own settings and the key of the step before it."""
    keys = {"scan": sha256_json(["scan", uris])}
    keys["landmarks"] = sha256_json(["landmarks", keys["scan"], cfg.upsample])
    keys["select"] = sha256_json(["select", keys["landmarks"], cfg.select, cfg.selection_method, cfg.seed])
    keys["features"] = sha256_json(["features", keys["select"], cfg.flip, cfg.face_size, cfg.ngf, cfg.vgg_weights,
                                    cfg.random_vgg, cfg.seed])
    keys["kmeans"] = sha256_json(["kmeans", keys["features"], asdict(cfg.kmeans)])
    return keys


def _json(value) -> str:
    return json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def _gather(refs: list, description: str, sizes: list[int],
            convert: Callable | None = None) -> tuple[list, dict]:
    """ray.get with a progress bar counting the items of each finished batch → (results in submission order, each
    passed through ``convert`` as it arrives (rows → an Arrow table: the driver holds no Python rows); timing: see
    ``batch_timing``)."""
    import ray
    from tqdm import tqdm

    order = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending, started, done_at = list(refs), time.perf_counter(), []
    with tqdm(total=sum(sizes), desc=description, unit="item") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i, result = order[done[0]], ray.get(done[0])
            results[i] = convert(result) if convert else result
            done_at.append((time.perf_counter() - started, sizes[i]))
            bar.update(sizes[i])
    return results, batch_timing(done_at)


def batch_timing(done_at: list[tuple[float, int]]) -> dict:
    """``done_at``: (seconds since the step's work was sent, items) of each batch in the order they finished →
    ``startup_seconds`` (until the first batch came back: workers starting, imports, one batch) and
    ``steady_seconds_per_item`` between the 10th and 90th percentile of the items (the marginal cost, without start-up
    and the last batches' tail; None below 10 batches)."""
    if not done_at:
        return {"startup_seconds": None, "steady_seconds_per_item": None}
    times = [t for t, _ in done_at]
    counts = list(itertools.accumulate(n for _, n in done_at))
    steady = None
    if len(done_at) >= 10:
        lo = next(i for i, c in enumerate(counts) if c >= 0.1 * counts[-1])
        hi = next(i for i, c in enumerate(counts) if c >= 0.9 * counts[-1])
        steady = (times[hi] - times[lo]) / (counts[hi] - counts[lo]) if counts[hi] > counts[lo] else None
    return {"startup_seconds": times[0], "steady_seconds_per_item": steady}


def _gather_table(refs: list, description: str, sizes: list[int], schema: pa.Schema) -> tuple[pa.Table, dict]:
    """The rows the batches return, as one table in submission order (each batch converted as it arrives), and the
    timing of the batches."""
    tables, timing = _gather(refs, description, sizes, lambda rows: pa.Table.from_pylist(rows, schema=schema))
    return (pa.concat_tables(tables) if tables else schema.empty_table()), timing


def _ok(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table["status"], "ok"))


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@task(cache_policy=NONE, retries=1)
def scan(sources: list[Source], out: str, batch: int) -> dict:
    """Read every photo's header (Ray tasks of ``batch`` photos) → OUT/images.parquet; → counts."""
    from dfd.tasks.dictionary import scan_batch
    from dfd.tasks.runtime import ensure_ray

    ensure_ray()
    chunks = _chunks(sources, batch)
    table, timing = _gather_table([scan_batch.remote(c) for c in chunks], "scan", [len(c) for c in chunks],
                                  IMAGES_SCHEMA)
    write_parquet(join_uri(out, "images.parquet"), table)
    return {"images": table.num_rows, "failed_images": table.num_rows - _ok(table).num_rows, "timing": timing}


@task(cache_policy=NONE, retries=1)
def landmarks(out: str, cfg: DictionaryConfig) -> dict:
    """Faces, 5/68 landmarks, head pose and expression of every readable photo → OUT/faces.parquet; → counts."""
    from dfd.tasks.dictionary import landmarks_batch
    from dfd.tasks.runtime import ensure_ray

    ensure_ray()
    images = ok_rows(read_table(join_uri(out, "images.parquet")))
    chunks = _chunks(images, cfg.batch)
    table, timing = _gather_table([landmarks_batch.remote(c, cfg.upsample) for c in chunks], "landmarks",
                                  [len(c) for c in chunks], FACES_SCHEMA)
    write_parquet(join_uri(out, "faces.parquet"), table)
    return {"faces": _ok(table).num_rows, "timing": timing}


@task(cache_policy=NONE)
def select(out: str, cfg: DictionaryConfig) -> dict:
    """A pose/expression-balanced subset of the faces → OUT/selection.parquet and selection.png; → its statistics."""
    import numpy as np

    from dfdcore.dictionary.selection import select_balanced, selection_histogram

    faces = _ok(read_arrow(join_uri(out, "faces.parquet")))
    names = ("yaw", "pitch", "roll", *EXPRESSION_COLUMNS)
    descriptors = np.stack([faces[n].to_numpy(zero_copy_only=False).astype(np.float64) for n in names], axis=1)
    chosen, bins, stats = select_balanced(descriptors, cfg.select, method=cfg.selection_method, seed=cfg.seed)
    picked = set(int(i) for i in chosen)
    selected = np.zeros(faces.num_rows, dtype=bool)
    selected[sorted(picked)] = True
    table = faces.select(["image_id", "face_index", "uri", "lm5", "lm68"]).append_column(
        "bin", pa.array(np.asarray(bins, dtype=np.int32))).append_column("selected", pa.array(selected))
    write_parquet(join_uri(out, "selection.parquet"), table.replace_schema_metadata({"stats": _json(stats)}))
    with tempfile.TemporaryDirectory() as tmp:
        plot = selection_histogram(descriptors, np.asarray(sorted(picked), dtype=np.int64), names,
                                   Path(tmp) / "selection.png")
        write_bytes_atomic(join_uri(out, "selection.png"), Path(plot).read_bytes())
    return {"selected": len(picked), "stats": stats}


@task(cache_policy=NONE, retries=1)
def features(out: str, shard_prefix: str, cfg: DictionaryConfig) -> dict:
    """VGG19 features of the selected faces' component crops (``workers`` Ray actors) → OUT/features/, one shard per
    batch named ``shard_prefix-<n>``; shards an interrupted call wrote are kept. → the extractor that made them."""
    import ray

    from dfd.tasks.devices import placements, worker_options
    from dfd.tasks.dictionary import FeatureWorker
    from dfd.tasks.runtime import ensure_ray

    ensure_ray()
    root = join_uri(out, "features")
    selected = [r for r in read_table(join_uri(out, "selection.parquet")) if r["selected"]]
    workers = max(1, cfg.workers)
    resources = worker_options(workers, cfg.gpus_per_worker)  # the GPU share asked, an even share of the CPUs
    actors = [FeatureWorker.options(**resources).remote(cfg.vgg_weights, cfg.seed if cfg.random_vgg else None,
                                                        cfg.face_size, cfg.ngf) for _ in range(workers)]
    print("feature workers: " + "; ".join(placements(actors)))
    jobs, sizes = [], []
    for i, chunk in enumerate(_chunks(selected, cfg.batch)):
        shard = f"{shard_prefix}-{i:05d}"
        if exists(join_uri(root, f"scale={cfg.face_size // 16}/part=mouth/{shard}.parquet")):
            continue  # written by an earlier, interrupted run (extract_shard writes the coarsest mouth last)
        jobs.append(actors[i % workers].extract.remote(chunk, root, shard, cfg.flip))
        sizes.append(len(chunk))
    _, timing = _gather(jobs, "features", sizes)
    extractor_checksum, random_vgg = ray.get(actors[0].extractor.remote())
    for actor in actors:
        ray.kill(actor)
    return {"extractor_checksum": extractor_checksum, "random_vgg": random_vgg, "timing": timing}


@task(cache_policy=NONE)
def cluster_and_export(out: str, cfg: DictionaryConfig) -> dict:
    """k-means of every (scale, part) of OUT/features/ → OUT/dictionary.safetensors and the official
    DictionaryCenter<size>/ layout; → per partition: objective per iteration, cluster sizes, row counts."""
    from dfdcore.config import GeneratorConfig
    from dfdcore.dictionary.kmeans import cluster_dictionary

    dictionary, results = cluster_dictionary(join_uri(out, "features"),
                                             GeneratorConfig(face_size=cfg.face_size, ngf=cfg.ngf), cfg.kmeans)
    dictionary.metadata["provenance"]["config"] = asdict(cfg)
    dictionary.save(join_uri(out, "dictionary.safetensors"))
    dictionary.save_official(join_uri(out, f"DictionaryCenter{cfg.face_size}"))
    return {f"{s}/{p}": {"objective": r.objective, "cluster_sizes": r.cluster_sizes.tolist(),
                         "empty_clusters": r.empty_clusters, "rows": r.n_rows, "train": r.n_train}
            for (s, p), r in results.items()}


@dataclass
class BuildSummary(Summary):
    images: int = 0
    failed_images: int = 0
    faces: int = 0
    selected: int = 0
    extractor_checksum: str = ""
    random_vgg: bool = False
    kmeans: dict = field(default_factory=dict)  # "scale/part" → what cluster_and_export returns for it
    timing: dict = field(default_factory=dict)  # scan / landmarks / features → batch_timing of the step


ARTIFACTS = ["selection.png", "images.parquet", "faces.parquet", "selection.parquet", "dictionary.safetensors"]


@flow(name="build_dictionary", log_prints=True)
def build_dictionary(source: str, out: str, config: DictionaryConfig = DictionaryConfig(),
                     options: dict | None = None) -> BuildSummary:
    """Build component dictionaries from the photos at ``source`` into ``out`` and record an MLflow run
    (``options``: what ``dfd build-dictionary`` resolved, CLI names → values, logged as the artifact config.yaml)."""
    sources = list_images([source])
    keys = step_keys([s.uri for s in sources], config)
    with flow_run(EXPERIMENT) as run:
        run.log(params=flat_params(config) | {"source": source, "out": out})
        if options:
            run.config("dfd build-dictionary", options)
        images = run_step(out, "scan", keys["scan"], scan, sources, out, config.batch)
        faces = run_step(out, "landmarks", keys["landmarks"], landmarks, out, config)
        selection = run_step(out, "select", keys["select"], select, out, config)
        extractor = run_step(out, "features", keys["features"], features, out, keys["features"], config)
        kmeans = run_step(out, "kmeans", keys["kmeans"], cluster_and_export, out, config)
        timing = {name: info.pop("timing", {}) for name, info in
                  (("scan", images), ("landmarks", faces), ("features", extractor))}
        summary = BuildSummary(run_id=run.run_id, **images, **faces, selected=selection["selected"], **extractor,
                               kmeans=kmeans, timing=timing)
        log_build(run, out, summary)
    return summary


def log_build(run, out: str, summary: BuildSummary) -> None:
    """The build's figures, extractor and files in its MLflow run (``summary.seconds`` set here)."""
    run.log(tags={"extractor_checksum": summary.extractor_checksum, "random_vgg": summary.random_vgg},
            metrics={name: getattr(summary, name) for name in ("images", "failed_images", "faces", "selected")})
    run.log(metrics={f"{step}_steady_seconds_per_item": t["steady_seconds_per_item"]
                     for step, t in summary.timing.items() if t.get("steady_seconds_per_item") is not None})
    for name, partition in summary.kmeans.items():
        tag = name.replace("/", "_")
        run.log(metrics={f"empty_clusters_{tag}": partition["empty_clusters"]})
        run.curve(f"inertia_{tag}", partition["objective"])
    run.files(out, ARTIFACTS)
    summary.seconds = run.seconds()
    run.log(metrics={"seconds": summary.seconds})
