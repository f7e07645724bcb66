"""`dfd promote`: point an alias of a registered model (e.g. champion) at one of its versions.

Runs that name the model by alias (``--registered dfd-generator@champion``, the nightly restore_bucket's
``model.registered``) use the version the alias points to when they start, so promoting is how a new model goes live
and promoting the old version back is how it is rolled back."""
from __future__ import annotations

import click

from dfd.options import require_pipeline


@click.command()
@click.argument("name")
@click.argument("version")
@click.argument("alias")
def promote(name: str, version: str, alias: str) -> None:
    """Point ALIAS of the registered model NAME at VERSION (e.g. `dfd promote dfd-generator 3 champion`).

    Prints what the alias pointed to before and what it points to now. MLFLOW_TRACKING_URI selects the registry
    (default: the SQLite store under the dfd home)."""
    require_pipeline("dfd promote")
    if not version.isdigit():
        raise click.BadParameter(f"a version number (1, 2, ...), got {version!r}", param_hint="VERSION")
    from mlflow.exceptions import MlflowException

    from dfd.flows.registry import RegistryError, use_registry
    from dfd.flows.registry import promote as set_alias

    uri = use_registry()
    try:
        before, now = set_alias(name, version, alias)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    except MlflowException as exc:  # e.g. an alias MLflow reserves ("latest", "v3")
        raise click.ClickException(f"MLflow refused alias {alias!r} for {name}/{version}: {exc.message}") from exc
    was = f"version {before}" if before else "nothing"
    click.echo(f"  {name}@{alias}  was {was}, now version {now}  ({uri})")
