"""GPU-aware Ray workers (``dfd.tasks.devices``): each worker's device is the GPU Ray assigned it and its torch
threads the CPUs Ray gave it. This machine has no GPU: the Ray tests use logical GPUs (``RAY_OVERRIDE_RESOURCES``),
so they check the placement Ray makes and what each worker reports, not CUDA itself."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dfd.cli import main
from dfd.tasks.devices import (
    Placement,
    actor_resources,
    check_worker_device,
    cuda_index,
    worker_device,
    worker_threads,
)
from dfdcore.restoration.bulk import RunOptions
from dfdcore.runtime import available_cpus, cgroup_cpu_limit

from .conftest import REPO, copy_portraits


def test_the_cuda_index_is_the_position_of_rays_id_among_the_visible_devices():
    assert cuda_index("3", "3") == 0  # Ray set CUDA_VISIBLE_DEVICES to the one GPU it assigned
    assert cuda_index("5", "4, 5") == 1
    assert cuda_index("2", None) == 2  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: nothing hidden
    with pytest.raises(RuntimeError, match="does not list it"):
        cuda_index("1", "0")


def test_a_worker_runs_on_its_assigned_gpu_else_never_on_cuda():
    assert worker_device("auto", ("1",), cuda_devices=1, visible="1") == "cuda:0"
    assert worker_device("cuda", ("0", "1"), cuda_devices=2, visible="0,1") == "cuda:0"
    assert worker_device("auto", ("1",), cuda_devices=0, visible="1") == "cpu"  # logical GPU: still reported
    assert worker_device("auto", (), cuda_devices=4, visible=None) == "cpu"  # no GPU of its own: not cuda:0
    assert worker_device("auto", (), cuda_devices=0, visible=None, mps=True) == "mps"
    assert worker_device("cpu", (), cuda_devices=4, visible=None) == "cpu"
    with pytest.raises(RuntimeError, match="torch sees 1 devices"):
        worker_device("auto", ("1",), cuda_devices=1, visible=None)


def test_threads_follow_rays_cpus_else_the_fallback():
    assert [worker_threads(cpus, 6) for cpus in (4.0, 2.5, 0.5, None, 0.0)] == [4, 2, 1, 6, 6]
    assert Placement("cpu", ("1",), 2, 2.0).describe() == (
        "cpu (Ray GPU 1; no CUDA device here, so on the CPU), 2 threads (Ray: 2 CPUs)")
    assert Placement("cuda:0", ("3",), 1, 1.0, 0.5).describe() == "cuda:0 (Ray GPU 3 × 0.5), 1 thread (Ray: 1 CPUs)"


def test_outside_ray_the_cpus_are_the_affinity_capped_by_the_cgroup_quota():
    assert cgroup_cpu_limit("max", "100000") is None and cgroup_cpu_limit("-1", "100000") is None
    assert cgroup_cpu_limit("150000", "100000") == 1.5
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_each_actor_gets_an_even_share_of_the_cpus_that_lets_all_of_them_start():
    one_node = [{"CPU": 4.0, "GPU": 2.0}]
    assert actor_resources(one_node, 2, 1) == {"num_cpus": 2.0, "num_gpus": 1}
    assert actor_resources(one_node, 4, 0.5) == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert actor_resources([{"CPU": 2.0}], 3, 0) == {"num_cpus": 0.6666, "num_gpus": 0}  # Ray's 1e-4 steps
    # 3 workers on two 8-CPU nodes: 4 CPUs each (5.33 would leave the third unplaced, waiting forever)
    assert actor_resources([{"CPU": 8.0}, {"CPU": 8.0}], 3, 0)["num_cpus"] == 4.0
    # only the GPU node holds GPU workers: its CPUs are what is shared
    assert actor_resources([{"CPU": 64.0}, {"CPU": 8.0, "GPU": 1.0}], 2, 0.5)["num_cpus"] == 4.0
    with pytest.raises(ValueError, match="do not fit this Ray cluster"):
        actor_resources(one_node, 3, 1)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        actor_resources(one_node, 1, 2)


def test_a_device_that_contradicts_rays_assignment_is_refused():
    check_worker_device("auto", 0.5)
    check_worker_device("cpu", 0)
    with pytest.raises(ValueError, match="leave --device at auto"):
        check_worker_device("cuda:1", 1)
    with pytest.raises(ValueError, match="give --gpus-per-worker"):
        check_worker_device("cuda", 0)


def test_gpus_per_worker_needs_workers(tmp_path):
    assert RunOptions(workers=2, gpus_per_worker=0.5).gpus_per_worker == 0.5
    with pytest.raises(ValueError, match="needs Ray workers"):
        RunOptions(gpus_per_worker=1)
    result = CliRunner().invoke(main, ["restore", str(tmp_path), "-o", str(tmp_path / "out"), "--model", "identity",
                                       "--gpus-per-worker", "1"])
    assert result.exit_code == 2 and "needs Ray workers" in result.output
    result = CliRunner().invoke(main, ["build-dictionary", "--help"])
    assert "--gpus-per-worker" in result.output


# Run in a process of its own: its Ray has 6 logical CPUs (not this machine's count, so that the threads can only
# come from Ray's assignment) and 2 logical GPUs, unlike the session's shared Ray.
RESTORE_ON_LOGICAL_GPUS = """
import json, sys
import ray
from click.testing import CliRunner
from dfd.cli import main

photos, out = sys.argv[1], sys.argv[2]
small = ["--random-weights", "--face-size", "128", "--ngf", "8", "--k", "8", "--upscale", "1", "--upsample", "0",
         "--chunk", "1"]
runs = {}
for gpus in ("1", "0.5"):
    result = CliRunner().invoke(main, ["restore", photos, "-o", f"{out}/{gpus}", *small, "--workers", "2",
                                       "--gpus-per-worker", gpus])
    runs[gpus] = {"exit_code": result.exit_code, "output": result.output}
with open(f"{out}/runs.json", "w") as f:
    json.dump(runs, f)
ray.shutdown()
"""
PLACEMENT = re.compile(r"worker (\d+): (\S+) \(Ray GPU (\w+)( × [\d.]+)?;[^)]*\), "  # device, GPU id and share
                       r"(\d+) threads? \(Ray: ([\d.]+) CPUs\)")


def test_restore_workers_get_the_gpus_ray_assigns_and_threads_from_its_cpus(tmp_path):
    photos = copy_portraits(tmp_path / "photos", ["grace_hopper.jpg", "astronaut.png"])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": 6, "GPU": 2}), "DFD_HOME": str(tmp_path / "home"),
        "RAY_prestart_worker_first_driver": "0"}  # not 6 idle workers for 6 logical CPUs: the actors start their own
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run([sys.executable, "-c", RESTORE_ON_LOGICAL_GPUS, str(photos), str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and (out / "runs.json").exists(), done.stdout[-2000:] + done.stderr[-3000:]
    runs = json.loads((out / "runs.json").read_text())
    for run in runs.values():
        assert run["exit_code"] == 0 and "2 restored" in run["output"], run["output"]
    # --workers 2 --gpus-per-worker 1: a whole GPU each, distinct; 6 CPUs / 2 workers = 3 threads each
    whole = sorted(PLACEMENT.findall(runs["1"]["output"]))
    assert [(w, device, share, threads, cpus) for w, device, _, share, threads, cpus in whole] == [
        ("0", "cpu", "", "3", "3"), ("1", "cpu", "", "3", "3")], runs["1"]["output"]
    assert sorted(gpu for _, _, gpu, *_ in whole) == ["0", "1"]
    # --gpus-per-worker 0.5: half a GPU each (on which GPU is Ray's packing), the same CPU share
    half = PLACEMENT.findall(runs["0.5"]["output"])
    assert sorted((w, share, threads) for w, _, _, share, threads, _ in half) == [
        ("0", " × 0.5", "3"), ("1", " × 0.5", "3")], runs["0.5"]["output"]
