"""`SimulatedTeacher`: answers from the traffic simulator's hidden gold with plausible mistakes (SIMULATED everywhere it shows), and that gold's file."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from slm_flywheel.models.teacher.records import BUDGET_EXHAUSTED, OK, TeacherItem, TeacherLabel, TeacherRun, check_spec, check_unique_ids, logger
from slm_flywheel.models.usage import SIMULATED_MODEL, UsageLog

if TYPE_CHECKING:
    from slm_flywheel.models.workload import TaskSpec


# An item outside the simulator's gold (a push's smoke test, traffic not from the simulator): not an
# answer, and not a failed call either (nothing to retry: asking again cannot find a gold answer).
_NO_GROUND_TRUTH = "no_ground_truth"


def ground_truth_path(home: Path) -> Path:
    """Where the traffic simulator appends each request's hidden gold answer."""
    return Path(home).resolve() / "simulator" / "ground_truth.jsonl"


def read_ground_truth(path: Path) -> dict[str, str]:
    """request id -> gold answer (for the simulated teacher and report scorekeeping only)."""
    if not path.exists():
        return {}
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {row["request_id"]: row["gold"] for row in rows}


def request_gold_path(home: Path) -> Path:
    """Where the simulator writes each request's gold *before* sending it, keyed by the request's
    `x-request-id`: the SIMULATED frontier on the request path (the router) answers from it."""
    return Path(home).resolve() / "simulator" / "request_gold.jsonl"


class LiveGold(Mapping[str, str]):
    """`x-request-id` -> gold, from `request_gold_path`, read again when a key is missing and the
    file has grown (the simulator appends to it while the server answers)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._gold: dict[str, str] = {}
        self._size = -1
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        size = self.path.stat().st_size if self.path.exists() else 0
        if size != self._size:
            rows = (json.loads(line) for line in self.path.read_text().splitlines() if line.strip()) if size else ()
            self._gold, self._size = {row["client_request_id"]: row["gold"] for row in rows}, size

    def __getitem__(self, key: str) -> str:
        with self._lock:
            if key not in self._gold:
                self._refresh()
            return self._gold[key]

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            self._refresh()
            return iter(list(self._gold))

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._gold)


class SimulatedTeacher:
    """A stand-in teacher answering from the simulator's hidden gold, with plausible mistakes.

    No LLM is called. With probability `error_rate` an answer is wrong the way a strong model is
    wrong: a confusable intent, or a dropped or misplaced slot. Costs and the budget cap work as
    for the real teacher, at `price_per_item_usd` per answered item.
    """

    def __init__(
        self,
        spec: TaskSpec,
        ground_truth: Mapping[str, str],
        *,
        error_rate: float = 0.05,
        price_per_item_usd: float = 0.0005,
        latency_s: float = 0.0,
        seed: int = 0,
        budget_usd: float = 5.0,
        usage_log: UsageLog | None = None,
    ):
        check_spec(spec)
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], got {error_rate}")
        for name, number in (
            ("price_per_item_usd", price_per_item_usd),
            ("latency_s", latency_s),
            ("budget_usd", budget_usd),
        ):
            if number < 0:
                raise ValueError(f"{name} must not be negative, got {number}")
        self.spec = spec
        self.name = "simulated-teacher (SIMULATED frontier model)"
        self.ground_truth = ground_truth
        self.error_rate = error_rate
        self.price_per_item_usd = price_per_item_usd
        self.latency_s = latency_s
        self.seed = seed
        self.budget_usd = budget_usd
        self.usage_log = usage_log

    def label(self, items: list[TeacherItem]) -> TeacherRun:
        """Answer each item from its gold, wrong on purpose at `error_rate`, within the budget."""
        check_unique_ids(items)
        labels: list[TeacherLabel] = []
        charged = wrong = 0
        for item in items:
            gold = self.ground_truth.get(item.item_id)
            if gold is None:
                labels.append(TeacherLabel(item.item_id, None, False, _NO_GROUND_TRUTH, 0.0, False, self.name))
                continue
            # Counting items rather than summing prices keeps float drift out of the cap.
            if (charged + 1) * self.price_per_item_usd > self.budget_usd:
                labels.append(TeacherLabel(item.item_id, None, False, BUDGET_EXHAUSTED, 0.0, False, self.name))
                continue
            charged += 1
            if self.usage_log is not None:  # one simulated call per answered item, priced per item
                self.usage_log.record(SIMULATED_MODEL, 0, 0, 1)
            if self.latency_s:
                time.sleep(self.latency_s)
            # One generator per item: an item's answer does not depend on its batch or position.
            rng = random.Random(f"{self.seed}:{item.item_id}")
            answer = gold
            if rng.random() < self.error_rate:
                answer = self._mistake(gold, item.text, rng)
                wrong += answer != gold
            labels.append(TeacherLabel(item.item_id, answer, True, OK, self.price_per_item_usd, False, self.name))
        unknown = sum(label.reason == _NO_GROUND_TRUTH for label in labels)
        exhausted = sum(label.reason == BUDGET_EXHAUSTED for label in labels)
        logger.info(
            "SIMULATED teacher (no LLM called): %d of %d items answered from the hidden gold, %d wrong on purpose "
            "(error_rate %.3f), %d without ground truth, %d over budget; simulated cost $%.4f of $%.2f",
            charged,
            len(items),
            wrong,
            self.error_rate,
            unknown,
            exhausted,
            charged * self.price_per_item_usd,
            self.budget_usd,
        )
        return TeacherRun(
            labels=labels,
            calls=charged,
            cached_calls=0,
            cost_usd=charged * self.price_per_item_usd,
            budget_usd=self.budget_usd,
            prompt_tokens=0,
            completion_tokens=0,
        )

    def worst_case_cost_usd(self, items: list[TeacherItem]) -> float:
        """Every item answered, at `price_per_item_usd`."""
        return len(items) * self.price_per_item_usd

    def _mistake(self, gold: str, text: str, rng: random.Random) -> str:
        if self.spec.task == "classification":
            return self._confusable_label(gold, rng)
        return self._slot_mistake(gold, text, rng)

    def _confusable_label(self, gold: str, rng: random.Random) -> str:
        """A label sharing the most name tokens with `gold` (card_arrival -> card_delivery_estimate)."""
        others = [label for label in self.spec.labels if label != gold]
        if not others:
            return gold
        tokens = set(gold.split("_"))
        shared = {label: len(tokens & set(label.split("_"))) for label in others}
        most = max(shared.values())
        return rng.choice([label for label in others if shared[label] == most])

    def _slot_mistake(self, gold: str, text: str, rng: random.Random) -> str:
        """Drop a slot or fill one with another span of the text; a spurious slot when gold is empty."""
        slots = json.loads(gold)
        words = sorted(set(re.findall(r"\w+", text)))
        replaceable = [name for name in sorted(slots) if any(word != slots[name] for word in words)]
        kinds = (["drop"] if slots else []) + (["replace"] if replaceable else [])
        if not slots and words:
            kinds.append("add")
        if not kinds:
            return gold
        kind = rng.choice(kinds)
        if kind == "drop":
            del slots[rng.choice(sorted(slots))]
        elif kind == "replace":
            name = rng.choice(replaceable)
            slots[name] = rng.choice([word for word in words if word != slots[name]])
        else:
            slots[rng.choice(self.spec.slots)] = rng.choice(words)
        return self.spec.answer_to_label(slots)
