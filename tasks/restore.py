"""Ray actors that restore chunks of images in parallel; the driver owns the manifest.

Each actor loads the model once and restores chunks of sources with ``dfdcore.restoration.bulk.restore_sources`` (outputs are
written by the actors, atomically); the driver plans the outputs for the whole list first (collisions, the
output's own files), hands each chunk the manifest rows of its sources, and appends each finished chunk's rows as
one manifest part — so recording costs one chunk, and an interrupted run resumes at chunk granularity. A worker
that dies (killed, out of memory) is restarted and its chunk retried; a chunk whose retries all die becomes
failed rows and the run goes on. ``RAY_ADDRESS`` selects a cluster; without it Ray starts locally.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import ray
from ray.exceptions import RayActorError, RayTaskError

from dfd.tasks.runtime import ensure_ray, threads_per_worker
from dfdcore.io.storage import Source, is_local, join_uri
from dfdcore.restoration.bulk import MANIFEST_NAME, BulkSummary, compact_quietly, prepare_run
from dfdcore.restoration.manifest import append_rows
from dfdcore.restoration.memory import default_max_pixels
from dfdcore.restoration.restorer import ModelSpec, RestoreOptions, Restorer, resolve_device

WORKER_RESTARTS = 2  # a worker killed twice more on one chunk: that chunk's images are failed rows
CHUNKS_IN_FLIGHT_PER_WORKER = 2


@ray.remote(max_restarts=WORKER_RESTARTS, max_task_retries=WORKER_RESTARTS)
class RestoreWorker:
    def __init__(self, spec: ModelSpec, options: RestoreOptions, batch_size: int, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 in workers
        self.restorer = Restorer(spec.build(), options, batch_size=batch_size, device=resolve_device(spec.device))

    def restore(self, sources: list[Source], out: str, previous: dict, **kwargs) -> BulkSummary:
        from dfdcore.restoration.bulk import restore_sources

        return restore_sources(sources, out, self.restorer, previous=previous, record=False, **kwargs)


def restore_parallel(sources: Sequence[Source], out: str, spec: ModelSpec, options: RestoreOptions, *,
                     workers: int, batch_size: int = 4, chunk: int = 8, on_image: Callable[[], None] | None = None,
                     **kwargs) -> BulkSummary:
    """Restore ``sources`` with ``workers`` Ray actors; same outputs and manifest as the single-process path."""
    if is_local(out) and "://" not in out:
        out = os.path.abspath(out)  # actors on a cluster do not run in this folder
    planned, excluded, previous = prepare_run(sources, out, on_image)
    manifest_uri = join_uri(out, MANIFEST_NAME)
    if kwargs.get("max_pixels") is None:  # each worker's share of the memory, not the machine's
        kwargs["max_pixels"] = default_max_pixels(options.upscale, workers)
    total = BulkSummary(images=len(planned), excluded=len(excluded))
    chunks = [planned[i:i + chunk] for i in range(0, len(planned), chunk)]
    chunks.reverse()  # popped from the end: submitted in listing order

    ensure_ray()
    threads = threads_per_worker(workers)
    actors = [RestoreWorker.remote(spec, options, batch_size, threads) for _ in range(workers)]
    in_flight: dict[ray.ObjectRef, tuple[list[Source], int]] = {}

    def submit(actor_index: int) -> None:
        part = chunks.pop()
        rows = {s.uri: previous[s.uri] for s in part if s.uri in previous}
        ref = actors[actor_index].restore.remote(part, out, rows, **kwargs)
        in_flight[ref] = (part, actor_index)

    for i in range(min(len(chunks), workers * CHUNKS_IN_FLIGHT_PER_WORKER)):
        submit(i % workers)
    try:
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            part, actor_index = in_flight.pop(done[0])
            summary = _chunk_summary(done[0], part)
            total.add(summary)
            try:
                append_rows(manifest_uri, summary.rows)
            except OSError as exc:
                total.unrecorded += len(summary.rows)
                total.storage_error = total.storage_error or f"cannot record rows in {manifest_uri}: {exc}"
            if on_image:
                for _ in part:
                    on_image()
            if chunks and not total.storage_error:
                submit(actor_index)
        while chunks:  # the output stopped taking writes: every remaining input is still a row
            part = chunks.pop()
            summary = _failed_summary(part, f"not attempted: {total.storage_error}")
            total.add(summary)
            if on_image:
                for _ in part:
                    on_image()
    finally:
        for actor in actors:
            ray.kill(actor)
    if total.storage_error is None:
        compact_quietly(manifest_uri)
    return total


def _chunk_summary(ref: ray.ObjectRef, part: list[Source]) -> BulkSummary:
    try:
        return ray.get(ref)
    except (RayActorError, RayTaskError) as exc:
        reason = (f"worker died while restoring this chunk, {WORKER_RESTARTS + 1} times"
                  if isinstance(exc, RayActorError) else f"worker error: {type(exc.cause).__name__}: {exc.cause}")
        return _failed_summary(part, reason)


def _failed_summary(part: list[Source], reason: str) -> BulkSummary:
    summary = BulkSummary(images=len(part), failed=len(part))
    summary.rows = [{"source_uri": s.uri, "relpath": s.relpath, "status": "failed", "error": reason} for s in part]
    summary.failures = [(s.uri, reason) for s in part]
    return summary
