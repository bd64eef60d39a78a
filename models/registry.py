"""Adapter versions in the MLflow model registry, addressed by aliases (never stages).

Every function takes an `MlflowClient`, so the same code runs against the embedded SQLite
registry, a remote tracking server, or a temporary registry in a test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"
ADAPTER_ARTIFACT = "adapter"
_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


class RegistryError(LookupError):
    """A registered model, version or alias does not exist."""


@dataclass(frozen=True)
class AdapterVersion:
    name: str
    version: int
    run_id: str
    source: str
    aliases: tuple[str, ...]
    tags: dict[str, str]


def _to_record(mv: Any) -> AdapterVersion:
    return AdapterVersion(
        name=mv.name,
        version=int(mv.version),
        run_id=mv.run_id,
        source=mv.source,
        aliases=tuple(getattr(mv, "aliases", ()) or ()),
        tags=dict(mv.tags or {}),
    )


def alias_version(client: Any, name: str, alias: str) -> AdapterVersion | None:
    """The version `alias` points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return _to_record(client.get_model_version_by_alias(name, alias))
    except MlflowException:
        return None


def get_version(client: Any, name: str, version: int | None = None, alias: str | None = None) -> AdapterVersion:
    """A version by number or alias (default: the champion)."""
    from mlflow.exceptions import MlflowException

    if version is not None:
        try:
            return _to_record(client.get_model_version(name, str(version)))
        except MlflowException as exc:
            raise RegistryError(f"{name} has no version {version}") from exc
    alias = alias or CHAMPION
    found = alias_version(client, name, alias)
    if found is None:
        raise RegistryError(f"{name} has no alias @{alias}")
    return found


def register_adapter(client: Any, name: str, run_id: str, tags: dict[str, str], description: str = "") -> AdapterVersion:
    """Register the run's `adapter` artifact directory as a new version of model `name`."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"LoRA adapters for the {name} workload")
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{ADAPTER_ARTIFACT}"
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags, description=description)
    return _to_record(client.get_model_version(name, mv.version))


def assign_initial_alias(client: Any, name: str, version: int) -> str:
    """Bootstrap: the first version becomes `champion`; later ones become `challenger`."""
    alias = CHALLENGER if alias_version(client, name, CHAMPION) is not None else CHAMPION
    client.set_registered_model_alias(name, alias, str(version))
    return alias


def parse_model_ref(ref: str) -> tuple[str, int | None, str | None]:
    """`models:/name@alias` or `models:/name/3` -> (name, version, alias)."""
    match = _REF.match(ref)
    if not match:
        raise RegistryError(f"not a registry reference: {ref!r} (expected models:/<name>@<alias> or models:/<name>/<version>)")
    version = match.group("version")
    return match.group("name"), int(version) if version else None, match.group("alias")


def download_adapter(client: Any, record: AdapterVersion, cache_dir: Path) -> Path:
    """The adapter's files on local disk (downloaded once per version into `cache_dir`)."""
    target = cache_dir / record.name / f"v{record.version}"
    if (target / "adapter_config.json").exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    local = Path(client.download_artifacts(record.run_id, ADAPTER_ARTIFACT, str(tmp)))
    local.rename(target)
    tmp.rmdir()
    return target
