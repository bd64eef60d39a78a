"""`flywheel deploy`: what `prefect deploy --all` does, plus what it needs around it.

1. refuse an ephemeral API (nothing would run the schedules): PREFECT_API_URL must point at a
   server (`prefect server start`, or Prefect Cloud)
2. create the work pool if it is missing (`process` by default; see deployments/kubernetes/)
3. create each workload's `retrain` and `promote` locks (global concurrency limits, one slot)
4. `prefect --no-prompt deploy` of every deployment in the project's prefect.yaml (the working
   directory's, else the package's default; or the `prefect_file` given) whose `workload`
   parameter is a configured workload (or that has none), with FLYWHEEL_PROJECT_DIR set to the
   working directory (the pull step: the directory workers run the flows in, where they read
   flywheel.yaml). A deployment for a workload the configuration lacks is skipped and named: its
   run form lists only configured workloads, so Prefect would refuse its default parameter anyway.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from slm_flywheel.config import Settings
from slm_flywheel.project import project_prefect_file
from slm_flywheel.tasks.locks import ensure_locks

DEFAULT_POOL = "flywheel-process"


@dataclass
class Deployed:
    """What `deploy` did: the locks it ensured, the deployments it deployed and those it skipped."""

    locks: list[str]
    deployed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> its unconfigured workload


def select_deployments(prefect_file: Path, workloads: list[str]) -> tuple[list[str], dict[str, str]]:
    """The deployment names of `prefect_file` to deploy for these workloads, and those to skip."""
    try:
        entries = (yaml.safe_load(Path(prefect_file).read_text()) or {}).get("deployments") or []
    except (OSError, yaml.YAMLError) as error:
        raise DeployError(f"cannot read the deployments in {prefect_file}: {error}") from error
    chosen, skipped = [], {}
    for entry in entries:
        workload = (entry.get("parameters") or {}).get("workload")
        if workload is None or workload in workloads:
            chosen.append(entry["name"])
        else:
            skipped[entry["name"]] = workload
    return chosen, skipped


class DeployError(RuntimeError):
    """Deploying cannot work as configured; the message says what to do."""


def _prefect(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("prefect")), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise DeployError(f"`prefect {' '.join(args)}` failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def deploy(
    settings: Settings, pool: str = DEFAULT_POOL, config_path: Path | None = None, prefect_file: Path | None = None,
) -> Deployed:
    """Deploy the flows of prefect.yaml (or `prefect_file`) for the configured workloads. (For GPU
    training on Kubernetes, create that pool first: deployments/kubernetes/README.md.) The run forms
    list the workloads of `config_path` (default: flywheel.yaml or `$FLYWHEEL_CONFIG`)."""
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise DeployError(
            "PREFECT_API_URL is not set: deployments need a Prefect server that stays up. Start one "
            "(`.venv/bin/prefect server start`) and `export PREFECT_API_URL=http://127.0.0.1:4200/api`."
        )
    # The project is the folder deployed from, as for every command (a checkout, or one `flywheel init` wrote).
    project = Path.cwd()
    env = {**os.environ, "FLYWHEEL_PROJECT_DIR": str(project), "PREFECT_API_URL": api_url}
    if config_path is not None and Path(config_path).exists():
        env["FLYWHEEL_CONFIG"] = str(Path(config_path).resolve())
    if _prefect("work-pool", "inspect", pool, env=env, check=False).returncode != 0:
        _prefect("work-pool", "create", pool, "--type", "process", env=env)
    prefect_file = Path(prefect_file or project_prefect_file(project)).resolve()
    chosen, skipped = select_deployments(prefect_file, list(settings.workloads))
    if not chosen:
        raise DeployError(f"no deployment in {prefect_file} is for a configured workload ({', '.join(settings.workloads) or 'none'})")
    locks = ensure_locks(list(settings.workloads))
    names = [arg for name in chosen for arg in ("--name", name)]
    _prefect("--no-prompt", "deploy", "--prefect-file", str(prefect_file), *names, env=env)
    return Deployed(locks, chosen, skipped)
