"""build_dictionary: images → faces & landmarks → balanced selection → VGG features → k-means → dictionary.

Each step writes its tables under OUT and a marker ``OUT/.steps/<step>.json`` holding the key of its inputs and
configuration; a rerun skips every step whose key is unchanged (changing only K reruns only k-means and export),
and the feature step also skips shards already written, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE

from dfdcore.dictionary.collection import (
    EXPRESSION_COLUMNS,
    FACES_SCHEMA,
    IMAGES_SCHEMA,
    ok_rows,
    read_table,
)
from dfdcore.io.hashing import sha256_json
from dfdcore.io.parquet import write_parquet
from dfdcore.io.storage import exists, join_uri, list_images, read_bytes, write_bytes_atomic


@dataclass(frozen=True)
class DictionaryConfig:
    k: int = 512
    select: int = 10_000
    selection_method: str = "stratified"
    flip: bool = False
    face_size: int = 512
    ngf: int = 64
    vgg_weights: str | None = None
    random_weights: bool = False
    seed: int = 0
    niter: int = 20
    max_points_per_centroid: int = 256
    max_train_gib: float = 4.0      # cap on each k-means training sample (float32); mouth_256 rows are 1.5 MiB
    upsample: int = 1
    batch: int = 16
    workers: int = 2


def _done(out: str, step: str, key: str) -> bool:
    marker = join_uri(out, f".steps/{step}.json")
    return exists(marker) and json.loads(read_bytes(marker)).get("key") == key


def _mark(out: str, step: str, key: str, **info) -> None:
    write_bytes_atomic(join_uri(out, f".steps/{step}.json"), json.dumps({"key": key, **info}).encode())


def _json(value) -> str:
    return json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def _gather(refs: list, description: str, sizes: list[int]) -> list:
    """ray.get with a progress bar counting the items of each finished batch; results in submission order."""
    import ray
    from tqdm import tqdm

    order = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=sum(sizes), desc=description, unit="item") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[order[done[0]]] = ray.get(done[0])
            bar.update(sizes[order[done[0]]])
    return results


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@task(cache_policy=NONE, retries=1)
def scan(source: str, out: str, cfg: DictionaryConfig) -> str:

    from dfd.tasks.dictionary import scan_batch
    from dfd.tasks.runtime import ensure_ray

    sources = list_images([source])
    key = sha256_json(["scan", [s.uri for s in sources]])
    uri = join_uri(out, "images.parquet")
    if not _done(out, "scan", key):
        ensure_ray()
        chunks = _chunks(sources, cfg.batch)
        rows = [r for part in _gather([scan_batch.remote(c) for c in chunks], "scan", [len(c) for c in chunks])
                for r in part]
        write_parquet(uri, rows, IMAGES_SCHEMA)
        _mark(out, "scan", key)
    return key


@task(cache_policy=NONE, retries=1)
def landmarks(out: str, scan_key: str, cfg: DictionaryConfig) -> str:

    from dfd.tasks.dictionary import landmarks_batch
    from dfd.tasks.runtime import ensure_ray

    key = sha256_json(["landmarks", scan_key, cfg.upsample])
    if not _done(out, "landmarks", key):
        ensure_ray()
        images = ok_rows(read_table(join_uri(out, "images.parquet")))
        chunks = _chunks(images, cfg.batch)
        parts = _gather([landmarks_batch.remote(c, cfg.upsample) for c in chunks], "landmarks",
                        [len(c) for c in chunks])
        write_parquet(join_uri(out, "faces.parquet"), [r for part in parts for r in part], FACES_SCHEMA)
        _mark(out, "landmarks", key)
    return key


@task(cache_policy=NONE)
def select(out: str, faces_key: str, cfg: DictionaryConfig) -> str:
    import numpy as np
    import pyarrow as pa

    from dfdcore.dictionary.selection import select_balanced, selection_histogram

    key = sha256_json(["select", faces_key, cfg.select, cfg.selection_method, cfg.seed])
    if not _done(out, "select", key):
        faces = ok_rows(read_table(join_uri(out, "faces.parquet")))
        names = ("yaw", "pitch", "roll", *EXPRESSION_COLUMNS)
        descriptors = np.array([[f[n] for n in names] for f in faces], dtype=np.float64).reshape(len(faces), -1)
        chosen, bins, stats = select_balanced(descriptors, cfg.select, method=cfg.selection_method, seed=cfg.seed)
        picked = set(int(i) for i in chosen)
        rows = [{"image_id": f["image_id"], "face_index": f["face_index"], "uri": f["uri"], "lm5": f["lm5"],
                 "lm68": f["lm68"], "bin": int(bins[i]), "selected": i in picked} for i, f in enumerate(faces)]
        schema = pa.schema([("image_id", pa.string()), ("face_index", pa.int32()), ("uri", pa.string()),
                            ("lm5", pa.list_(pa.float32())), ("lm68", pa.list_(pa.float32())), ("bin", pa.int32()),
                            ("selected", pa.bool_())], metadata={"stats": _json(stats)})
        write_parquet(join_uri(out, "selection.parquet"), rows, schema)
        with tempfile.TemporaryDirectory() as tmp:
            plot = selection_histogram(descriptors, np.asarray(sorted(picked), dtype=np.int64), names,
                                       Path(tmp) / "selection.png")
            write_bytes_atomic(join_uri(out, "selection.png"), Path(plot).read_bytes())
        _mark(out, "select", key, stats=json.loads(_json(stats)))
    return key


@task(cache_policy=NONE, retries=1)
def features(out: str, selection_key: str, cfg: DictionaryConfig) -> tuple[str, str, bool]:
    import ray

    from dfd.tasks.dictionary import FeatureWorker
    from dfd.tasks.runtime import ensure_ray, threads_per_worker

    key = sha256_json(["features", selection_key, cfg.flip, cfg.face_size, cfg.ngf, cfg.vgg_weights,
                       cfg.random_weights, cfg.seed])
    root = join_uri(out, "features")
    marker = join_uri(out, ".steps/features.json")
    if _done(out, "features", key):
        info = json.loads(read_bytes(marker))
        return key, info["checksum"], info["random"]
    ensure_ray()
    selected = [r for r in read_table(join_uri(out, "selection.parquet")) if r["selected"]]
    workers = max(1, cfg.workers)
    actors = [FeatureWorker.remote(cfg.vgg_weights, cfg.seed if cfg.random_weights else None, cfg.face_size,
                                   cfg.ngf, threads_per_worker(workers)) for _ in range(workers)]
    jobs, sizes = [], []
    for i, chunk in enumerate(_chunks(selected, cfg.batch)):
        shard = f"{key}-{i:05d}"
        if exists(join_uri(root, f"scale={cfg.face_size // 16}/part=mouth/{shard}.parquet")):
            continue  # written by an earlier, interrupted run (extract_shard writes the coarsest mouth last)
        jobs.append(actors[i % workers].extract.remote(chunk, root, shard, cfg.flip))
        sizes.append(len(chunk))
    _gather(jobs, "features", sizes)
    checksum, random = ray.get(actors[0].extractor.remote())
    for actor in actors:
        ray.kill(actor)
    _mark(out, "features", key, checksum=checksum, random=random)
    return key, checksum, random


@task(cache_policy=NONE)
def cluster_and_export(out: str, features_key: str, cfg: DictionaryConfig, checksum: str, random: bool) -> dict:
    from dfdcore.config import GeneratorConfig
    from dfdcore.dictionary.kmeans import build_dictionary as kmeans_dictionary

    key = sha256_json(["kmeans", features_key, cfg.k, cfg.niter, cfg.seed, cfg.max_points_per_centroid,
                       cfg.max_train_gib])
    marker = join_uri(out, ".steps/kmeans.json")
    if _done(out, "kmeans", key):
        return json.loads(read_bytes(marker))["metrics"]
    config = GeneratorConfig(face_size=cfg.face_size, ngf=cfg.ngf)
    dictionary, results = kmeans_dictionary(join_uri(out, "features"), config, cfg.k, niter=cfg.niter,
                                            seed=cfg.seed, max_points_per_centroid=cfg.max_points_per_centroid,
                                            max_train_bytes=int(cfg.max_train_gib * 2**30))
    dictionary.metadata.setdefault("provenance", {}).update(
        {"extractor_checksum": checksum, "random_vgg": random, "k": cfg.k, "config": asdict(cfg)})
    dictionary.save(join_uri(out, "dictionary.safetensors"))
    dictionary.save_official(join_uri(out, f"DictionaryCenter{cfg.face_size}"))
    metrics = {f"{s}/{p}": {"objective": [float(v) for v in r.objective], "sizes": [int(v) for v in r.sizes],
                            "empty": int(r.empty), "rows": int(r.n_rows), "train": int(r.n_train)}
               for (s, p), r in results.items()}
    _mark(out, "kmeans", key, metrics=metrics)
    return metrics


@dataclass
class BuildSummary:
    images: int = 0
    failed_images: int = 0
    faces: int = 0
    selected: int = 0
    seconds: float = 0.0
    run_id: str = ""
    kmeans: dict = field(default_factory=dict)


@flow(name="build_dictionary", log_prints=True)
def build_dictionary(source: str, out: str, config: DictionaryConfig = DictionaryConfig()) -> BuildSummary:
    """Build component dictionaries from the photos at ``source`` into ``out`` and record an MLflow run."""
    import mlflow

    from dfd.flows.tracking import mlflow_experiment

    started = time.perf_counter()
    experiment = mlflow_experiment("dfd-build-dictionary")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_params({k: v for k, v in asdict(config).items()} | {"source": source, "out": out})
        scan_key = scan(source, out, config)
        faces_key = landmarks(out, scan_key, config)
        selection_key = select(out, faces_key, config)
        features_key, checksum, random = features(out, selection_key, config)
        metrics = cluster_and_export(out, features_key, config, checksum, random)

        images = read_table(join_uri(out, "images.parquet"))
        faces = read_table(join_uri(out, "faces.parquet"))
        selected = [r for r in read_table(join_uri(out, "selection.parquet")) if r["selected"]]
        summary = BuildSummary(images=len(images), failed_images=sum(r["status"] != "ok" for r in images),
                               faces=len(ok_rows(faces)), selected=len(selected), run_id=run.info.run_id,
                               kmeans=metrics)
        mlflow.set_tags({"extractor_checksum": checksum, "random_vgg": str(random)})
        mlflow.log_metrics({"images": summary.images, "failed_images": summary.failed_images,
                            "faces": summary.faces, "selected": summary.selected})
        for name, m in metrics.items():
            tag = name.replace("/", "_")
            mlflow.log_metric(f"empty_clusters_{tag}", m["empty"])
            for step, value in enumerate(m["objective"]):
                mlflow.log_metric(f"inertia_{tag}", value, step=step)
        _log_artifacts(out)
        summary.seconds = time.perf_counter() - started
        mlflow.log_metric("seconds", summary.seconds)
    return summary


def _log_artifacts(out: str) -> None:
    import mlflow

    from dfdcore.io.storage import is_local

    if not is_local(out):
        mlflow.set_tag("outputs", out)
        return
    root = Path(out)
    for name in ("selection.png", "images.parquet", "faces.parquet", "selection.parquet", "dictionary.safetensors"):
        if (root / name).exists():
            mlflow.log_artifact(str(root / name))
