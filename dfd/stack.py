"""``dfd stack up|down|status``: a real Prefect server, MLflow server and Ray head on loopback, as background
processes whose pid files and logs live under the dfd home (``.dfd/stack/``); Prefect and MLflow keep their state in
SQLite files there, or in PostgreSQL with ``--database``. `dfd deploy` (deploy_command) registers dfd's
deployments on that stack."""
from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import click

from dfd.options import require_pipeline

SERVICES = ("prefect", "mlflow", "ray")


@dataclass(frozen=True)
class Ports:
    prefect: int = 4200
    mlflow: int = 5000
    ray: int = 6379
    dashboard: int = 8265
    ray_client: int = 10001

    def environment(self) -> dict[str, str]:
        """What clients export to use this stack."""
        return {"PREFECT_API_URL": f"http://127.0.0.1:{self.prefect}/api",
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.mlflow}",
                "RAY_ADDRESS": f"127.0.0.1:{self.ray}"}

    def urls(self) -> dict[str, str]:
        return {"prefect": f"http://127.0.0.1:{self.prefect}", "mlflow": f"http://127.0.0.1:{self.mlflow}",
                "ray": f"http://127.0.0.1:{self.dashboard} (dashboard; jobs: ray job submit --address there)"}


@dataclass(frozen=True)
class Databases:
    """SQLAlchemy URLs (with the password, if any) of the Prefect server's and MLflow's databases."""
    prefect: str
    mlflow: str

    @classmethod
    def sqlite(cls, folder: Path) -> Databases:
        """The embedded default: two SQLite files in the stack folder (Prefect's is where PREFECT_HOME puts it)."""
        return cls(f"sqlite+aiosqlite:///{folder / 'prefect' / 'prefect.db'}", f"sqlite:///{folder / 'mlflow.db'}")

    @classmethod
    def postgresql(cls, url: str) -> Databases:
        """``postgresql://USER:PASSWORD@HOST:PORT/NAME`` → the databases ``NAME_prefect`` and ``NAME_mlflow`` on that
        server (NAME defaults to ``dfd``). Two databases, not one: Prefect and MLflow each migrate their schema with
        Alembic, and both keep the version in a table named ``alembic_version``."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            parsed = make_url(url)
        except ArgumentError:
            parsed = None
        if parsed is None or parsed.get_backend_name() != "postgresql" or not parsed.host:
            shown = parsed._replace(password=None).render_as_string() if parsed else url.split("@")[-1]
            raise click.BadParameter(f"expected postgresql://USER:PASSWORD@HOST:PORT/NAME, got {shown!r}",
                                     param_hint="--database")
        name = parsed.database or "dfd"
        # Prefect's server only runs on an async driver. MLflow's store gets psycopg2 by name: SQLAlchemy 2.1's
        # default for a bare postgresql:// is psycopg 3.
        return cls(parsed.set(drivername="postgresql+asyncpg", database=f"{name}_prefect").render_as_string(False),
                   parsed.set(drivername="postgresql+psycopg2", database=f"{name}_mlflow").render_as_string(False))

    def shown(self) -> dict[str, str]:
        """The URLs without the password: what stack.json and `dfd stack status` show."""
        from sqlalchemy.engine import make_url

        return {k: make_url(v)._replace(password=None).render_as_string() for k, v in self.__dict__.items()}


def prepare_postgresql(databases: Databases) -> None:
    """Check both drivers, reach the server and create whichever of the two databases is missing. Done before any
    service starts, so that a wrong URL is one clear error instead of two servers failing in their logs."""
    for module, service, package in (("asyncpg", "Prefect", "asyncpg"), ("psycopg2", "MLflow", "psycopg2-binary")):
        try:
            importlib.import_module(module)
        except ImportError:
            raise click.ClickException(f"{service}'s PostgreSQL database needs the {module} driver, which is not "
                                       f"installed here: pip install {package}") from None
    import psycopg2
    from psycopg2 import sql
    from sqlalchemy.engine import make_url

    url = make_url(databases.mlflow)
    where = f"PostgreSQL at {url.host}:{url.port or 5432} as {url.username or 'the current OS user'}"
    try:  # the maintenance database: dfd's two may not exist yet
        connection = psycopg2.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                                      dbname="postgres", connect_timeout=10, **url.query)
    except psycopg2.Error as error:
        raise click.ClickException(f"cannot connect to {where}: {' '.join(str(error).split())}") from None
    try:
        connection.autocommit = True  # CREATE DATABASE refuses to run inside a transaction
        with connection.cursor() as cursor:
            for name in (make_url(databases.prefect).database, url.database):
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg2.Error as error:
        raise click.ClickException(f"cannot create the database {name} on {where} "
                                   f"({' '.join(str(error).split())}): create it, or grant CREATEDB") from None
    finally:
        connection.close()


def stack_dir() -> Path:
    from dfdcore.runtime import dfd_home

    folder = dfd_home() / "stack"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def console_script(name: str) -> str:
    """A console script of this environment (prefect, mlflow, ray), not whatever PATH finds first."""
    return str(Path(sys.executable).parent / name)


def ray_temp_dir(folder: Path) -> str:
    """Ray's session folder: under the stack folder when its socket paths stay short enough, else a short one."""
    candidate = str(folder / "ray")
    return candidate if len(candidate) <= 40 else tempfile.mkdtemp(prefix="dfd-ray-")


def commands(folder: Path, ports: Ports, ray_tmp: str) -> dict[str, list[str]]:
    """The services' command lines; their databases come through the environment (service_environment), which
    keeps passwords out of `ps`."""
    return {
        "prefect": [console_script("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(ports.prefect)],
        "mlflow": [console_script("mlflow"), "server", "--host", "127.0.0.1", "--port", str(ports.mlflow),
                   "--artifacts-destination", str(folder / "mlartifacts"), "--workers", "1"],
        "ray": [console_script("ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                "--port", str(ports.ray), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports.dashboard),
                "--ray-client-server-port", str(ports.ray_client), "--temp-dir", ray_tmp, "--disable-usage-stats"],
    }


def service_environment(folder: Path, databases: Databases, service: str) -> dict[str, str]:
    """The environment of ``service``: only the service that uses a database gets its URL (and password)."""
    # the servers themselves are not clients of another stack, nor on another database
    clients = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "MLFLOW_REGISTRY_STORE_URI",
               "PREFECT_SERVER_DATABASE_", "PREFECT_API_DATABASE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(clients)}
    env.update({"PREFECT_HOME": str(folder / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0"})
    if service == "prefect":
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = databases.prefect
    if service == "mlflow":
        env["MLFLOW_BACKEND_STORE_URI"] = databases.mlflow  # also the model registry's store
    return env


def _healthy(service: str, ports: Ports) -> bool:
    try:
        if service == "prefect":
            return urllib.request.urlopen(f"http://127.0.0.1:{ports.prefect}/api/health", timeout=2).status == 200
        if service == "mlflow":
            return urllib.request.urlopen(f"http://127.0.0.1:{ports.mlflow}/health", timeout=2).status == 200
        with socket.create_connection(("127.0.0.1", ports.dashboard), timeout=2):
            pass
        with socket.create_connection(("127.0.0.1", ports.ray), timeout=2):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    from dfdcore.io.atomic import process_alive

    return process_alive(pid) and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


def read_state(folder: Path) -> dict:
    path = folder / "stack.json"
    return json.loads(path.read_text()) if path.exists() else {}


def up(ports: Ports, database: str | None = None, timeout: float = 120.0) -> dict:
    """Start the services not already running, wait until each answers → the state (pids, ports, env, databases).
    ``database``: a PostgreSQL URL for Prefect and MLflow (see Databases.postgresql); None for SQLite."""
    folder = stack_dir()
    databases = Databases.postgresql(database) if database else Databases.sqlite(folder)
    state = read_state(folder)
    if state and all(_alive(state["pids"][s]) for s in SERVICES):
        running = state.get("databases", Databases.sqlite(folder).shown())
        if running != databases.shown():
            raise click.ClickException(f"the stack is already running on other databases ({running['prefect']}, "
                                       f"{running['mlflow']}): stop it first with `dfd stack down`")
        return state
    if state:
        down()
    if database:
        prepare_postgresql(databases)
    ray_tmp = ray_temp_dir(folder)
    service_commands = commands(folder, ports, ray_tmp)

    def start(service: str) -> int:
        log = open(folder / f"{service}.log", "ab")  # noqa: SIM115 - handed to the child
        return subprocess.Popen(service_commands[service], stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                                env=service_environment(folder, databases, service),
                                start_new_session=True).pid

    pids = {service: start(service) for service in SERVICES}
    state = {"pids": pids, "ports": ports.__dict__, "ray_temp_dir": ray_tmp, "env": ports.environment(),
             "databases": databases.shown()}
    (folder / "stack.env").write_text("".join(f"export {k}={v}\n" for k, v in ports.environment().items()))
    try:
        _wait(state, start, ports, folder, timeout)
    except click.ClickException:
        down()  # no half-started stack left behind
        raise
    (folder / "stack.json").write_text(json.dumps(state, indent=1))
    return state


def _wait(state: dict, start, ports: Ports, folder: Path, timeout: float) -> None:
    """Until every service answers; a service that exits is started again, twice at most."""
    pids = state["pids"]
    deadline = time.monotonic() + timeout
    waiting, restarts = set(SERVICES), {s: 0 for s in SERVICES}
    while waiting and time.monotonic() < deadline:
        (folder / "stack.json").write_text(json.dumps(state, indent=1))
        for service in list(waiting):
            if not _alive(pids[service]):
                # On a loaded machine a component can time out while starting (Ray's client server waits for its
                # node); one more try usually succeeds.
                if restarts[service] >= 2:
                    log = folder / f"{service}.log"
                    last = ([line for line in log.read_text(errors="replace").splitlines() if line.strip()] or [""])
                    raise click.ClickException(f"{service} exited during start-up; see {log}: {last[-1].strip()}")
                restarts[service] += 1
                pids[service] = start(service)
            elif _healthy(service, ports):
                waiting.discard(service)
        time.sleep(1)
    if waiting:
        raise click.ClickException(f"not ready after {timeout:.0f} s: {', '.join(sorted(waiting))}; logs in {folder}")
    time.sleep(3)  # a last look: a component that dies right after answering (see above) is reported now
    dead = [s for s in SERVICES if not _alive(pids[s])]
    if dead:
        raise click.ClickException(f"{', '.join(dead)} stopped right after starting; see the logs in {folder}")


def _stack_processes(state: dict) -> list[int]:
    """Every process of this stack: the service process groups, plus Ray processes that left the group but still
    name this stack's Ray folder on their command line."""
    import psutil

    groups = set(state.get("pids", {}).values())
    marker = state.get("ray_temp_dir") or "\0"
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getpgid(proc.pid) in groups or marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc.pid)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return [pid for pid in found if pid != os.getpid()]


def down(timeout: float = 30.0) -> list[int]:
    """Stop every process of the stack (TERM, then KILL) → the pids that were stopped."""
    folder = stack_dir()
    state = read_state(folder)
    if not state:
        return []
    for pid in state["pids"].values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    stopped = _stack_processes(state)
    while time.monotonic() < deadline and any(_alive(p) for p in _stack_processes(state)):
        time.sleep(0.5)
    for pid in _stack_processes(state):
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (folder / "stack.json").unlink(missing_ok=True)
    return stopped


def status() -> list[tuple[str, str, str, str]]:
    """(service, running | stopped, url, database without its password, or "") for each service."""
    folder = stack_dir()
    state = read_state(folder)
    if not state:
        return [(s, "stopped", "", "") for s in SERVICES]
    ports = Ports(**state["ports"])
    databases = state.get("databases", Databases.sqlite(folder).shown())  # a stack started before --database
    rows = []
    for service in SERVICES:
        alive = _alive(state["pids"][service])
        healthy = alive and _healthy(service, ports)
        rows.append((service, "running" if healthy else ("starting or unhealthy" if alive else "stopped"),
                     ports.urls()[service], databases.get(service, "")))
    return rows


@click.group()
def stack() -> None:
    """A local stack on loopback: Prefect server, MLflow server (model registry) and a Ray head, in the background.

    Logs and pid files are kept under the dfd home (DFD_HOME, default ./.dfd) in stack/. `dfd stack up` prints the
    environment to export (also written to .dfd/stack/stack.env) so that dfd's flows use the stack instead of the
    embedded defaults. Prefect and MLflow keep their state in SQLite files there unless `dfd stack up --database`
    names a PostgreSQL server."""


@stack.command("up")
@click.option("--prefect-port", default=4200, show_default=True)
@click.option("--mlflow-port", default=5000, show_default=True)
@click.option("--ray-port", default=6379, show_default=True)
@click.option("--dashboard-port", default=8265, show_default=True, help="Ray dashboard and job submission.")
@click.option("--ray-client-port", default=10001, show_default=True, help="Ray Client server (ray://).")
@click.option("--database", metavar="postgresql://USER:PASSWORD@HOST:PORT/NAME", envvar="DFD_STACK_DATABASE",
              help="Keep the Prefect server's state and MLflow's runs and model registry in PostgreSQL instead of "
                   "SQLite: the databases NAME_prefect and NAME_mlflow on that server, created if missing (NAME "
                   "defaults to dfd). Needs the drivers asyncpg and psycopg2 (pip install psycopg2-binary). "
                   "[env: DFD_STACK_DATABASE]")
def stack_up(prefect_port, mlflow_port, ray_port, dashboard_port, ray_client_port, database) -> None:
    """Start the stack (services already running are left as they are) and wait until each one answers."""
    require_pipeline("dfd stack up")
    state = up(Ports(prefect_port, mlflow_port, ray_port, dashboard_port, ray_client_port), database)
    ports = Ports(**state["ports"])
    for service, url in ports.urls().items():
        where = state["databases"].get(service)
        click.echo(f"  {service:<8} {url}" + (f"\n  {'':<8} database {where}" if where else ""))
    click.echo("\n  To use it from this shell:")
    for key, value in state["env"].items():
        click.echo(f"export {key}={value}")
    click.echo(f"\n  (or: source {stack_dir() / 'stack.env'}); stop with `dfd stack down`")


@stack.command("down")
def stack_down() -> None:
    """Stop every process of the stack."""
    stopped = down()
    click.echo(f"  stopped {len(stopped)} process(es)" if stopped else "  no stack was running")


@stack.command("status")
def stack_status() -> None:
    """Whether each service is running and answering, and the database each one uses."""
    for service, state, url, database in status():
        click.echo(f"  {service:<8} {state:<22} {url}" + (f"  database {database}" if database else ""))
