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


def mlflow_experiment(name: str) -> str:
    """Point MLflow at MLFLOW_TRACKING_URI or a SQLite file under the dfd home; return the experiment id."""
    import mlflow

    home = dfd_home()
    own = f"sqlite:///{home / 'mlflow.db'}"
    # set_tracking_uri also exports MLFLOW_TRACKING_URI, so "ours" is recognised by its value, not its absence.
    uri = os.environ.get("MLFLOW_TRACKING_URI") or own
    embedded = uri == own
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # An embedded SQLite store would put artifacts in ./mlruns of whatever the current folder is.
    artifacts = (home / "mlartifacts" / name).as_uri() if embedded else None
    return mlflow.create_experiment(name, artifact_location=artifacts)
