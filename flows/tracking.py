"""Embedded defaults for the orchestration layer: one dfd home holding Prefect's and MLflow's state."""
from __future__ import annotations

import os

from dfdcore.runtime import dfd_home


def configure_prefect() -> None:
    """Settings for Prefect's temporary local server; call before importing prefect. PREFECT_API_URL wins."""
    home = dfd_home()
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def embedded_tracking_uri() -> str:
    """The SQLite store under the dfd home that MLflow uses when MLFLOW_TRACKING_URI names no other."""
    return f"sqlite:///{dfd_home() / 'mlflow.db'}"


def use_tracking() -> str:
    """Point MLflow at MLFLOW_TRACKING_URI, else the embedded store → the URI in use."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or embedded_tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def mlflow_experiment(name: str) -> str:
    """Point MLflow at MLFLOW_TRACKING_URI or a SQLite file under the dfd home; return the experiment id."""
    import mlflow

    # set_tracking_uri also exports MLFLOW_TRACKING_URI, so "ours" is recognised by its value, not its absence.
    embedded = use_tracking() == embedded_tracking_uri()
    home = dfd_home()
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # An embedded SQLite store would put artifacts in ./mlruns of whatever the current folder is.
    artifacts = (home / "mlartifacts" / name).as_uri() if embedded else None
    return mlflow.create_experiment(name, artifact_location=artifacts)
