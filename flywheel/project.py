"""A project folder: the `flywheel.yaml` and `prefect.yaml` the commands and the deployments read.

The package ships the repository's own two files as its defaults (`slm_flywheel/defaults/`), so an
installed package needs no checkout: `flywheel init` copies them into a folder to edit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

DEFAULTS = Path(__file__).parent / "defaults"
PROJECT_FILES = ("flywheel.yaml", "prefect.yaml")


def write_project_files(folder: Path, *, force: bool = False) -> list[Path]:
    """Copy the default flywheel.yaml and prefect.yaml into `folder` (created if missing).

    Returns:
        The files written.

    Raises:
        FileExistsError: one of them is already there and `force` is False (nothing is written).
    """
    targets = [folder / name for name in PROJECT_FILES]
    present = [str(target) for target in targets if target.exists()]
    if present and not force:
        raise FileExistsError(", ".join(present))
    folder.mkdir(parents=True, exist_ok=True)
    for target in targets:
        shutil.copyfile(DEFAULTS / target.name, target)
    return targets


def project_prefect_file(folder: Path) -> Path:
    """The deployments of the project in `folder`: its prefect.yaml, else the package's default."""
    own = folder / "prefect.yaml"
    return own if own.is_file() else DEFAULTS / "prefect.yaml"
