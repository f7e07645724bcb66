"""restore_bucket: a prefix of photos (any fsspec URL) → every new or changed photo restored → an output prefix.

Incremental by content: the manifest under the output holds each input's sha256 and the configuration it was
restored with, so a scheduled run restores only what is new or changed since the last one (and retries failures).
Ray actors hold the model and take chunks; the driver appends each finished chunk's rows to the manifest as a part
of its own, so a run killed mid-way loses at most the chunks in flight and the next run redoes only those.
The options travel whole: ``ModelSpec``, ``RestoreOptions`` and ``RunOptions`` are the flow's parameters (Prefect
validates them), are handed as they are to the Ray workers and are all logged to the run's MLflow run.
A registered model (``model.registered``: ``NAME@ALIAS`` or ``NAME/VERSION``) is resolved at the start of each run,
so promoting another version to the alias changes what the next scheduled run uses; each manifest row's
``model_version`` says which version restored it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace

from prefect import flow, task
from prefect.cache_policies import NONE

from dfd.flows.datasets import log_listing
from dfd.flows.registry import resolve_registered
from dfd.flows.steps import FlowRun, flow_run
from dfdcore.restoration.bulk import BulkSummary, RunOptions, restore_sources
from dfdcore.restoration.restorer import ModelSpec, RestoreOptions, Restorer

EXPERIMENT = "dfd-restore-bucket"
# Listing and reading objects are the steps that meet flaky storage; restoring is idempotent (outputs are atomic
# and named by input), so a retried chunk only redoes its own work.
STORAGE_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 10, 30]}


@task(cache_policy=NONE, **STORAGE_RETRIES)
def list_photos(source: str, leave_out: str | None = None) -> list:
    """Every file under ``source`` (non-images too: they become rows saying why they were skipped), less those
    under ``leave_out`` (the failed-copies prefix, when it lies inside the source)."""
    import os

    from dfdcore.io.storage import RESTORABLE_EXTENSIONS, is_local, list_images

    sources = list_images([source], RESTORABLE_EXTENSIONS, with_others=True)
    if leave_out:
        # listed local files are absolute paths: so must the prefix be ("failed/" given relative)
        prefix = (os.path.abspath(leave_out) if is_local(leave_out) else leave_out).rstrip("/") + "/"
        sources = [s for s in sources if not s.uri.startswith(prefix)]
    return sources


@task(cache_policy=NONE, **STORAGE_RETRIES)
def restore_photos(sources: list, output: str, model: ModelSpec, restore: RestoreOptions, run: RunOptions
                   ) -> BulkSummary:
    """Restore every listed photo not already done (same content and configuration) into ``output``: on
    ``run.workers`` Ray actors, or in this flow run's process with 0. Each finished chunk is recorded in the
    manifest at once, so a retried or rerun task redoes only what was not recorded."""
    progress = Progress(len(sources))
    if run.workers:
        from dfd.tasks.restore import restore_parallel

        return restore_parallel(sources, output, model, restore, run, on_image=progress,
                                on_placement=lambda lines: print("restore workers: " + "; ".join(lines)))
    return restore_sources(sources, output, Restorer.from_spec(model, restore, run.batch_size), run,
                           on_image=progress)


class Progress:
    """A Prefect progress artifact of the task it is made in, counting files done (restored, skipped or failed):
    updated as chunks finish, at most every ``every_s`` seconds, so that the UI shows how far a long run is."""

    def __init__(self, total: int, every_s: float = 5.0) -> None:
        from prefect.artifacts import create_progress_artifact

        self.total, self.done, self.every_s = max(1, total), 0, every_s
        self.artifact = create_progress_artifact(0.0, description=f"0 of {total} files")
        self.last = time.monotonic()

    def __call__(self) -> None:
        self.done += 1
        if self.done == self.total or time.monotonic() - self.last >= self.every_s:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact, 100.0 * self.done / self.total,
                                     description=f"{self.done} of {self.total} files")
            self.last = time.monotonic()


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


def run_params(source: str, output: str, model: ModelSpec, restore: RestoreOptions, run: RunOptions) -> dict:
    """Every option of a run as MLflow parameters: the model's as model_*, the restore and run options by name."""
    return {"source": source, "output": output, **{f"model_{k}": v for k, v in asdict(model).items()},
            **asdict(restore), **asdict(run)}


@task(cache_policy=NONE)
def record_results(tracked: FlowRun, summary: BulkSummary, copied: int) -> None:
    """Log what the run did to its MLflow run: the counts, throughput, the failures (failures.json) and the
    identity of the model that made the outputs (tag model_id)."""
    counts = {k: v for k, v in asdict(summary).items() if isinstance(v, int) and not isinstance(v, bool)}
    processed = summary.restored + summary.no_face + summary.failed
    tracked.log(metrics={**counts, "listed": summary.listed, "failures_copied": copied, "seconds": summary.seconds,
                         "images_per_second": processed / summary.seconds if summary.seconds else 0.0,
                         "manifest_seconds_per_append": summary.manifest_seconds / max(1, summary.manifest_appends)})
    if summary.model_id:
        tracked.log(tags={"model_id": summary.model_id})
    if summary.failures:
        tracked.text("failures.json", json.dumps(summary.failures, indent=1))


@flow(name="restore_bucket", log_prints=True)
def restore_bucket(source: str, output: str, model: ModelSpec = ModelSpec(), restore: RestoreOptions = RestoreOptions(),
                   run: RunOptions = RunOptions(workers=2), failed_prefix: str | None = None,
                   system_metrics: bool = False) -> BulkSummary:
    """Restore the photos under ``source`` that are new or changed into ``output`` (restored_imgs/ + manifest).

    ``model``: how to build the face model (``ModelSpec``: dfdnet with ``weights`` + ``dictionary``, a
    ``registered`` model — NAME@ALIAS, resolved when the run starts — a ``bundled`` one, or ``random_weights``, or
    identity, which pastes faces back unchanged to check the pipeline; ``fidelity``, ``dict_dtype``, ``device``,
    ``precision``: fp32, or bf16 / fp16 under autocast).
    The default ``ModelSpec()`` names no model: the bundled one (dfd-pd-128), recorded by its name. ``restore``:
    what changes the outputs (``RestoreOptions``: upscale, detector, min_face, ...; part of each row's config hash).
    ``run``: how the run goes (``RunOptions``: workers, gpus_per_worker, chunk, batch_size, force, save_faces, cmp,
    input limits; each worker runs on the GPU Ray assigns it, its placement printed to the flow run's log).
    Each is given whole: fields left out take the class defaults. ``failed_prefix``: where to copy inputs that
    failed, with their reasons. ``system_metrics``: MLflow samples this machine's CPU, memory, disk, network (and
    GPUs, with pynvml) into the run as system/* metrics while it runs. The listing is the run's dataset input
    (``flows.datasets.log_listing``: every file listed, its digest from the listing's ETags or sizes and times).
    """
    with flow_run(EXPERIMENT, system_metrics=system_metrics) as tracked:
        model = model.resolved()  # naming no model: the bundled one, by name (model_bundled)
        tracked.log(params=run_params(source, output, model, restore, run))  # as asked: an alias, not a version
        model, registry_tags = resolve_registered(model)  # in the run's store: the alias as it points now
        tracked.log(tags=registry_tags | ({"bundled_model": model.bundled} if model.bundled else {}))
        sources = list_photos(source, failed_prefix)
        log_listing(source, sources)
        done = restore_photos(sources, output, model, restore, run)
        copied = copy_failures(done.failures, sources, failed_prefix) if failed_prefix and done.failures else 0
        done = replace(done, seconds=tracked.seconds(), run_id=tracked.run_id)
        record_results(tracked, done, copied)
    print(f"restore_bucket: {done.listed} listed, {done.restored} restored, {done.no_face} without a face, "
          f"{done.skipped} unchanged ({done.failed_before} of them failed before on their own bytes), "
          f"{done.not_read} not images, {done.failed} failed ({done.seconds:.1f} s)")
    if done.storage_error:
        raise RuntimeError(f"restore_bucket stopped: {done.storage_error}")
    return done
