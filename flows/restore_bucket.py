"""restore_bucket: a prefix of photos (any fsspec URL) → every new or changed photo restored → an output prefix.

Incremental by content: the manifest under the output holds each input's sha256 and the configuration it was
restored with, so a scheduled run restores only what is new or changed since the last one (and retries failures).
Ray actors hold the model and take chunks; the driver merges each finished chunk into the manifest (rewritten
atomically), so a run killed mid-way loses at most the chunks in flight and the next run redoes only those.
One MLflow run per flow run: counts, throughput, failures, model identity.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from prefect import flow, task
from prefect.cache_policies import NONE

from dfdcore.restoration.restorer import ModelSpec, RestoreOptions

EXPERIMENT = "dfd-restore-bucket"
# Listing and reading objects are the steps that meet flaky storage; restoring is idempotent (outputs are atomic
# and named by input), so a retried chunk only redoes its own work.
STORAGE_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 10, 30]}


@task(cache_policy=NONE, **STORAGE_RETRIES)
def list_photos(source: str, leave_out: str | None = None) -> list:
    """Every file under ``source`` (non-images too: they become rows saying why they were skipped), less those
    under ``leave_out`` (the failed-copies prefix, when it lies inside the source)."""
    import os

    from dfdcore.io.storage import is_local, list_images

    sources = list_images([source], with_others=True)
    if leave_out:
        # listed local files are absolute paths: so must the prefix be ("failed/" given relative)
        prefix = (os.path.abspath(leave_out) if is_local(leave_out) else leave_out).rstrip("/") + "/"
        sources = [s for s in sources if not s.uri.startswith(prefix)]
    return sources


@task(cache_policy=NONE, **STORAGE_RETRIES)
def restore_photos(sources: list, output: str, spec: ModelSpec, options: RestoreOptions, workers: int,
                   batch_size: int, chunk: int):
    from dfd.tasks.restore import restore_parallel

    return restore_parallel(sources, output, spec, options, workers=workers, batch_size=batch_size, chunk=chunk)


@task(cache_policy=NONE, **STORAGE_RETRIES)
def copy_failures(failures: list[tuple[str, str]], sources: list, failed_prefix: str) -> int:
    """Copy each failed input under ``failed_prefix`` (same relative path) with a ``.reason.txt`` beside it."""
    from dfdcore.io.storage import join_uri, read_input, write_bytes_atomic

    relpaths = {s.uri: s.relpath for s in sources}
    copied = 0
    for uri, reason in failures:
        relpath = relpaths.get(uri)
        if relpath is None:
            continue
        try:
            data = read_input(uri)  # the same size and time limits as restoring: no copy of a 10 GB file
        except OSError:
            data = None  # unreadable or too large: the reason file still says why
        if data is not None:
            write_bytes_atomic(join_uri(failed_prefix, relpath), data)
        write_bytes_atomic(join_uri(failed_prefix, relpath + ".reason.txt"), (reason + "\n").encode())
        copied += 1
    return copied


@dataclass
class BucketSummary:
    run_id: str = ""
    listed: int = 0
    restored: int = 0
    no_face: int = 0
    skipped: int = 0
    not_read: int = 0
    failed: int = 0
    faces: int = 0
    excluded: int = 0
    seconds: float = 0.0
    failures: list = field(default_factory=list)
    storage_error: str | None = None


@flow(name="restore_bucket", log_prints=True)
def restore_bucket(source: str, output: str, model: str = "dfdnet", weights: str | None = None,
                   dictionary: str | None = None, random_weights: bool = False, face_size: int = 512,
                   ngf: int = 64, upscale: int = 2, only_largest: bool = False, workers: int = 2,
                   batch_size: int = 4, chunk: int = 8, failed_prefix: str | None = None,
                   device: str = "auto") -> BucketSummary:
    """Restore the photos under ``source`` that are new or changed into ``output`` (restored_imgs/ + manifest).

    ``model``: dfdnet (``weights`` + ``dictionary``, or ``random_weights``) or identity (faces pasted back unchanged:
    checks the pipeline). ``failed_prefix``: where to copy inputs that failed, with their reasons.
    """
    import mlflow

    from dfd.flows.tracking import mlflow_experiment

    started = time.perf_counter()
    spec = ModelSpec(model, weights, dictionary, random_weights, face_size=face_size, ngf=ngf, device=device)
    options = RestoreOptions(upscale=upscale, only_largest=only_largest)
    with mlflow.start_run(experiment_id=mlflow_experiment(EXPERIMENT)) as run:
        mlflow.log_params({"source": source, "output": output, "workers": workers, "batch_size": batch_size,
                           **{f"model_{k}": v for k, v in asdict(spec).items()}, **asdict(options)})
        sources = list_photos(source, failed_prefix)
        done = restore_photos(sources, output, spec, options, workers, batch_size, chunk)
        copied = copy_failures(done.failures, sources, failed_prefix) if failed_prefix and done.failures else 0
        seconds = time.perf_counter() - started
        summary = BucketSummary(run_id=run.info.run_id, listed=len(sources), restored=done.restored,
                                no_face=done.no_face, skipped=done.skipped, not_read=done.not_read,
                                failed=done.failed, faces=done.faces, excluded=done.excluded, seconds=seconds,
                                failures=[list(f) for f in done.failures], storage_error=done.storage_error)
        processed = done.restored + done.no_face + done.failed
        mlflow.log_metrics({"listed": len(sources), "restored": done.restored, "no_face": done.no_face,
                            "skipped": done.skipped, "not_read": done.not_read, "failed": done.failed,
                            "faces": done.faces, "excluded": done.excluded,
                            "failures_copied": copied, "seconds": seconds,
                            "images_per_second": processed / seconds if seconds else 0.0})
        if done.rows:
            mlflow.set_tag("model_id", done.rows[0]["model_id"])
        if done.failures:
            mlflow.log_text(json.dumps(summary.failures, indent=1), "failures.json")
    print(f"restore_bucket: {len(sources)} listed, {done.restored} restored, {done.no_face} without a face, "
          f"{done.skipped} unchanged, {done.not_read} not images, {done.failed} failed ({seconds:.1f} s)")
    if done.storage_error:
        raise RuntimeError(f"restore_bucket stopped: {done.storage_error}")
    return summary
