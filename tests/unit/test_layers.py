"""The layer rule, read from the imports: a module imports only from its own layer or below.

foundation (`slm_flywheel` itself: typed config, atomic files, tracking URI, progress, project files) < models,
data_contracts < serving < tasks < flows < deployments < app (the command line, demo, report and simulator).
`serving/` and `models/` never import Prefect. Every import counts, including ones inside functions.
The layer of a module is its package, read from pyproject's package-dir."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The folders and the installed packages they are (pyproject's package-dir): flywheel/ is slm_flywheel itself.
PACKAGE_DIR: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
FOLDERS = {folder: package for package, folder in PACKAGE_DIR.items()}
PACKAGES = set(PACKAGE_DIR)
RANK = {"foundation": 0, "models": 1, "data_contracts": 1, "serving": 2, "tasks": 3, "flows": 4, "deployments": 5, "app": 6}


def layer(module: str) -> str:
    """The package a module sits in; the modules of `slm_flywheel` itself are the foundation."""
    package = max((name for name in PACKAGES if module == name or module.startswith(name + ".")), key=len)
    return "foundation" if package == "slm_flywheel" else package.split(".")[1]


def project_modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])
            found[name] = path
    return found


def imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


MODULES = project_modules()


def project_imports(path: Path) -> set[str]:
    return {name for name in imports_of(path) if name in MODULES}


def upward_imports(module: str, path: Path) -> list[str]:
    mine = RANK[layer(module)]
    return sorted(name for name in project_imports(path) if RANK[layer(name)] > mine)


def test_every_package_has_a_layer():
    assert {layer(package) for package in PACKAGES} == set(RANK)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_its_layer_or_below(module):
    upward = upward_imports(module, MODULES[module])
    assert not upward, f"{module} ({layer(module)}) imports a higher layer: {upward}"


@pytest.mark.parametrize("module", sorted(name for name in MODULES if layer(name) in ("foundation", "models", "data_contracts", "serving")))
def test_lower_layers_never_import_prefect(module):
    prefect = sorted(name for name in imports_of(MODULES[module]) if name.split(".")[0] == "prefect")
    assert not prefect, f"{module} imports Prefect: {prefect}"


def test_no_import_cycle_between_files():
    graph = {module: project_imports(path) - {module} for module, path in MODULES.items()}
    # a package's __init__ is imported with each of its modules: it is not an edge of its own
    graph = {module: {name for name in deps if name not in PACKAGES} for module, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_rule_sees_a_violation(tmp_path):
    """The reader finds imports inside functions too (a rule that sees nothing cannot fail)."""
    source = tmp_path / "example.py"
    source.write_text("def f():\n    from slm_flywheel.flows.promote import promote\n    import slm_flywheel.tasks.push\n")
    assert {"slm_flywheel.flows.promote", "slm_flywheel.flows.promote.promote", "slm_flywheel.tasks.push"} <= set(imports_of(source))
    # the foundation importing the command line is the violation the package layout rules out
    source.write_text("def f():\n    from slm_flywheel.app.cli import main\n    from slm_flywheel import progress\n")
    assert layer("slm_flywheel.config") == "foundation" and layer("slm_flywheel.app.cli") == "app"
    assert upward_imports("slm_flywheel.config", source) == ["slm_flywheel.app.cli"]
