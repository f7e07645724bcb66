"""`dfd stack up --database postgresql://…` against a real PostgreSQL server on loopback (Debian's `postgresql`,
installed by the fixture when missing): the Prefect server and MLflow keep their state in PostgreSQL — a flow run and
an MLflow run made through the servers are rows in their tables — `dfd stack status` names each database without
the password, and a wrong URL, an unreachable server or a missing driver is one clear error before anything starts."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
from click.testing import CliRunner

from dfd.stack import stack

psycopg2 = pytest.importorskip("psycopg2", reason="MLflow's PostgreSQL store needs psycopg2 (psycopg2-binary)")

BIN = Path(sys.executable).parent
USER, PASSWORD, NAME = "dfd", "p@ss/w0rd", "dfdci"  # '@' and '/' must survive the URL
PROBE = '''
import json
import mlflow
from mlflow import MlflowClient
from prefect import flow

@flow(name="pg-probe")
def probe(x: int) -> int:
    return x * 2

state = probe(21, return_state=True)
mlflow.set_experiment("dfd-pg-probe")
with mlflow.start_run() as run:
    mlflow.log_param("answer_of", "probe")
    mlflow.log_metric("answer", state.result())
MlflowClient().create_registered_model("dfd-pg-probe-model")
print(json.dumps({"flow_run": str(state.state_details.flow_run_id), "run": run.info.run_id}))  # the last line
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path:
    """The folder of initdb/pg_ctl, after `apt-get install -y postgresql` when they are missing (timed)."""
    def found() -> list[Path]:
        return sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))

    if not found():
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        started = time.monotonic()
        install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:  # empty package lists
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
            subprocess.run(install, env=env, capture_output=True, check=True)
        print(f"\napt-get install postgresql: {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert found(), "no /usr/lib/postgresql/<version>/bin/initdb after installing Debian's postgresql"
    return found()[-1].parent


def _as_server_user(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the package's `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="session")
def postgres() -> dict:
    """A PostgreSQL server on a free loopback port for this session: a superuser USER with PASSWORD (scram)."""
    bin_dir = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="dfd-pg-"))  # outside pytest's root-only tmp: the server user reads it
    data, port = folder / "data", _free_port()
    (folder / "pw").write_text(PASSWORD)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:  # the package makes it; a machine with PostgreSQL from elsewhere may lack it
            subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "pw", "postgres")

    def run(*args) -> None:
        subprocess.run(_as_server_user([str(a) for a in args]), capture_output=True, timeout=120, check=True)

    run(bin_dir / "initdb", "-D", data, "-U", USER, "--pwfile", folder / "pw", "--auth-host=scram-sha-256",
        "--auth-local=trust", "-E", "UTF8", "--no-sync")
    # fsync off: a throwaway server; listen on loopback only, its socket in its own folder (not /var/run)
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(bin_dir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-o", options, "-w", "-t", "60", "start")
    try:
        yield {"port": port, "url": f"postgresql://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/{NAME}"}
    finally:
        run(bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _query(port: int, database: str, sql: str, *args) -> list[tuple]:
    connection = psycopg2.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD, dbname=database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchall()
    finally:
        connection.close()


def _run(*args, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"{args}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def test_wrong_urls_unreachable_servers_and_missing_drivers_fail_before_anything_starts(postgres, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("DFD_HOME", str(tmp_path / "home"))
    nobody, good = _free_port(), postgres["url"].replace(f"/{NAME}", "/dfderr")
    cases = {
        "mysql://dfd:secret@127.0.0.1/dfd": "expected postgresql://USER:PASSWORD@HOST:PORT/NAME",
        f"postgresql://dfd:secret@127.0.0.1:{nobody}/dfd": f"cannot connect to PostgreSQL at 127.0.0.1:{nobody} as dfd",
        f"postgresql://dfd:secret@127.0.0.1:{postgres['port']}/dfd": 'password authentication failed for user "dfd"',
    }
    for url, expected in cases.items():
        result = CliRunner().invoke(stack, ["up", "--database", url])
        assert result.exit_code != 0 and expected in result.output, (url, result.output)
        assert "secret" not in result.output
    for module, hint in (("psycopg2", "pip install psycopg2-binary"), ("asyncpg", "pip install asyncpg")):
        with monkeypatch.context() as blocked:
            blocked.setitem(sys.modules, module, None)  # as if not installed
            result = CliRunner().invoke(stack, ["up", "--database", good])
        assert result.exit_code == 1 and f"needs the {module} driver" in result.output and hint in result.output
    assert not (tmp_path / "home" / "stack" / "stack.json").exists()  # nothing was started
    databases = [n for (n,) in _query(postgres["port"], "postgres", "SELECT datname FROM pg_database")]
    assert not [n for n in databases if n.startswith("dfderr")], databases


@pytest.mark.timeout(400)
def test_stack_on_postgresql(postgres, tmp_path, monkeypatch):
    home = tmp_path / "home"
    ports = {"--prefect-port": _free_port(), "--mlflow-port": _free_port(), "--ray-port": _free_port(),
             "--dashboard-port": _free_port(), "--ray-client-port": _free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "RAY_ADDRESS", "DFD_"))}
    env |= {"DFD_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(home / "cli")}
    monkeypatch.setenv("DFD_HOME", str(home))  # status, a second up and down run in-process: no 15 s of imports each
    started = time.monotonic()
    up = _run(BIN / "dfd", "stack", "up", "--database", postgres["url"], *[str(x) for kv in ports.items() for x in kv],
              env=env)
    print(f"\ndfd stack up on PostgreSQL: {time.monotonic() - started:.1f} s", file=sys.stderr)
    exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
                   if line.startswith("export "))
    state = json.loads((home / "stack" / "stack.json").read_text())
    port = postgres["port"]
    try:
        shown = {"prefect": f"postgresql+asyncpg://{USER}@127.0.0.1:{port}/{NAME}_prefect",
                 "mlflow": f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/{NAME}_mlflow"}
        assert state["databases"] == shown
        status = {line.split()[0]: line for line in CliRunner().invoke(stack, ["status"]).output.splitlines()}
        for service in ("prefect", "mlflow"):
            assert " running " in status[service] and status[service].endswith(f"database {shown[service]}")
        assert "database" not in status["ray"]  # (its health is test_stack's: a loaded machine can time its node out)
        # the password appears nowhere an operator's neighbours could read it: output, state file, command lines
        cmdlines = [_text(pid, "cmdline") for pid in state["pids"].values()]
        for text in (up.stdout, json.dumps(state), *status.values(), *cmdlines):
            assert PASSWORD not in text and quote(PASSWORD, safe="") not in text
        # only the two servers that use a database are given its URL, in their environment
        given = {s: _text(pid, "environ") for s, pid in state["pids"].items()}
        assert [s for s, text in given.items() if quote(PASSWORD, safe="") in text] == ["prefect", "mlflow"]

        # a flow run and an MLflow run (and a registered model) made through the servers...
        probe = json.loads(_run(sys.executable, "-c", PROBE, env=env | exports, timeout=180).stdout.splitlines()[-1])
        # ...are rows of their PostgreSQL tables
        assert _query(port, f"{NAME}_prefect", "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON "
                      "f.id = r.flow_id WHERE r.id = %s", probe["flow_run"]) == [("pg-probe", "COMPLETED")]
        assert _query(port, f"{NAME}_mlflow", "SELECT e.name, r.status, m.value FROM runs r JOIN experiments e USING "
                      "(experiment_id) JOIN metrics m USING (run_uuid) WHERE r.run_uuid = %s AND m.key = 'answer'",
                      probe["run"]) == [("dfd-pg-probe", "FINISHED", 42.0)]
        assert _query(port, f"{NAME}_mlflow", "SELECT name FROM registered_models") == [("dfd-pg-probe-model",)]
        # and nothing went to the SQLite defaults
        assert not (home / "stack" / "mlflow.db").exists() and not (home / "stack" / "prefect" / "prefect.db").exists()

        again = CliRunner().invoke(stack, ["up", *[str(x) for kv in ports.items() for x in kv]])  # on SQLite
        assert again.exit_code == 1 and "already running on other databases" in again.output, again.output
    finally:
        stopped = CliRunner().invoke(stack, ["down"]).output
    deadline = time.monotonic() + 15  # the servers' connections close as their processes exit
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s"
    while (connected := _query(port, "postgres", sql, f"{NAME}_%")[0][0]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert connected == 0 and "stopped" in stopped
    assert not [p.pid for p in psutil.process_iter() if _belongs(p, state)]
    assert all(" stopped " in line for line in CliRunner().invoke(stack, ["status"]).output.splitlines())



def _text(pid: int, what: str) -> str:
    """A live process's command line or environment as one string; "" for one that has exited (a Ray head that
    timed out its node on a loaded machine is a zombie: nobody reaps it once `dfd stack up` has exited)."""
    try:
        found = getattr(psutil.Process(pid), what)()
    except psutil.Error:
        return ""
    return " ".join(found.values() if isinstance(found, dict) else found)


def _belongs(proc: psutil.Process, state: dict) -> bool:
    """A live process of the stack: in a service's process group, or a Ray process naming its session folder."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return os.getpgid(proc.pid) in state["pids"].values() or state["ray_temp_dir"] in " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return False
