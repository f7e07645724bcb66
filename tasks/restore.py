"""Ray actors that restore shards of images in parallel; the driver owns the manifest.

Each actor loads the model once and restores chunks of sources with ``dfdcore.bulk.restore_sources`` (outputs are
written by the actors, atomically); the driver merges each finished chunk's manifest rows and rewrites the manifest,
so an interrupted run resumes at chunk granularity. ``RAY_ADDRESS`` selects a cluster; without it Ray starts locally.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import ray

from dfdcore.bulk import MANIFEST_NAME, BulkSummary
from dfdcore.io.storage import Source, is_local, join_uri
from dfdcore.manifest import merge_rows, read_manifest, write_manifest
from dfdcore.restore import ModelSpec, Restorer, RestoreOptions, resolve_device

from .runtime import ensure_ray, threads_per_worker


@ray.remote
class RestoreWorker:
    def __init__(self, spec: ModelSpec, options: RestoreOptions, batch_size: int, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 in workers
        self.restorer = Restorer(spec.build(), options, batch_size=batch_size, device=resolve_device(spec.device))

    def restore(self, sources: list[Source], out: str, **kwargs) -> BulkSummary:
        from dfdcore.bulk import restore_sources

        return restore_sources(sources, out, self.restorer, write_manifest_file=False, **kwargs)


def restore_parallel(sources: Sequence[Source], out: str, spec: ModelSpec, options: RestoreOptions, *,
                     workers: int, batch_size: int = 4, chunk: int = 8, on_image: Callable[[], None] | None = None,
                     **kwargs) -> BulkSummary:
    """Restore ``sources`` with ``workers`` Ray actors; same outputs and manifest as the single-process path."""
    if is_local(out) and "://" not in out:
        out = os.path.abspath(out)  # actors on a cluster do not run in this folder
    ensure_ray()
    threads = threads_per_worker(workers)
    actors = [RestoreWorker.remote(spec, options, batch_size, threads) for _ in range(workers)]
    manifest_uri = join_uri(out, MANIFEST_NAME)
    rows = read_manifest(manifest_uri)
    total = BulkSummary(images=len(sources))
    chunks = [list(sources[i:i + chunk]) for i in range(0, len(sources), chunk)]
    pending = {actors[i % workers].restore.remote(part, out, **kwargs): part for i, part in enumerate(chunks)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        part = pending.pop(done[0])
        summary: BulkSummary = ray.get(done[0])
        rows = merge_rows(rows, summary.rows)
        write_manifest(manifest_uri, rows)
        for name in ("restored", "no_face", "skipped", "failed", "faces"):
            setattr(total, name, getattr(total, name) + getattr(summary, name))
        total.failures += summary.failures
        total.rows += summary.rows
        if on_image:
            for _ in part:
                on_image()
    for actor in actors:
        ray.kill(actor)
    return total
