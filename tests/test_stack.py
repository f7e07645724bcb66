"""Operations, end to end with real services: `dfd stack up` (Prefect server, MLflow server, Ray head), `dfd deploy`, a
process worker, `prefect deployment run restore_bucket/nightly` on a bucket of a real S3 API (moto's server), an
incremental second run, a worker killed mid-run and the rerun, runs whose detector, min_face and fidelity reach the
Ray workers, and `dfd stack down` leaving no process behind."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from dfdcore.io.storage import filesystem_for, read_bytes, write_bytes_atomic
from dfdcore.restoration.manifest import read_manifest
from tests.conftest import PORTRAITS as BUNDLED

from .s3server import create_bucket, s3_server  # noqa: F401  (fixture)

BIN = Path(sys.executable).parent
PORTRAITS = [path for path in BUNDLED.values() if path.suffix == ".jpg"]  # 7 one-face photos, 0.5–3.3 MP


def small_faces(folder: Path, count: int = 6) -> list[Path]:
    """One-face photos of 150 × 150 px whose face box is ~115 px, cut from the bundled portraits: small enough
    that a run of several is quick, and of a known face size for min_face."""
    from PIL import Image

    from dfdcore.face.detect import detect_faces
    from dfdcore.io.images import read_rgb

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for path in PORTRAITS[:count]:
        rgb = read_rgb(path)
        x0, y0, x1, y1 = max(detect_faces(rgb), key=lambda f: f.score).box
        half, cx, cy = 0.65 * max(x1 - x0, y1 - y0), (x0 + x1) / 2, (y0 + y1) / 2
        crop = Image.fromarray(rgb).crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
        made.append(folder / f"{path.stem}.jpg")
        crop.resize((150, 150), Image.BICUBIC).save(made[-1], quality=92)
    return made


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def _upload(files: list[Path], prefix: str) -> None:
    for path in files:
        write_bytes_atomic(f"{prefix}/{path.parent.name}/{path.name}", path.read_bytes())


def _objects(prefix: str) -> list[str]:
    fs, path = filesystem_for(prefix)
    fs.invalidate_cache()
    return sorted(fs.find(path))


def _start_worker(env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "dfd-process"], env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the worker and every process under it (the flow run it started): a machine that dies."""
    parent = psutil.Process(process.pid)
    for proc in [*parent.children(recursive=True), parent]:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)


IDENTITY = {"name": "identity"}
SAME_SIZE = {"upscale": 1}
ONE_WORKER = {"workers": 1}


def _deployment_run(env: dict, source: str, output: str, model: dict = IDENTITY, restore: dict = SAME_SIZE,
                    run: dict = ONE_WORKER, watch: bool = True) -> str:
    """``prefect deployment run restore_bucket/nightly`` with ``model``, ``restore`` and ``run`` given whole (their
    other fields take the class defaults) and no failed-copies prefix."""
    args = [BIN / "prefect", "deployment", "run", "restore_bucket/nightly", "-p", f"source={json.dumps(source)}",
            "-p", f"output={json.dumps(output)}", "-p", f"model={json.dumps(model)}",
            "-p", f"restore={json.dumps(restore)}", "-p", f"run={json.dumps(run)}", "-p", "failed_prefix=null"]
    if watch:
        args += ["--watch", "--watch-timeout", "500"]
    return _run(*args, env=env).stdout


def _runs(mlflow_uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("dfd-restore-bucket")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.timeout(1800)
def test_stack_deploy_and_scheduled_bucket_restoration(s3_server, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    ports = {"--prefect-port": _free_port(), "--mlflow-port": _free_port(), "--ray-port": _free_port(),
             "--dashboard-port": _free_port(), "--ray-client-port": _free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "RAY_ADDRESS"))}
    env |= {"DFD_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(home / "cli")}
    up = _run(BIN / "dfd", "stack", "up", *[str(x) for kv in ports.items() for x in kv], env=env, timeout=300)
    exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
                   if line.startswith("export "))
    assert set(exports) == {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"}
    stack_env = env | exports
    state = json.loads((home / "stack" / "stack.json").read_text())
    worker = None
    try:
        assert "running" in _run(BIN / "dfd", "stack", "status", env=env).stdout
        deployed = _run(BIN / "dfd", "deploy", env=stack_env).stdout
        assert "restore_bucket/nightly" in deployed
        worker = _start_worker(stack_env, tmp_path / "worker.log")

        # First run: 4 photos. Second run: 2 more were added; only those are restored.
        bucket = create_bucket(s3_server, "photos")
        faces = small_faces(tmp_path / "small-faces")
        _upload(faces[:4], f"{bucket}/incoming")
        _deployment_run(stack_env, f"{bucket}/incoming", f"{bucket}/restored")
        _upload(faces[4:6], f"{bucket}/incoming")
        _deployment_run(stack_env, f"{bucket}/incoming", f"{bucket}/restored")
        runs = _runs(exports["MLFLOW_TRACKING_URI"])
        assert [(r.data.metrics["restored"], r.data.metrics["skipped"]) for r in runs] == [(4, 0), (2, 4)]
        restored = [o for o in _objects(f"{bucket}/restored") if "/restored_imgs/" in o]
        assert len(restored) == 6
        manifest = read_manifest(f"{bucket}/restored/manifest.parquet")
        assert len(manifest) == 6 and all(row["status"] == "ok" for row in manifest.values())

        # A worker killed mid-run (with the flow run it started), then a rerun: every output once, manifest whole.
        # ×4 makes each one-photo chunk slow enough for the kill to land mid-run on a busy machine.
        _upload(PORTRAITS, f"{bucket}/portraits")
        _deployment_run(stack_env, f"{bucket}/portraits", f"{bucket}/portraits-out", restore={"upscale": 4},
                        run={"workers": 1, "chunk": 1}, watch=False)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            manifest_prefix = f"{bucket}/portraits-out/manifest.parquet/".removeprefix("s3://")
            if any(o.startswith(manifest_prefix) for o in _objects(f"{bucket}/portraits-out")):  # a part recorded
                break
            time.sleep(0.5)
        done_before_kill = len(read_manifest(f"{bucket}/portraits-out/manifest.parquet"))
        _kill_tree(worker)
        assert 1 <= done_before_kill < len(PORTRAITS), "the run should have been killed mid-way"
        worker = _start_worker(stack_env, tmp_path / "worker2.log")
        _deployment_run(stack_env, f"{bucket}/portraits", f"{bucket}/portraits-out", restore={"upscale": 4},
                        run={"workers": 1, "chunk": 1})
        objects = _objects(f"{bucket}/portraits-out")
        outputs = [o for o in objects if "/restored_imgs/" in o]
        assert sorted(Path(o).name for o in outputs) == sorted(p.name for p in PORTRAITS)
        assert len(objects) == len(PORTRAITS) + 1  # the outputs and the manifest (compacted to one part): no
        # duplicates, no partial files
        manifest = read_manifest(f"{bucket}/portraits-out/manifest.parquet")
        assert len(manifest) == len(PORTRAITS) and all(r["status"] == "ok" for r in manifest.values())
        for row in manifest.values():
            assert all(read_bytes(o) for o in row["outputs"])
        last = _runs(exports["MLFLOW_TRACKING_URI"])[-1].data.metrics
        assert last["restored"] + last["skipped"] == len(PORTRAITS) and last["skipped"] >= done_before_kill

        _options_reach_the_workers(stack_env, bucket, faces[0])
    finally:
        if worker is not None and worker.poll() is None:
            _kill_tree(worker)
        stopped = _run(BIN / "dfd", "stack", "down", env=env).stdout
    assert "stopped" in stopped
    deadline = time.monotonic() + 15  # SIGKILLed processes take a moment to leave the process table
    while (leftovers := [p.pid for p in psutil.process_iter() if _belongs(p, state)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leftovers, [(p, " ".join(psutil.Process(p).cmdline())[:120]) for p in leftovers]
    assert "stopped" in _run(BIN / "dfd", "stack", "status", env=env).stdout


def _options_reach_the_workers(env: dict, bucket: str, small_face: Path) -> None:
    """Deployment runs with the CNN detector, a min_face between the two photos' face sizes and fidelity 0 or 1
    (a small random network): the Ray workers restore with exactly these options."""
    import numpy as np
    from PIL import Image

    from dfdcore.face.detect import detect_faces
    from dfdcore.io.images import decode_image
    from dfdcore.restoration.restorer import RestoreOptions

    small = Image.open(small_face).convert("RGB")  # 150 px, a face of ~115 px
    large = small.resize((300, 300), Image.BICUBIC)   # the same face at ~235 px
    for name, image in (("small.png", small), ("large.png", large)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        write_bytes_atomic(f"{bucket}/sizes/{name}", buffer.getvalue())
    # strength 1: each model's whole change (auto would keep none of it on this sharp face); a float through the
    # deployment's parameters as the CLI's "auto" is a string
    restore = {"upscale": 1, "detector": "cnn", "upsample": 0, "min_face": 160, "strength": 1.0}
    rows, pixels = {}, {}
    for fidelity in (0.0, 1.0):
        model = {"name": "dfdnet", "random_weights": True, "face_size": 128, "ngf": 8, "k": 8, "fidelity": fidelity}
        out = f"{bucket}/sizes-fidelity{fidelity:g}"
        _deployment_run(env, f"{bucket}/sizes", out, model=model, restore=restore)
        rows[fidelity] = {r["relpath"]: r for r in read_manifest(f"{out}/manifest.parquet").values()}
        pixels[fidelity] = {name: decode_image(read_bytes(f"{out}/restored_imgs/{name}")).rgb8
                            for name in ("small.png", "large.png")}
    for fidelity, by_name in rows.items():
        # min_face: the small photo's face is left out, the large one's restored
        assert (by_name["small.png"]["status"], by_name["small.png"]["n_faces"]) == ("no_face", 0)
        assert (by_name["large.png"]["status"], by_name["large.png"]["n_faces"]) == ("ok", 1)
        # the detector: the box is the CNN's, not HOG's (they differ by tens of pixels here)
        box = by_name["large.png"]["faces"][0]["det_box"]
        [cnn] = detect_faces(np.asarray(large), upsample=0, detector="cnn")
        [hog] = detect_faces(np.asarray(large), upsample=0, detector="hog")
        assert np.allclose(box, cnn.box) and not np.allclose(box, hog.box, atol=5), (box, cnn.box, hog.box)
        # the config hash is that of these options with this model, whose identity records the fidelity
        model_id = json.loads(by_name["large.png"]["model_id"])
        assert model_id["fidelity"] == fidelity and model_id["random_weights"] is True
        assert by_name["large.png"]["config_hash"] == RestoreOptions(**restore).config_hash(model_id)
    # fidelity changes the restored face, and nothing where no face was restored
    assert np.array_equal(pixels[0.0]["small.png"], pixels[1.0]["small.png"])
    # (same seed, same network but for fidelity: any change is fidelity's; a random network's is small in size)
    changed = np.count_nonzero(pixels[0.0]["large.png"] != pixels[1.0]["large.png"])
    assert changed > 100, changed


def _belongs(proc: psutil.Process, state: dict) -> bool:
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False  # already dead, waiting for its parent to collect the exit status
        return os.getpgid(proc.pid) in state["pids"].values() or state["ray_temp_dir"] in " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return False
