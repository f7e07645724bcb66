"""Ray set-up shared by the task modules."""
from __future__ import annotations

import os

import ray


FORWARDED_ENV_PREFIXES = ("AWS_", "MLFLOW_", "DFD_", "PREFECT_API_URL")


def ensure_ray() -> None:
    """Connect to ``RAY_ADDRESS`` or start Ray locally, keeping its files under the dfd home (./.dfd)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 would otherwise write a token to $HOME
    address = os.environ.get("RAY_ADDRESS")
    temp_dir = os.path.abspath(os.path.join(os.environ.get("DFD_HOME", ".dfd"), "ray"))
    extra = {} if address or len(temp_dir) > 60 else {"_temp_dir": temp_dir}  # unix socket paths are short
    if address and "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        # Workers of a running cluster were started with the cluster's environment, not ours: pass on what
        # decides where data and runs live (S3 endpoint and credentials, tracking server, dfd home). A driver
        # submitted with `ray job submit` already hands its runtime_env to its workers (and Ray refuses a second).
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
        extra["runtime_env"] = {"env_vars": env}
    ray.init(address=address, include_dashboard=False, log_to_driver=False, **extra)


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` processes sharing this machine's cores (Ray sets 1 otherwise)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
