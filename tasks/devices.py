"""Where a Ray worker runs its network: on the GPU Ray assigned it, else the CPU, with as many torch threads as
the CPUs Ray gave it.

The driver asks Ray for each actor's share (``worker_options``: ``num_gpus`` = ``gpus_per_worker``, ``num_cpus`` =
an even split of the CPUs of the nodes that can hold the actors), so Ray, not dfd, decides which GPU each worker
gets. Inside the actor ``place_worker`` turns that assignment into a torch device and a thread count:

* ``ray.get_gpu_ids()`` names the assigned GPU as the node numbers it (0..N-1, or the entries of the node's own
  CUDA_VISIBLE_DEVICES). Ray then sets the worker's CUDA_VISIBLE_DEVICES to the assigned ids, so torch sees that
  GPU as ``cuda:0``: the index is the id's position in CUDA_VISIBLE_DEVICES (``cuda_index``), never the id itself.
  Two actors of ``gpus_per_worker`` 0.5 may share one id (and one GPU).
* A worker given no GPU runs on the CPU (or MPS): Ray leaves CUDA_VISIBLE_DEVICES alone for such workers, so
  torch's "cuda" there would be some GPU every other worker may pick too.
* Ray's GPUs can be logical (``ray.init(num_gpus=2)`` on a machine without CUDA, as the tests do): the worker then
  runs on the CPU and still reports the ids Ray assigned.
* Threads: the CPUs Ray assigned (``get_assigned_resources``), at least 1; an actor given none takes the CPUs this
  process may use (``available_cpus``: affinity and cgroup quota).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ray

from dfdcore.runtime import available_cpus

CUDA_ENV = "CUDA_VISIBLE_DEVICES"
RAY_RESOURCE_STEP = 10_000  # Ray rounds fractional resources to 1e-4: a share is rounded down to it


@dataclass(frozen=True)
class Placement:
    """Where one worker runs: ``device`` (torch), ``gpu_ids`` (Ray's, empty when none), ``threads`` (torch
    intra-op), ``cpus`` and ``gpus`` (the amounts Ray assigned, None when none) and ``node`` (Ray's node id)."""

    device: str
    gpu_ids: tuple[str, ...]
    threads: int
    cpus: float | None = None
    gpus: float | None = None
    node: str = ""

    def describe(self) -> str:
        """One line for a command's summary: "cuda:0 (Ray GPU 3 × 0.5), 8 threads (Ray: 8 CPUs)"."""
        gpu = ""
        if self.gpu_ids:
            share = f" × {self.gpus:g}" if self.gpus and self.gpus < 1 else ""
            note = "" if self.device.startswith("cuda") else "; no CUDA device here, so on the CPU"
            gpu = f" (Ray GPU {','.join(self.gpu_ids)}{share}{note})"
        cpus = f" (Ray: {self.cpus:g} CPUs)" if self.cpus else ""
        return f"{self.device}{gpu}, {self.threads} thread{'s' * (self.threads != 1)}{cpus}"


def check_worker_device(device: str, gpus_per_worker: float) -> None:
    """Refuse a ``--device`` that Ray's assignment would contradict: with ``gpus_per_worker`` each worker's GPU is
    the one Ray gives it (``auto`` or ``cuda``); without, a worker has no GPU of its own to name."""
    if not 0 <= gpus_per_worker <= 1:
        raise ValueError(f"gpus_per_worker must lie in [0, 1] (a worker runs its network on one GPU; 0.5 shares a "
                         f"GPU between two workers), got {gpus_per_worker}")
    if gpus_per_worker and device not in ("auto", "cuda"):
        raise ValueError(f"--device {device} with --gpus-per-worker {gpus_per_worker:g}: each worker runs on the GPU "
                         "Ray assigns it; leave --device at auto (or cuda)")
    if not gpus_per_worker and device.startswith("cuda"):
        raise ValueError(f"--device {device} with Ray workers: give --gpus-per-worker (1, or 0.5 to share a GPU) so "
                         "that Ray assigns each worker its GPU")


def cuda_index(gpu_id: str, visible: str | None) -> int:
    """torch's index of the GPU Ray calls ``gpu_id``, given the worker's CUDA_VISIBLE_DEVICES (``visible``)."""
    if visible is None:  # nothing hides devices (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES): Ray's id is torch's
        return int(gpu_id)
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if gpu_id not in entries:
        raise RuntimeError(f"Ray assigned GPU {gpu_id} but {CUDA_ENV}={visible!r} does not list it")
    return entries.index(gpu_id)


def worker_device(requested: str, gpu_ids: Sequence[str], cuda_devices: int, visible: str | None,
                  mps: bool = False) -> str:
    """The torch device of a worker asked to run on ``requested`` (``auto``, ``cpu``, ...) to which Ray assigned
    ``gpu_ids``, in a process where torch sees ``cuda_devices`` CUDA devices (0: no CUDA, e.g. logical GPUs)."""
    if gpu_ids:
        if not cuda_devices:
            return "cpu"  # Ray's GPUs are logical here (or torch has no CUDA): the ids are still reported
        first = sorted(gpu_ids)[0]  # a worker runs its network on one GPU
        index = cuda_index(first, visible)
        if index >= cuda_devices:
            raise RuntimeError(f"Ray assigned GPU {first} (torch index {index}) but torch sees {cuda_devices} devices")
        return f"cuda:{index}"
    if requested == "auto":  # never a CUDA device Ray did not assign
        return "mps" if mps else "cpu"
    return requested


def worker_threads(assigned_cpus: float | None, fallback: int) -> int:
    """Torch threads of a worker: the CPUs Ray assigned it (rounded down, at least 1), else ``fallback``."""
    return max(1, math.floor(assigned_cpus) if assigned_cpus else fallback)


def place_worker(requested: str = "auto") -> Placement:
    """This Ray worker's ``Placement`` (call it inside an actor or task), with its threads set in torch."""
    import torch

    context = ray.get_runtime_context()
    assigned = context.get_assigned_resources()
    cpus = assigned.get("CPU")
    gpu_ids = tuple(sorted(str(i) for i in ray.get_gpu_ids()))
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    where = Placement(worker_device(requested, gpu_ids, cuda_devices, os.environ.get(CUDA_ENV), mps), gpu_ids,
                      worker_threads(cpus, available_cpus()), cpus, assigned.get("GPU"), context.get_node_id())
    torch.set_num_threads(where.threads)  # Ray sets OMP_NUM_THREADS=1 in workers given no CPUs
    return where


def gpu_slots(node_gpus: float, gpus_per_worker: float) -> int:
    """Workers of ``gpus_per_worker`` (0 < g ≤ 1) that a node's ``node_gpus`` hold: Ray packs fractions per GPU."""
    return math.floor(node_gpus + 1e-9) * math.floor(1 / gpus_per_worker + 1e-9)


def actor_resources(nodes: Sequence[Mapping[str, float]], workers: int, gpus_per_worker: float) -> dict:
    """Ray resources of each of ``workers`` actors on a cluster of ``nodes`` (each node's total resources, "CPU" and
    "GPU"): ``num_gpus`` as asked, ``num_cpus`` the largest equal share with which all the actors fit at once (an
    actor that does not fit would wait forever). ValueError when the GPUs cannot hold them."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    check_worker_device("auto", gpus_per_worker)
    usable = []
    for node in nodes:
        slots = gpu_slots(node.get("GPU", 0), gpus_per_worker) if gpus_per_worker else workers
        if node.get("CPU", 0) > 0 and slots > 0:
            usable.append((node["CPU"], slots))
    if sum(slots for _, slots in usable) < workers:
        gpus = sum(node.get("GPU", 0) for node in nodes)
        raise ValueError(f"{workers} worker(s) of {gpus_per_worker:g} GPU each do not fit this Ray cluster "
                         f"({gpus:g} GPUs on {len(nodes)} node(s)): give fewer --workers or a smaller "
                         "--gpus-per-worker")

    def fits(share: float) -> bool:
        return sum(min(slots, math.floor(cpus / share + 1e-9)) for cpus, slots in usable) >= workers

    shares = sorted({cpus / k for cpus, _ in usable for k in range(1, workers + 1)}, reverse=True)
    share = next(s for s in shares if fits(s))  # the smallest candidate always fits (see the check above)
    return {"num_cpus": math.floor(share * RAY_RESOURCE_STEP) / RAY_RESOURCE_STEP, "num_gpus": gpus_per_worker}


def worker_options(workers: int, gpus_per_worker: float) -> dict:
    """``actor_resources`` of the live nodes of the connected Ray cluster, for ``ActorClass.options(**...)``."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return actor_resources(nodes, workers, gpus_per_worker)


def placements(actors: Sequence) -> list[str]:
    """One line per actor (each with a ``placement`` method) saying where it runs, or why it could not start."""
    lines = []
    for i, actor in enumerate(actors):
        try:
            lines.append(f"worker {i}: {ray.get(actor.placement.remote()).describe()}")
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            lines.append(f"worker {i}: did not start ({type(exc).__name__})")
    return lines
