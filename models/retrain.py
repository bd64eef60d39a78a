"""A retrain's rows: the champion's data replayed plus the new labels, and the gate's held-out share."""

from __future__ import annotations

import hashlib

import pandas as pd

from slm_flywheel.config import RelabelConfig


def in_holdout(item_id: str, share: float) -> bool:
    """A stable split by id: the same sample lands on the same side in every rerun."""
    return int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def replay_sample(replay: pd.DataFrame, size: int, per_label: int, seed: int = 0) -> pd.DataFrame:
    """`size` rows of the champion's data (seeded), with at least `per_label` rows of every label
    it has (all of a label's rows if it has fewer), so the training-set contract still holds."""
    if size >= len(replay):
        return replay
    shuffled = replay.sample(frac=1.0, random_state=seed)
    floor = shuffled.groupby("label", sort=False).head(per_label)
    rest = shuffled.drop(floor.index)
    return pd.concat([floor, rest.head(max(size - len(floor), 0))]).sort_index()


def retrain_rows(replay: pd.DataFrame, new: pd.DataFrame, config: RelabelConfig) -> pd.DataFrame:
    """The rows a retrain trains on: the champion's data replayed plus the new labels (id, text, label)."""
    if config.retrain_mode == "warm_start":
        # Warm start continues from the champion's adapter: a replay sample twice the new data
        # guards against forgetting at a fraction of the full replay's training time.
        replay = replay_sample(replay, max(len(new), 1) * 2, per_label=config.min_per_label)
    # New labels win over replayed ones for the same text (the teacher saw today's meaning).
    replay = replay[~replay["text"].isin(set(new["text"]))]
    return pd.concat([replay, new[["id", "text", "label"]]], ignore_index=True)
