"""Launch data and traffic scenarios: how the champion was trained, and how traffic later moves.

The launch champion is trained on data that under-represents a deterministic set of "late"
items: for Banking77, a set of intents (a product that launches later); for Restaurant-8k,
bookings that carry a guest's name. Traffic scenarios then draw from the non-golden rows:

* `steady`: the launch distribution (late items as rare as in the launch training set);
* `prior-shift`: most traffic on the late items (the product launch / name-heavy bookings);
* `new-phrasing` (classification): the steady mix, rewritten: lowercase, typos, abbreviations,
  shorter and longer wording.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass

from datasets import Dataset

from slm_flywheel.config import LaunchConfig

SCENARIOS = {"classification": ("steady", "prior-shift", "new-phrasing"), "extraction": ("steady", "prior-shift")}
NAME_SLOTS = ("first_name", "last_name")


@dataclass(frozen=True)
class LaunchPlan:
    """Which items are rare at launch, and how rare."""

    task: str
    late_labels: tuple[str, ...]  # classification: the late intents; extraction: empty
    rare_cap: int  # at most this many launch training examples per late intent (or name rows in all)
    shift_share: float  # the share of prior-shift traffic on late items

    def is_late(self, label: str) -> bool:
        if self.task == "classification":
            return label in self.late_labels
        return any(slot in json.loads(label) for slot in NAME_SLOTS)


def launch_plan(task: str, labels: tuple[str, ...], config: LaunchConfig) -> LaunchPlan:
    """The plan for a workload from its `launch` config (late_count, rare_cap, shift_share, seed)."""
    late: tuple[str, ...] = ()
    if task == "classification":
        rng = random.Random(config.seed)
        late = tuple(sorted(rng.sample(sorted(labels), config.late_count)))
    return LaunchPlan(task, late, config.rare_cap, config.shift_share)


def launch_training_set(train: Dataset, plan: LaunchPlan, max_examples: int, seed: int) -> Dataset:
    """The launch champion's training data: late items capped, the rest sampled round-robin."""
    rng = random.Random(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    late_rows: list[int] = []
    for index, label in enumerate(train["label"]):
        if plan.is_late(label):
            late_rows.append(index)
        groups["" if plan.task == "extraction" else label].append(index)
    picked: list[int] = []
    if plan.task == "classification":
        queues = []
        for key in sorted(groups):
            members = groups[key][:]
            rng.shuffle(members)
            queues.append(members[: plan.rare_cap] if key in plan.late_labels else members)
        while len(picked) < max_examples and any(queues):
            for queue in queues:
                if queue and len(picked) < max_examples:
                    picked.append(queue.pop())
    else:
        late_set = set(late_rows)
        others = [i for i in groups[""] if i not in late_set]
        rng.shuffle(others)
        rng.shuffle(late_rows)
        picked = late_rows[: plan.rare_cap] + others[: max(max_examples - plan.rare_cap, 0)]
    rng.shuffle(picked)
    return train.select(picked)


_ABBREVIATIONS = {
    "you": "u", "your": "ur", "are": "r", "please": "pls", "account": "acct", "transfer": "xfer",
    "because": "bc", "though": "tho", "thanks": "thx", "received": "recvd", "payment": "pmt",
    "money": "$$", "and": "&", "with": "w/", "without": "w/o", "what": "wat", "information": "info",
}
_FILLERS_BEFORE = ("hey so ", "hi there, quick question: ", "ok so basically ", "hello, ")
_FILLERS_AFTER = (" thanks in advance!!", " asap please", " can u help", " this is really annoying")


def rephrase(text: str, rng: random.Random) -> str:
    """A new way of writing the same request (the `new-phrasing` scenario)."""
    words = text.lower().split()
    words = [_ABBREVIATIONS.get(re.sub(r"\W", "", w), w) if rng.random() < 0.7 else w for w in words]
    if len(words) > 5 and rng.random() < 0.4:  # shorter: drop the tail
        words = words[: max(3, int(len(words) * 0.6))]
    out = " ".join(words)
    chars = list(out)
    for _ in range(max(1, len(chars) // 15)):  # typos: swap or drop a letter
        if len(chars) < 4:
            break
        i = rng.randrange(1, len(chars) - 1)
        if rng.random() < 0.5:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        else:
            del chars[i]
    out = "".join(chars).replace("?", "").replace(".", "")
    if rng.random() < 0.5:  # longer
        out = rng.choice(_FILLERS_BEFORE) + out + rng.choice(_FILLERS_AFTER)
    return out


@dataclass(frozen=True)
class SimulatedRequest:
    text: str
    gold: str  # the hidden answer: a label, or canonical slot JSON
    source_id: int


def scenario_requests(pool: Dataset, plan: LaunchPlan, scenario: str, count: int, seed: int) -> list[SimulatedRequest]:
    """`count` requests drawn from `pool` (non-golden rows) for `scenario`."""
    if scenario not in SCENARIOS[plan.task]:
        raise ValueError(f"unknown scenario {scenario!r} for a {plan.task} workload (choose from {', '.join(SCENARIOS[plan.task])})")
    rng = random.Random(seed)
    late = [i for i, label in enumerate(pool["label"]) if plan.is_late(label)]
    usual = [i for i, label in enumerate(pool["label"]) if not plan.is_late(label)]
    if scenario == "prior-shift":
        late_share = plan.shift_share
    else:  # steady and new-phrasing follow the launch distribution: late items as rare as at launch
        late_share = min(plan.rare_cap * max(len(plan.late_labels), 1) / max(len(pool), 1), 0.05)
    texts, labels = pool["text"], pool["label"]
    requests = []
    for _ in range(count):
        index = rng.choice(late) if late and rng.random() < late_share else rng.choice(usual)
        text = texts[index]
        if scenario == "new-phrasing":
            text = rephrase(text, rng)
        requests.append(SimulatedRequest(text=text, gold=labels[index], source_id=int(pool["id"][index])))
    return requests
