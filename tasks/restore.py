"""Ray actors that restore chunks of images in parallel; the driver owns the manifest.

Each actor loads the model once and restores chunks of sources with ``dfdcore.restoration.bulk.restore_sources`` (outputs are
written by the actors, atomically); the driver plans the outputs for the whole list first (collisions, the
output's own files), hands each chunk the manifest rows of its sources, and appends each finished chunk's rows as
one manifest part — so recording costs one chunk, and an interrupted run resumes at chunk granularity. A worker
that dies (killed, out of memory) is restarted and its chunk retried; a chunk whose retries all die becomes
failed rows and the run goes on. ``RAY_ADDRESS`` selects a cluster; without it Ray starts locally.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import ray
from ray.exceptions import RayActorError, RayTaskError

from dfd.tasks.devices import check_worker_device, place_worker, placements, worker_options
from dfd.tasks.runtime import ensure_ray
from dfdcore.io.storage import Source, join_uri
from dfdcore.io.video import is_video_name
from dfdcore.restoration.bulk import (
    COMPACT_TIER_EVERY,
    MANIFEST_NAME,
    BulkSummary,
    RunOptions,
    StopRequest,
    absolute_output,
    compact_quietly,
    prepare_run,
    relist_quietly,
)
from dfdcore.restoration.compaction import compact_tier
from dfdcore.restoration.lock import output_lock
from dfdcore.restoration.manifest import append_rows, is_listed_current
from dfdcore.restoration.restorer import ModelSpec, RestoreOptions, Restorer

WORKER_RESTARTS = 2  # a worker killed twice more on one chunk: that chunk's images are failed rows
CHUNKS_IN_FLIGHT_PER_WORKER = 2


@ray.remote(max_restarts=WORKER_RESTARTS, max_task_retries=WORKER_RESTARTS)
class RestoreWorker:
    def __init__(self, spec: ModelSpec, options: RestoreOptions, run: RunOptions) -> None:
        self.where = place_worker(spec.device)  # the GPU Ray assigned (else the CPU), threads from Ray's CPUs
        self.restorer = Restorer.from_spec(dataclasses.replace(spec, device=self.where.device), options,
                                           run.batch_size)
        self.run = run

    def placement(self):
        """Where this worker runs (``dfd.tasks.devices.Placement``)."""
        return self.where

    def restore(self, sources: list[Source], out: str, previous: dict) -> BulkSummary:
        from dfdcore.restoration.bulk import restore_sources

        return restore_sources(sources, out, self.restorer, self.run, previous=previous, record=False)

    def config_hashes(self) -> tuple[str, str]:
        """The configuration hashes this worker's rows get: (photos, videos)."""
        from dfdcore.restoration.restorer import model_identity
        from dfdcore.restoration.video import video_config_hash

        photo = self.restorer.options.config_hash(model_identity(self.restorer.model))
        return photo, video_config_hash(photo)


def restore_parallel(sources: Sequence[Source], out: str, spec: ModelSpec, options: RestoreOptions, run: RunOptions,
                     on_image: Callable[[], None] | None = None,
                     on_placement: Callable[[list[str]], None] | None = None, stop: StopRequest | None = None,
                     on_wait: Callable[[str], None] | None = None) -> BulkSummary:
    """Restore ``sources`` with ``run.workers`` Ray actors, ``run.chunk`` images at a time; same outputs and
    manifest as the single-process path (each worker's default pixel limit is its share of the memory). Each actor
    asks Ray for ``run.gpus_per_worker`` GPUs and an even share of the CPUs; ``on_placement`` is given one line per
    worker saying where it runs (its device, Ray's GPU id, its threads). The driver holds the output's lock (as
    ``restore_sources`` does); once ``stop`` is set no chunk is handed out and those in flight are finished."""
    if run.workers < 1:
        raise ValueError(f"restore_parallel needs at least one worker, got workers={run.workers}")
    check_worker_device(spec.device, run.gpus_per_worker)
    started = time.perf_counter()
    out = absolute_output(out)  # actors on a cluster do not run in this folder
    ensure_ray()
    resources = worker_options(run.workers, run.gpus_per_worker)
    actors = [RestoreWorker.options(**resources).remote(spec, options, run) for _ in range(run.workers)]
    try:
        hashes = _config_hashes(actors[0])  # None: the worker cannot start; its chunks become failed rows
        with output_lock(out, hashes[0] if hashes else None, on_wait):
            if on_placement:
                on_placement(placements(actors))
            total = _restore_with(actors, sources, out, hashes, run, on_image, stop)
    finally:
        for actor in actors:
            ray.kill(actor)
    return dataclasses.replace(total, seconds=time.perf_counter() - started)


def _restore_with(actors: list, sources: Sequence[Source], out: str, hashes: tuple[str, str] | None,
                  run: RunOptions, on_image: Callable[[], None] | None, stop: StopRequest | None) -> BulkSummary:
    planned, excluded, previous, damaged = prepare_run(sources, out, on_image)
    manifest_uri = join_uri(out, MANIFEST_NAME)
    total = BulkSummary(excluded=len(excluded), damaged_parts=damaged)

    def counted(part: list[Source]) -> None:
        for _ in part if on_image else ():
            on_image()

    in_flight: dict[ray.ObjectRef, tuple[list[Source], int]] = {}
    # What the listing shows unchanged is skipped here: no chunk, no read, no worker time. (A worker that cannot
    # start says nothing here: its chunks become failed rows below, with the reason.)
    if hashes and not run.force:
        unchanged = [s for s in planned if is_listed_current(
            previous.get(s.uri), s.listing, hashes[is_video_name(s.relpath)])]
        if unchanged:
            failed_before = sum(previous[s.uri].get("status") == "failed" for s in unchanged)
            total = total + BulkSummary(images=len(unchanged), skipped=len(unchanged), failed_before=failed_before)
            counted(unchanged)
            kept = {s.uri for s in unchanged}
            planned = [s for s in planned if s.uri not in kept]
    chunks = [planned[i:i + run.chunk] for i in range(0, len(planned), run.chunk)]
    chunks.reverse()  # popped from the end: submitted in listing order

    def submit(actor_index: int) -> None:
        part = chunks.pop()
        rows = {s.uri: previous[s.uri] for s in part if s.uri in previous}
        in_flight[actors[actor_index].restore.remote(part, out, rows)] = (part, actor_index)

    for i in range(min(len(chunks), run.workers * CHUNKS_IN_FLIGHT_PER_WORKER)):
        submit(i % run.workers)
    while in_flight:
        done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)  # a signal's handler runs between waits
        if not done:
            continue
        part, actor_index = in_flight.pop(done[0])
        summary = _chunk_summary(done[0], part)
        t0 = time.perf_counter()
        try:
            append_rows(manifest_uri, summary.rows)
            if (total.manifest_appends + 1) % COMPACT_TIER_EVERY == 0:
                compact_tier(manifest_uri)  # bounded: merges one level's oldest parts at most
            # recorded: the driver keeps counts and failures, not rows (its memory stays flat with the bucket)
            summary = dataclasses.replace(summary, rows=[], manifest_appends=1,
                                          manifest_seconds=time.perf_counter() - t0)
        except OSError as exc:
            summary = summary + BulkSummary(unrecorded=len(summary.rows),
                                            storage_error=f"cannot record rows in {manifest_uri}: {exc}")
        total = total + summary
        counted(part)
        if chunks and not total.storage_error and not stop:
            submit(actor_index)
    if stop and chunks:  # interrupted: the chunks not handed out are left for the next run, without rows
        total = total + BulkSummary(interrupted=stop.reason, not_started=sum(len(part) for part in chunks))
        chunks.clear()
    while chunks:  # the output stopped taking writes: every remaining input is still a row
        part = chunks.pop()
        total = total + BulkSummary.all_failed(part, f"not attempted: {total.storage_error}")
        counted(part)
    if total.storage_error is None:
        relist_quietly(manifest_uri, total.relisted)
        total = total + BulkSummary(damaged_parts=compact_quietly(manifest_uri))
    return total


def _config_hashes(actor) -> tuple[str, str] | None:
    try:
        return ray.get(actor.config_hashes.remote())
    except (RayActorError, RayTaskError):
        return None


def _chunk_summary(ref: ray.ObjectRef, part: list[Source]) -> BulkSummary:
    try:
        return ray.get(ref)
    except (RayActorError, RayTaskError) as exc:
        reason = (f"worker died while restoring this chunk, {WORKER_RESTARTS + 1} times"
                  if isinstance(exc, RayActorError) else f"worker error: {type(exc.cause).__name__}: {exc.cause}")
        return BulkSummary.all_failed(part, reason)
