"""What a user installs: the wheel holds one package, `slm_flywheel`, with every module of the source
folders and the default flywheel.yaml and prefect.yaml; `flywheel init` writes those two files.

(The whole path, a fresh virtual environment with `pip install .` and a training run from outside
the repository, downloads and installs too much for the suite: scripts/check_fresh_install.sh.)"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.conftest import REPO
from tests.integration.test_cli_errors import _flywheel, _one_line_error

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
DEFAULTS = ("flywheel.yaml", "prefect.yaml")


def _build_wheel(tmp_path: Path) -> zipfile.ZipFile:
    # From a copy of what the build reads, so no build/ or egg-info is left in (or reused from) the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", *DEFAULTS):
        shutil.copy(REPO / name, source / name)
    for folder in set(PACKAGE_DIRS.values()):
        shutil.copytree(REPO / folder, source / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("slm_flywheel-*.whl")
    return zipfile.ZipFile(wheel)


def test_the_wheel_is_one_namespaced_package_with_every_module_and_the_defaults(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(wheel.namelist())
    (dist_info,) = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
    assert {name.split("/")[0] for name in names} == {"slm_flywheel", dist_info}

    # Every module of every mapped folder is in the wheel (a new subpackage must be listed in pyproject).
    for package, folder in PACKAGE_DIRS.items():
        for module in (REPO / folder).rglob("*.py"):
            if "__pycache__" not in module.parts:
                relative = module.relative_to(REPO / folder).as_posix()
                assert f"{package.replace('.', '/')}/{relative}" in names, f"{folder}/{relative} is missing from the wheel"

    for name in DEFAULTS:  # the content of the repository's files, not links to them
        assert wheel.read(f"slm_flywheel/defaults/{name}") == (REPO / name).read_bytes(), name

    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(f"{dist_info}/entry_points.txt").decode())
    assert dict(entry_points["console_scripts"]) == {"flywheel": "slm_flywheel.app.cli:main"}


def test_init_writes_the_defaults_and_refuses_to_overwrite_them_without_force(tmp_path):
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    first = _flywheel("init", cwd=project, home=home)
    assert first.returncode == 0, first.stdout + first.stderr
    for name in DEFAULTS:
        assert (project / name).read_text() == (REPO / name).read_text(), name

    (project / "flywheel.yaml").write_text("home: mine\n")
    _one_line_error(_flywheel("init", cwd=project, home=home), "flywheel.yaml", "already there", "--force")
    assert (project / "flywheel.yaml").read_text() == "home: mine\n"  # refused: nothing written

    forced = _flywheel("init", "--force", cwd=project, home=home)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert (project / "flywheel.yaml").read_text() == (REPO / "flywheel.yaml").read_text()


def test_init_creates_the_folder_it_is_given(tmp_path):
    made = _flywheel("init", "new/project", cwd=tmp_path, home=tmp_path / "home")
    assert made.returncode == 0, made.stdout + made.stderr
    assert sorted(path.name for path in (tmp_path / "new" / "project").iterdir()) == sorted(DEFAULTS)
