"""Every benchmark runs the way its docstring says to run it (the command a reader copies)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(path for path in (REPO / "bench").glob("*.py") if path.name != "__init__.py")
COMMAND = re.compile(r"\.venv/bin/python (-m bench\.\w+|bench/\w+\.py)")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_the_documented_command_starts(script):
    match = COMMAND.search(script.read_text())
    assert match, f"{script.name}: no `.venv/bin/python ...` command in its docstring"
    run = subprocess.run([sys.executable, *match.group(1).split(), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "usage:" in run.stdout, f"{match.group(0)} --help: {run.stderr[-2000:]}"
