"""Alias moves with a history: MLflow has aliases but no rollback and no alias history.

Every move of `champion` keeps the previous champion reachable as `previous-champion` and
appends an entry to the registered model's history, kept in the registry itself as tags
`history.<NNNN>` (JSON: who, when, action, from, to, why, evidence), so any MLflow client reads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from slm_flywheel.models.registry import CHALLENGER, CHAMPION, alias_version

PREVIOUS_CHAMPION = "previous-champion"
HISTORY_PREFIX = "history."
ROLLED_BACK = "rolled_back"


class PromotionError(RuntimeError):
    """A move that must not happen (unknown version, already champion, a rolled-back version)."""


@dataclass(frozen=True)
class HistoryEntry:
    action: str  # bootstrap | promote | rollback | restore
    actor: str
    at: str
    from_version: int | None
    to_version: int
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def history(client: Any, name: str) -> list[HistoryEntry]:
    """Every recorded move of `champion`, oldest first."""
    tags = client.get_registered_model(name).tags or {}
    keys = sorted(key for key in tags if key.startswith(HISTORY_PREFIX))
    return [HistoryEntry(**json.loads(tags[key])) for key in keys]


def record(client: Any, name: str, entry: HistoryEntry) -> None:
    """Append `entry` to the registered model's history."""
    number = len(history(client, name)) + 1
    value = json.dumps(asdict(entry), default=str)
    if len(value) > 4000:  # MLflow's tag value limit is 5000 characters; evidence is trimmed, not lost in spirit
        value = json.dumps({**asdict(entry), "evidence": {"truncated": True, "keys": sorted(entry.evidence)}}, default=str)
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{number:04d}", value)


def move_champion(
    client: Any, name: str, version: int, *, actor: str, action: str, reason: str, evidence: dict[str, Any] | None = None, allow_rolled_back: bool = False
) -> HistoryEntry:
    """Point `champion` at `version`; the old champion becomes `previous-champion`; record it."""
    target = client.get_model_version(name, str(version))
    if not allow_rolled_back and (target.tags or {}).get(ROLLED_BACK):
        raise PromotionError(f"{name} v{version} was rolled back ({target.tags[ROLLED_BACK]}); it is not promoted again automatically")
    current = alias_version(client, name, CHAMPION)
    if current is not None and current.version == version:
        raise PromotionError(f"{name} v{version} is already the champion")
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, str(current.version))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is not None and challenger.version == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    entry = HistoryEntry(action, actor, datetime.now(timezone.utc).isoformat(timespec="seconds"), current.version if current else None, version, reason, evidence or {})
    record(client, name, entry)
    return entry


def record_bootstrap(client: Any, name: str, version: int, actor: str) -> HistoryEntry:
    """The first champion of a workload: the history starts here."""
    entry = HistoryEntry("bootstrap", actor, datetime.now(timezone.utc).isoformat(timespec="seconds"), None, version, "first version of the workload")
    record(client, name, entry)
    return entry


def restore_aliases(client: Any, name: str, champion: int | None, previous: int | None, *, actor: str = "flywheel", reason: str = "") -> None:
    """Put `champion` and `previous-champion` back exactly as they were (undo of a failed move),
    and say so in the history: the attempt stays on record."""
    current = alias_version(client, name, CHAMPION)
    for alias, version in ((CHAMPION, champion), (PREVIOUS_CHAMPION, previous)):
        if version is None:
            if alias_version(client, name, alias) is not None:
                client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, str(version))
    if champion is not None and current is not None and current.version != champion:
        record(client, name, HistoryEntry("reverted", actor, datetime.now(timezone.utc).isoformat(timespec="seconds"), current.version, champion, reason or "the move was undone"))


OUTSIDE_ACTOR = "mlflow-registry"


def adopt_outside_move(client: Any, name: str) -> HistoryEntry | None:
    """Record a `champion` alias set outside slm-flywheel (the MLflow UI, a script) like any move.

    MLflow moves the alias alone: this makes the former champion `previous-champion`, drops a
    `challenger` alias on the new champion, and appends the move to the history, so the rollback
    guard watches it like any promotion. Returns the entry, or None when the history already
    ends at the current champion."""
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        return None
    entries = history(client, name)
    last = entries[-1].to_version if entries else None
    if last == champion.version:
        return None
    if last is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, str(last))
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is not None and challenger.version == champion.version:
        client.delete_registered_model_alias(name, CHALLENGER)
    entry = HistoryEntry(
        "promote" if last is not None else "bootstrap", OUTSIDE_ACTOR, datetime.now(timezone.utc).isoformat(timespec="seconds"), last, champion.version,
        "champion alias set outside slm-flywheel (MLflow UI or API)",
    )
    record(client, name, entry)
    return entry
