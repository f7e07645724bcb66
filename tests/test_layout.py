"""The shape of the code (docs/ARCHITECTURE.md): arrows point down, no import cycle, dfdcore and single-machine
restoration live without the pipeline (Prefect, Ray, MLflow), one command list however dfd is started."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each layer's source lives, and the module name it installs as.
PACKAGES = {"dfdcore": ROOT / "dfdcore", "dfd": ROOT / "dfd", "dfd.flows": ROOT / "flows", "dfd.tasks": ROOT / "tasks"}
LAYER_RANK = {"dfd": 3, "dfd.flows": 2, "dfd.tasks": 1, "dfdcore": 0}  # a module may import only lower ranks
PIPELINE = ("prefect", "ray", "mlflow")
MAX_LINES = 400
BLOCK_PIPELINE = "import sys\nfor _name in {names!r}:\n    sys.modules[_name] = None\n".format(names=PIPELINE)


def modules() -> dict[str, Path]:
    """Every module of the project: dotted name → file."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    """Absolute names imported by a module (``top_level_only``: only statements run when it is imported)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def layer(name: str) -> str | None:
    for package in ("dfd.flows", "dfd.tasks", "dfdcore", "dfd"):
        if name == package or name.startswith(package + "."):
            return package
    return None


def test_no_import_cycle_between_modules():
    known = modules()
    graph = {m: sorted(i for i in imports(p, m, top_level_only=True) if i in known and i != m)
             for m, p in known.items()}
    assert [c for c in strongly_connected(graph) if len(c) > 1] == []


def strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's components of a directed graph; a component of more than one node is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_imports_point_down_the_layers():
    wrong = []
    for name, path in modules().items():
        own = layer(name)
        for imported in imports(path, name, top_level_only=False):
            other = layer(imported)
            if other and other != own and LAYER_RANK[other] > LAYER_RANK[own]:
                wrong.append(f"{name} imports {imported}")
            if own == "dfdcore" and imported.split(".")[0] in PIPELINE:
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_module_over_400_lines_without_a_reason():
    long = [f"{name} ({n} lines)" for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES
            and "longer than 400 lines:" not in (ast.get_docstring(ast.parse(path.read_text())) or "")]
    assert not long, f"over {MAX_LINES} lines with no 'longer than 400 lines: <why>' in the docstring: {long}"


def _run_without_pipeline(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "without_pipeline.py"
    script.write_text(BLOCK_PIPELINE + code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)


def test_library_and_single_machine_restore_work_without_the_pipeline(tmp_path):
    photo = ROOT / "dfdcore" / "assets" / "grace_hopper.jpg"
    code = f"""
import importlib, json, pkgutil
import dfdcore
names = [m.name for m in pkgutil.walk_packages(dfdcore.__path__, "dfdcore.")]
for name in names:
    importlib.import_module(name)
from click.testing import CliRunner
from dfd.cli import main
help_ = CliRunner().invoke(main, ["--help"])
restore = CliRunner().invoke(main, ["restore", {str(photo)!r}, "-o", {str(tmp_path / "out")!r}, "--model", "identity"])
train = CliRunner().invoke(main, ["train", "photos", "-o", "run", "--dictionary", "d.safetensors", "--random-vgg"])
print(json.dumps({{"modules": len(names), "help": [help_.exit_code, help_.output],
                  "restore": [restore.exit_code, restore.output], "train": [train.exit_code, train.output]}}))
"""
    result = _run_without_pipeline(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["modules"] >= 40
    assert report["help"][0] == 0 and "restore" in report["help"][1]
    assert report["restore"][0] == 0, report["restore"][1]
    assert (tmp_path / "out" / "restored_imgs" / "grace_hopper.jpg").is_file()
    assert report["train"][0] == 1 and "pip install 'dfd[pipeline]'" in report["train"][1]


@pytest.mark.parametrize("argv", [["-m", "dfd"], ["-m", "dfd.cli"]])
def test_python_dash_m_lists_the_same_commands_as_the_script(argv):
    script = subprocess.run([str(Path(sys.executable).parent / "dfd"), "--help"], capture_output=True, text=True)
    module = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True)
    assert script.returncode == module.returncode == 0

    def commands(text: str) -> list[str]:
        section = text.split("Commands:", 1)[1]
        return [line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.split()]

    assert commands(module.stdout) == commands(script.stdout)
    assert {"restore", "sample", "build-dictionary", "dictionary", "train", "evaluate", "compare", "demo", "stack",
            "deploy"} <= set(commands(script.stdout))


def test_wheel_installs_flows_tasks_and_infra_under_dfd(tmp_path):
    """A regular (non-editable) install has dfd.flows, dfd.tasks and the deployment file, and no top-level
    packages named flows or tasks."""
    import zipfile

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("dfd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"dfd/flows/restore_bucket.py", "dfd/tasks/restore.py", "dfd/infra/prefect/prefect.yaml",
            "dfdcore/restoration/bulk.py", "dfdcore/assets/obama.jpg", "dfd/serve_page.html",
            "dfdcore/models/bundled.py"} <= names
    bundled = {f"dfdcore/assets/models/dfd-pd-128/{name}" for name in ("model.json", "generator.safetensors",
                                                                        "dictionary.safetensors")}
    assert bundled <= names, "the bundled model (the default of dfd restore) is not in the wheel"
    assert wheel.stat().st_size <= 40 * 2**20, f"the wheel is {wheel.stat().st_size / 2**20:.1f} MiB, over 40"
    assert not {name.split("/")[0] for name in names} & {"flows", "tasks", "infra", "tests", "bench"}
