"""`flywheel deploy`: what `prefect deploy --all` does, plus what it needs around it.

1. refuse an ephemeral API (nothing would run the schedules): PREFECT_API_URL must point at a
   server (`prefect server start`, or Prefect Cloud)
2. create the work pool if it is missing (`process` by default; see deployments/kubernetes/)
3. create each workload's `retrain` and `promote` locks (global concurrency limits, one slot)
4. `prefect --no-prompt deploy --all` from the project root, with FLYWHEEL_PROJECT_DIR set to it
   (the pull step of prefect.yaml: the directory workers run the flows in)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flywheel.config import Settings
from tasks.locks import ensure_locks

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEFAULT_POOL = "flywheel-process"


class DeployError(RuntimeError):
    """Deploying cannot work as configured; the message says what to do."""


def _prefect(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("prefect")), *args]
    result = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise DeployError(f"`prefect {' '.join(args)}` failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def deploy(settings: Settings, pool: str = DEFAULT_POOL) -> list[str]:
    """Deploy every flow in prefect.yaml; returns the lock names it ensured. (For GPU training on
    Kubernetes, create that pool first: deployments/kubernetes/README.md.)"""
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise DeployError(
            "PREFECT_API_URL is not set: deployments need a Prefect server that stays up. Start one "
            "(`.venv/bin/prefect server start`) and `export PREFECT_API_URL=http://127.0.0.1:4200/api`."
        )
    env = {**os.environ, "FLYWHEEL_PROJECT_DIR": str(PROJECT_DIR), "PREFECT_API_URL": api_url}
    if _prefect("work-pool", "inspect", pool, env=env, check=False).returncode != 0:
        _prefect("work-pool", "create", pool, "--type", "process", env=env)
    locks = ensure_locks(list(settings.workloads))
    _prefect("--no-prompt", "deploy", "--all", env=env)
    return locks
