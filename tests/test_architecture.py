"""The house's rules, read from the source with ``ast``: who may import whom, no cycles, and
which rooms stay light enough for Hydra to import at every start."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT

#: plateau's own top-level packages and modules, lowest floor first. An import may go to
#: the same floor or lower, never up; the rules below forbid some sideways ones too.
FLOORS = {
    "errors": 0,
    "lightning_modules": 1, "data_modules": 1,
    "doctor": 2,
    "sweeps": 3,
    "hydra_plugins": 4, "sweep": 4, "benchmarks": 4, "doctor.__main__": 4,
}
#: Inside ``sweeps``: the shared floor, then the job and the report, then the sweeper.
SWEEPS_FLOORS = {"sweeps.job": 1, "sweeps.report": 1, "sweeps.sweeper": 2}
#: (importer prefix, imported prefix, why): imports that must not exist.
NEVER = [
    ("lightning_modules", "sweeps", "a model knows no study"),
    ("data_modules", "sweeps", "data knows no study"),
    ("doctor", "sweeps", "the doctor's checks know no study (doctor/__main__.py aside)"),
    ("data_modules", "lightning_modules", "the backbone's data config is passed in"),
    ("lightning_modules", "doctor", "models are checked, they do not check"),
    ("data_modules", "doctor", "data is checked, it does not check"),
    ("hydra_plugins", "lightning_modules", "Hydra imports plugins at every start"),
    ("hydra_plugins", "data_modules", "Hydra imports plugins at every start"),
    ("sweeps.job", "sweeps.sweeper", "a job knows no sweeper loop"),
    ("sweeps.report", "sweeps.sweeper", "the report is written from the study alone"),
    ("sweeps.report", "sweeps.job", "the report is written from the study alone"),
]
SOURCE_DIRS = ("errors", "lightning_modules", "data_modules", "doctor", "sweeps",
               "hydra_plugins", "benchmarks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    files = [ROOT / "sweep.py"]
    for folder in SOURCE_DIRS:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


MODULES = {module_name(path): path for path in source_files()}


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")[: len(importer.split(".")) - node.level + is_package]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported(importer: str) -> Iterator[tuple[str, int]]:
    """plateau modules ``importer`` imports, anywhere in it (inside functions too), with the
    line: ``from a import b`` counts as importing ``a.b`` when that is a module."""
    tree = ast.parse(MODULES[importer].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(importer, node)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # a name inside a module: the module
                name = name.rpartition(".")[0]
            if name and name != importer:
                yield name, node.lineno


GRAPH = {module: sorted(set(imported(module))) for module in MODULES}


def floor(module: str) -> int:
    if module in FLOORS:
        return FLOORS[module]
    return FLOORS[module.split(".")[0]]


def within_sweeps_floor(module: str) -> int:
    return next((level for prefix, level in SWEEPS_FLOORS.items()
                 if module == prefix or module.startswith(prefix + ".")), 0)


def starts(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_tree_is_read() -> None:
    assert {"errors", "sweeps.ledger", "sweeps.sweeper.coordinator", "sweeps.job.run",
            "doctor.__main__", "hydra_plugins.plateau_sweeper.plateau_sweeper"} <= set(MODULES)
    assert ("sweeps.job.prepare", 0) not in GRAPH["sweep"]
    assert any(name == "sweeps.job.run" for name, _ in GRAPH["sweep"])  # a deferred import


@pytest.mark.parametrize(("importer", "target", "why"), NEVER,
                         ids=[f"{a}->{b}" for a, b, _ in NEVER])
def test_forbidden_import_is_absent(importer: str, target: str, why: str) -> None:
    found = [f"{MODULES[module].relative_to(ROOT)}:{line} imports {name}"
             for module, edges in GRAPH.items() if starts(module, importer)
             and module != "doctor.__main__" for name, line in edges if starts(name, target)]
    assert not found, why


def test_no_import_runs_up_a_floor() -> None:
    up = [f"{MODULES[module].relative_to(ROOT)}:{line} imports {name}"
          for module, edges in GRAPH.items() for name, line in edges
          if floor(name) > floor(module)
          or (floor(name) == floor(module) == FLOORS["sweeps"]
              and within_sweeps_floor(name) > within_sweeps_floor(module))]
    assert not up


def test_errors_leaf_imports_nothing_of_plateau() -> None:
    assert GRAPH["errors"] == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules() -> None:
    assert _cycle({m: {name for name, _ in edges} for m, edges in GRAPH.items()}) is None


def package_of(module: str) -> str:
    """The folder a module lives in (``sweeps.job`` for ``sweeps.job.run``); the doctor's
    command line is a shell of its own, like ``sweep.py``."""
    if MODULES[module].name == "__init__.py" or module == "doctor.__main__":
        return module
    return module.rpartition(".")[0] or module


def test_no_import_cycle_between_packages() -> None:
    packages: dict[str, set[str]] = {}
    for module, edges in GRAPH.items():
        own = package_of(module)
        packages.setdefault(own, set()).update(
            other for name, _ in edges if (other := package_of(name)) != own
            and not own.startswith(other + ".") and not other.startswith(own + "."))
    assert _cycle(packages) is None


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


#: What Hydra imports at every start (the plugin), what a sweep's own process runs, and what
#: ``python -m doctor report`` needs: none may import the trial stack.
LIGHT = ["hydra_plugins.plateau_sweeper.plateau_sweeper",
         *sorted(m for m in MODULES if starts(m, "sweeps.sweeper") or starts(m, "sweeps.report")),
         *sorted(m for m in MODULES if m.startswith("sweeps.") and m.count(".") == 1
                 and m != "sweeps.job")]
HEAVY = ("lightning", "pytorch_lightning", "timm", "torch", "torchvision")


def test_sweeper_report_and_plugin_import_no_lightning_timm_or_torch() -> None:
    code = ("import importlib, json, sys\n"
            f"for name in {LIGHT!r}: importlib.import_module(name)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert "sweeps.sweeper.coordinator" in LIGHT
    assert "sweeps.report.publish" in LIGHT
    assert json.loads(done.stdout) == []


def test_the_job_side_does_import_the_trial_stack() -> None:
    # the check above would pass vacuously if sys.modules never showed these
    code = ("import sys, sweeps.job.run\n"
            "print(all(m in sys.modules for m in ('lightning', 'timm', 'torch')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "True"


#: The size a newcomer can read in one sitting (STYLE.md); an exception is named here, with
#: its reason, and in the commit that makes it.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 50


def test_no_module_or_function_outgrows_its_room() -> None:
    big = []
    for module, path in MODULES.items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            big.append(f"{module}: {len(source.splitlines())} lines")
        big += [f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
                for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.end_lineno is not None
                and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not big
