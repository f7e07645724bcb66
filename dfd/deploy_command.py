"""``dfd deploy``: register dfd's Prefect deployments (infra/prefect/prefect.yaml, installed as ``dfd.infra``) and
their process work pool on the Prefect server in PREFECT_API_URL (e.g. the one `dfd stack up` starts)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import click

from dfd.options import require_pipeline
from dfd.stack import console_script


def flows_dir() -> Path:
    """The folder of the installed ``dfd.flows`` package: the deployments' entrypoints are relative to it."""
    import dfd.flows

    return Path(dfd.flows.__file__).resolve().parent


def infra_file(*parts: str) -> Path:
    """A file of infra/ (installed as the package data ``dfd.infra``), e.g. ``infra_file("prefect", "prefect.yaml")``."""
    from importlib.resources import files

    return Path(str(files("dfd.infra").joinpath(*parts)))


async def _ensure_work_pool(name: str) -> bool:
    """Create the process work pool ``name`` unless it exists → whether it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_work_pool(name)
            return False
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return True


@click.command()
@click.option("--pool", default="dfd-process", show_default=True, help="Process work pool the deployments use.")
@click.option("--prefect-file", type=click.Path(dir_okay=False), help="Deployments file "
              "[default: infra/prefect/prefect.yaml, installed with dfd].")
def deploy(pool, prefect_file) -> None:
    """Register dfd's Prefect deployments (restore_bucket nightly, build_dictionary, train, evaluate) and their
    process work pool on the server in PREFECT_API_URL (`dfd stack up` prints it). Then run a worker:
    `prefect worker start --pool dfd-process`, and start runs with `prefect deployment run restore_bucket/nightly`."""
    require_pipeline("dfd deploy")
    import asyncio

    if not os.environ.get("PREFECT_API_URL"):
        raise click.UsageError("PREFECT_API_URL is not set: deployments need a Prefect server that outlives this "
                               "command. Start one with `dfd stack up` and export what it prints.")
    flows = flows_dir()
    prefect_file = str(Path(prefect_file).resolve()) if prefect_file else str(infra_file("prefect", "prefect.yaml"))
    created = asyncio.run(_ensure_work_pool(pool))
    click.echo(f"  work pool  {pool} ({'created' if created else 'exists'})")
    env = dict(os.environ, DFD_FLOWS_DIR=str(flows))
    result = subprocess.run([console_script("prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", prefect_file],
                            cwd=flows, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise click.ClickException(f"prefect deploy failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    names = sorted({line.split("'")[1] for line in result.stdout.splitlines()
                    if "Deployment '" in line and "successfully created" in line})
    for name in names:
        click.echo(f"  deployment {name}")
    click.echo(f"\n  worker:    prefect worker start --pool {pool}\n"
               "  run:       prefect deployment run restore_bucket/nightly -p source=... -p output=...")
