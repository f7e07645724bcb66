"""How to run dfd beyond one machine: Ray cluster configs, Prefect deployments, MLflow server, container images.

Installed with dfd as ``dfd.infra`` (data files only) so that ``dfd deploy`` finds ``prefect/prefect.yaml`` in any install."""
