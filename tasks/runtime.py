"""Ray set-up shared by the task modules."""
from __future__ import annotations

import os

import ray

from dfdcore.runtime import available_cpus, dfd_home

FORWARDED_ENV_PREFIXES = ("AWS_", "MLFLOW_", "DFD_", "PREFECT_API_URL")

# Ray Train V2's patience, as environment variables (a value set by the user wins). Ray Train reads them in its
# controller actor and workers, and hands on those set in the driver's environment when TorchTrainer.fit() starts
# the controller (ray.train.v2._internal.constants.get_env_vars_to_propagate), so setting them here before fit()
# is enough, on a local Ray as on a cluster.
# - RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (default 60): how long the controller waits for the workers' placement
#   group (their CPUs): on a restart the previous attempt's workers must be gone first, on a shared cluster other
#   work may hold the CPUs a while.
# - RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S (default 600): a status poll a worker leaves unanswered this long marks
#   it dead (the worker actor answers beside its training thread, late when starved). A poll that fails outright
#   ("A worker health check failed": the worker process is gone) is no timeout: ``max_failures`` covers that.
TRAIN_PATIENCE = {
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
    "RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S": "1800",
}

# Ray core settings of a local cluster (``_system_config``; only when ray.init starts the cluster itself; a
# ``RAY_<name>`` variable in the environment wins).
# - worker_niceness: Ray starts its worker processes (tasks, actors, the Ray Train workers) at nice 15 (default),
#   where beside other work at nice 0 each gets about 1/28 of a core's share: with two busy loops on this 2-core
#   machine the demo's two training workers ran at 3-6 % CPU each and the first step came 4 minutes after start.
#   The training is the user's own foreground work here: it runs at the niceness of the command that started it.
# - worker_register_timeout_seconds: a worker process that has not registered with the raylet after this long is
#   killed (default 60 s; Python and Ray imports on a loaded machine).
# - health_check_timeout_ms × health_check_failure_threshold: how long the GCS waits on a raylet that does not
#   answer before it declares the node dead (default 10 s × 5), which ends every actor of a one-node cluster.
LOCAL_SYSTEM_CONFIG = {
    "worker_niceness": 0,
    "worker_register_timeout_seconds": 300,
    "health_check_timeout_ms": 30_000,
    "health_check_failure_threshold": 10,
}


def local_system_config() -> dict:
    """``LOCAL_SYSTEM_CONFIG`` less what the environment sets (``RAY_<name>``)."""
    return {name: value for name, value in LOCAL_SYSTEM_CONFIG.items() if f"RAY_{name}" not in os.environ}


def train_patience() -> dict[str, str]:
    """Set Ray Train's timeouts (``TRAIN_PATIENCE``) in this process's environment unless set → the values used."""
    return {name: os.environ.setdefault(name, value) for name, value in TRAIN_PATIENCE.items()}


def ensure_ray() -> None:
    """Connect to ``RAY_ADDRESS`` or start Ray locally, keeping its files under the dfd home (./.dfd)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 would otherwise write a token to $HOME
    address = os.environ.get("RAY_ADDRESS")
    temp_dir = str(dfd_home() / "ray")
    extra = {} if address or len(temp_dir) > 60 else {"_temp_dir": temp_dir}  # unix socket paths are short
    if not address:
        extra["_system_config"] = local_system_config()
    if address and "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        # Workers of a running cluster were started with the cluster's environment, not ours: pass on what
        # decides where data and runs live (S3 endpoint and credentials, tracking server, dfd home). A driver
        # submitted with `ray job submit` already hands its runtime_env to its workers (and Ray refuses a second).
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
        extra["runtime_env"] = {"env_vars": env}
    ray.init(address=address, include_dashboard=False, log_to_driver=False, **extra)


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` processes sharing this machine's cores (Ray sets 1 otherwise): Ray
    Train's workers; the restore and feature actors take theirs from the CPUs Ray assigns them (``devices``)."""
    return max(1, available_cpus() // max(1, workers))
