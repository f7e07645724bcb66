"""What every dfd flow does around its tasks, once: skip a step that is already done, keep the flow's MLflow run,
and summarise the call.

Steps: a step that finished under an output folder OUT leaves ``OUT/.steps/<name>.json`` = {"key": …, "info": …,
"seconds": …}, ``key`` being a content hash of its inputs and settings; ``run_step`` skips the step while the key
is unchanged and hands back what it recorded, so a rerun costs nothing and a change reruns only the steps it
reaches.

Runs: ``flow_run`` opens the MLflow run of one flow call (in the embedded store unless MLFLOW_TRACKING_URI says
otherwise); with ``keep_in=OUT`` the run id is kept as OUT's step "mlflow-run", and a later call on OUT continues
that run instead of starting another (an interrupted or extended training is one run).
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dfdcore.io.storage import exists, filesystem_for, is_local, join_uri, read_bytes, write_bytes_atomic

# The key of an output that must not change once made, whatever later calls ask for: a test set (runs are compared
# on it) or a faceset's train/test split (held-out faces must stay held out when a training resumes).
MADE_ONCE = "made-once"


def marker_uri(out: str, name: str) -> str:
    return join_uri(out, f".steps/{name}.json")


def finished(out: str, name: str, key: str) -> dict | None:
    """What step ``name`` recorded under ``out`` when it finished with ``key``; None when it did not."""
    uri = marker_uri(out, name)
    if not exists(uri):
        return None
    marker = json.loads(read_bytes(uri))
    return marker.get("info") if marker.get("key") == key else None  # a marker of another layout: not done


def record(out: str, name: str, key: str, info: dict, seconds: float | None = None) -> dict:
    """Mark step ``name`` done under ``out`` with ``key`` and ``info`` (JSON; numpy values as lists) → info;
    ``seconds``: how long the step took (kept beside, for people and benchmarks)."""
    text = json.dumps({"key": key, "info": info, "seconds": seconds}, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    write_bytes_atomic(marker_uri(out, name), text.encode())
    return json.loads(text)["info"]  # what a skipped rerun will hand back, so both paths return the same


def run_step(out: str, name: str, key: str, work: Callable[..., dict | None], *args, **kwargs) -> dict:
    """``work(*args, **kwargs)`` → its info (a dict), recorded as step ``name`` of ``out``; when the step is done
    with ``key`` already, ``work`` is not called and the recorded info comes back instead."""
    done = finished(out, name, key)
    if done is not None:
        print(f"{name}: done already ({marker_uri(out, name)})")
        return done
    started = time.perf_counter()
    info = work(*args, **kwargs) or {}
    return record(out, name, key, info, seconds=time.perf_counter() - started)


@dataclass
class FlowRun:
    """The MLflow run of one flow call: ``continued`` when an earlier call on the same folder opened it."""

    run_id: str
    continued: bool
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def log(self, *, params: dict | None = None, metrics: dict | None = None, tags: dict | None = None,
            step: int | None = None) -> None:
        """Parameters, metrics (at ``step``) and tags (values as text) of the run."""
        import mlflow

        if params:
            mlflow.log_params(params)
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
        if tags:
            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def curve(self, name: str, values: list[float]) -> None:
        """``values`` as the metric ``name`` at steps 0, 1, …"""
        for step, value in enumerate(values):
            self.log(metrics={name: value}, step=step)

    def files(self, out: str, names: list[str], folder: str | None = None) -> None:
        """The files ``names`` of ``out`` as artifacts (those that exist); a remote ``out`` is only named (tag
        ``outputs``): MLflow logs artifacts from local files and the outputs stay where they are."""
        import mlflow

        if not is_local(out):
            mlflow.set_tag("outputs", out)
            return
        for name in names:
            path = Path(filesystem_for(join_uri(out, name))[1])
            if path.is_file():
                mlflow.log_artifact(str(path), folder)

    def image(self, name: str, rgb) -> None:
        """An (H, W, 3) uint8 image as the artifact ``name`` (a .png)."""
        import tempfile

        import mlflow

        from dfdcore.io.images import write_image

        with tempfile.TemporaryDirectory() as tmp:
            write_image(Path(tmp) / name, rgb)
            mlflow.log_artifact(str(Path(tmp) / name))

    def text(self, name: str, text: str) -> None:
        """``text`` as the artifact ``name`` (e.g. failures.json)."""
        import mlflow

        mlflow.log_text(text, name)

    def config(self, command: str, options: dict, name: str = "config.yaml") -> None:
        """The options ``command`` resolved for this call (flags, ``--config`` file, preset, defaults; under their CLI
        names) as the YAML artifact ``name``: itself a ``--config`` file for the same run."""
        from dfdcore.io.config_files import config_yaml

        header = (f"The options `{command}` resolved for this run (flags > --config file > --preset > defaults).\n"
                  f"`{command} --config {name}` runs it again; null leaves an option to its default.")
        self.text(name, config_yaml(options, header))

    def name(self, label: str) -> None:
        """Rename the run (shown in the MLflow UI and by ``dfd compare``)."""
        import mlflow

        mlflow.MlflowClient().update_run(self.run_id, name=label)

    @property
    def tracking_uri(self) -> str:
        """Where the run lives (for processes that log into it, e.g. Ray Train's rank 0)."""
        import mlflow

        return mlflow.get_tracking_uri()

    def metrics(self) -> dict[str, float]:
        """The latest value of every metric the run holds (its ranks' logging included)."""
        import mlflow

        return dict(mlflow.get_run(self.run_id).data.metrics)

    def seconds(self) -> float:
        """Wall time since the run was opened by this call."""
        return time.perf_counter() - self.started


@contextmanager
def flow_run(experiment: str, *, name: str | None = None, keep_in: str | None = None,
             system_metrics: bool = False) -> Iterator[FlowRun]:
    """Open the MLflow run of this flow call in ``experiment`` (ended, as failed on an exception, on exit).

    ``keep_in``: an output folder whose calls share one run; the run an earlier call left there is continued.
    ``system_metrics``: MLflow samples this machine's CPU, memory, disk, network (and GPUs, with pynvml) into the
    run as system/* metrics while it is open, every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (default 10);
    off: as MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says."""
    import mlflow

    from dfd.flows.tracking import mlflow_experiment

    experiment_id = mlflow_experiment(experiment)
    previous = _kept_run(keep_in, experiment) if keep_in else None
    with mlflow.start_run(run_id=previous, experiment_id=experiment_id, run_name=name,
                          log_system_metrics=True if system_metrics else None) as run:
        if keep_in:
            record(keep_in, "mlflow-run", experiment, {"run_id": run.info.run_id})
        yield FlowRun(run.info.run_id, continued=previous is not None)


def _kept_run(out: str, experiment: str) -> str | None:
    """The run id kept in ``out`` for ``experiment``, while the tracking store still has that run."""
    import mlflow

    kept = finished(out, "mlflow-run", experiment)
    if kept is None:
        return None
    try:
        mlflow.get_run(kept["run_id"])
    except mlflow.exceptions.MlflowException:
        return None  # another tracking store, or the run was deleted: start a new one
    return kept["run_id"]


def flat_params(config, prefix: str = "") -> dict:
    """A configuration dataclass → MLflow parameters, nested dataclasses by dotted name ("kmeans.k")."""
    params = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            params |= flat_params(value, f"{prefix}{f.name}.")
        else:
            params[prefix + f.name] = value
    return params


@dataclass
class Summary:
    """What a flow call did: its MLflow run and wall time; each flow's summary adds its own figures."""

    run_id: str = ""
    seconds: float = 0.0


def merged(cls: type, *parts, **values):
    """A ``cls`` (a dataclass) from the fields it shares by name with the dataclasses ``parts`` (later parts win),
    then ``values``: a summary of summaries."""
    names = {f.name for f in dataclasses.fields(cls)}
    shared: dict = {}
    for part in parts:
        shared |= {f.name: getattr(part, f.name) for f in dataclasses.fields(part) if f.name in names}
    return cls(**(shared | values))
