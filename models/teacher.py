"""The teacher: a frontier LLM that relabels drifted production samples within a hard budget.

Two implementations of one `Teacher` protocol:

* `OpenAICompatibleTeacher` asks a frontier model through `FrontierClient` (`models/frontier.py`,
  the OpenAI SDK: retries, timeouts, Retry-After, any OpenAI-compatible endpoint): several
  samples per call under a strict JSON schema, bounded concurrency, every answer checked against
  the schema and the workload's spec, one more call for answers outside them, cost from the
  reported token usage, a hard per-run budget cap and an on-disk response cache.
* `SimulatedTeacher` answers from the traffic simulator's hidden gold with a controlled rate of
  plausible mistakes, for demos and tests without an API key. Its name and every log line it
  writes say that it is a simulation.

A label that is not `valid` never carries an answer: it goes to human review, not to training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flywheel.files import atomic_write
from models.frontier import FrontierCallFailed, FrontierClient, FrontierReply, answers_format
from models.usage import SIMULATED_MODEL, UsageLog

if TYPE_CHECKING:
    from models.workload import TaskSpec

logger = logging.getLogger("flywheel.teacher")

# `TeacherLabel.reason` values; a failed call's reason is "failed: <what went wrong>".
OK = "ok"
OUT_OF_SCHEMA = "out_of_schema"
BUDGET_EXHAUSTED = "budget_exhausted"
_NO_GROUND_TRUTH = "failed: no ground truth"  # the simulated teacher's item outside the simulator's gold

# Token bounds for one answer's JSON: `{"id": "12", "label": ""},` is about a dozen tokens.
_TOKENS_PER_ANSWER = 16
_TOKENS_PER_SLOT_KEY = 4  # `"name": null, ` around the key itself
_TOKENS_FOR_ENVELOPE = 16  # `{"answers": [...]}`
_TOKENS_PER_MESSAGE = 8  # the chat template's role markers around each message

_RETRY_NOTE = (
    "\nThese texts were answered before outside the schema (a missing id, an answer outside the "
    "allowed values, or a value not copied from the text). Answer every id, strictly within the schema."
)


@dataclass(frozen=True)
class TeacherItem:
    """One production sample to label."""

    item_id: str
    text: str


@dataclass(frozen=True)
class TeacherLabel:
    """The teacher's answer for one item.

    `label` is the intent (classification) or the canonical slot JSON (extraction) and is set
    exactly when `valid`. `reason` is "ok", "out_of_schema", "budget_exhausted" or
    "failed: <why>". `cost_usd` is the item's share of the calls it took part in (0 when cached).
    """

    item_id: str
    label: str | None
    valid: bool
    reason: str
    cost_usd: float
    cached: bool
    teacher: str

    def __post_init__(self) -> None:
        # An invalid item must never carry something that could end up in a training set.
        if self.valid != (self.label is not None):
            raise ValueError(f"item {self.item_id!r}: a label is set exactly when it is valid")


@dataclass(frozen=True)
class TeacherRun:
    """One `Teacher.label` run: one label per input item, in input order, and what it cost."""

    labels: list[TeacherLabel]
    calls: int  # calls sent to the API; the SDK's retries of a call are not counted again
    cached_calls: int  # calls answered from the on-disk cache, for free
    cost_usd: float
    budget_usd: float
    prompt_tokens: int  # paid tokens only: cache hits add none
    completion_tokens: int


class Teacher(Protocol):
    """Labels items within the workload's schema and a per-run budget."""

    name: str

    def label(self, items: list[TeacherItem]) -> TeacherRun: ...


@dataclass(frozen=True)
class _Completion:
    """What a paid call answered; what the on-disk cache keeps."""

    content: str | None  # None when the model refused or sent no text
    usage: tuple[int, int] | None  # (prompt, completion) tokens; None when the server did not say


@dataclass(frozen=True)
class _Call:
    """One planned chat completion; its items are numbered 1..n in the prompt."""

    members: tuple[tuple[int, TeacherItem], ...]  # (position in the run's input, item)
    messages: list[dict[str, str]]
    cache_key: str
    prompt_bound: int  # tokens the prompt can take at most
    answer_tokens: int  # tokens the visible answer can take at most


@dataclass
class _RunState:
    budget_usd: float
    spent_usd: float = 0.0
    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    item_cost: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))
    outcome: dict[int, tuple[str | None, str, bool]] = field(default_factory=dict)  # label, reason, cached


class OpenAICompatibleTeacher:
    """A frontier LLM behind an OpenAI-compatible `/chat/completions` endpoint (`FrontierClient`)."""

    def __init__(
        self,
        spec: TaskSpec,
        client: FrontierClient,
        *,
        budget_usd: float,
        batch_size: int = 8,
        max_concurrency: int = 4,
        cache_dir: Path | None = None,
        usage_log: UsageLog | None = None,
    ):
        """Args:
        client: the frontier model, its transport (retries, timeout) and its price.
        budget_usd: the most one `label` run may spend.
        cache_dir: where responses are kept so a rerun never pays twice; None disables it.
        usage_log: where each paid call's tokens are appended as it is paid (the cost ledger's record).
        """
        _check_spec(spec)
        for name, value in (("batch_size", batch_size), ("max_concurrency", max_concurrency)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if budget_usd < 0:
            raise ValueError(f"budget_usd must not be negative, got {budget_usd}")
        self.spec = spec
        self.client = client
        self.name = f"openai-compatible:{client.model}"
        self.model = client.model
        self.budget_usd = budget_usd
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self.cache_dir = cache_dir
        self.usage_log = usage_log
        self._label_set = frozenset(spec.labels)
        self._system_prompt = _system_prompt(spec)
        self._response_format = answers_format(spec)
        # A label is at most one token per UTF-8 byte (see `_plan_call`).
        self._label_tokens = max((len(label.encode()) for label in spec.labels), default=0)

    def label(self, items: list[TeacherItem]) -> TeacherRun:
        """Label `items`: answers outside the schema get one more call, then go to review."""
        _check_unique_ids(items)
        state = _RunState(budget_usd=self.budget_usd)
        with ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="teacher") as pool:
            rejected = self._run_round(list(enumerate(items)), retry=False, state=state, pool=pool)
            if rejected:
                logger.info("%s: asking again for %d answers outside the schema", self.name, len(rejected))
                # Whatever is still out of schema after this keeps reason out_of_schema.
                self._run_round(rejected, retry=True, state=state, pool=pool)
        labels = []
        for index, item in enumerate(items):
            answer, reason, cached = state.outcome[index]
            cost = state.item_cost[index]
            labels.append(TeacherLabel(item.item_id, answer, answer is not None, reason, cost, cached, self.name))
        run = TeacherRun(
            labels=labels,
            calls=state.calls,
            cached_calls=state.cached_calls,
            cost_usd=state.spent_usd,
            budget_usd=self.budget_usd,
            prompt_tokens=state.prompt_tokens,
            completion_tokens=state.completion_tokens,
        )
        _log_run(self.name, run)
        return run

    def worst_case_cost_usd(self, items: list[TeacherItem]) -> float:
        """The most one call labelling `items` can cost: what the budget cap reserves for it."""
        return self._worst_case_usd(self._plan_call(tuple(enumerate(items)), retry=False))

    def _worst_case_usd(self, call: _Call) -> float:
        # Asked at submission: a client that has switched to reasoning mode allows more tokens.
        return self.client.cost_usd(call.prompt_bound, self.client.output_limit(call.answer_tokens))

    def _plan_call(self, members: tuple[tuple[int, TeacherItem], ...], *, retry: bool) -> _Call:
        lines = [json.dumps({"id": str(n), "text": item.text}, ensure_ascii=False) for n, (_, item) in enumerate(members, 1)]
        messages = [
            {"role": "system", "content": self._system_prompt + (_RETRY_NOTE if retry else "")},
            {"role": "user", "content": "Texts, one JSON object per line:\n" + "\n".join(lines)},
        ]
        answer_tokens = _TOKENS_FOR_ENVELOPE + sum(self._answer_token_bound(item.text) for _, item in members)
        keyed = {"model": self.model, "messages": messages, "response_format": self._response_format}
        cache_key = hashlib.sha256(json.dumps(keyed, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        # The budget cap needs a bound, not an average: a byte-level BPE token covers at least one
        # byte, so UTF-8 bytes bound the prompt tokens where chars/4 (the English average) does
        # not (digits, other scripts). The schema is counted too, as providers add it to the
        # prompt. Over-estimating only matters for the last calls before the cap, since each
        # reservation is replaced by the call's reported usage as soon as it returns.
        prompt_bound = sum(len(message["content"].encode()) + _TOKENS_PER_MESSAGE for message in messages)
        prompt_bound += len(json.dumps(self._response_format).encode())
        return _Call(members, messages, cache_key, prompt_bound, answer_tokens)

    def _answer_token_bound(self, text: str) -> int:
        """The completion-token allowance for one item's answer; slot values are spans of the text."""
        if self.spec.task == "classification":
            return _TOKENS_PER_ANSWER + self._label_tokens
        keys = sum(len(slot.encode()) + _TOKENS_PER_SLOT_KEY for slot in self.spec.slots)
        return _TOKENS_PER_ANSWER + keys + len(text.encode())

    def _run_round(
        self, members: list[tuple[int, TeacherItem]], *, retry: bool, state: _RunState, pool: ThreadPoolExecutor
    ) -> list[tuple[int, TeacherItem]]:
        """Label `members` in batches, `max_concurrency` calls at a time; returns the rejected ones."""
        batches = (tuple(members[i : i + self.batch_size]) for i in range(0, len(members), self.batch_size))
        pending = deque(self._plan_call(batch, retry=retry) for batch in batches)
        in_flight: dict[Future[FrontierReply], tuple[_Call, float]] = {}  # the call and what it reserved
        rejected: list[tuple[int, TeacherItem]] = []
        while pending or in_flight:
            while pending and len(in_flight) < self.max_concurrency:
                call = pending[0]
                cached = self._cache_get(call.cache_key)
                reserved = sum(worst for _, worst in in_flight.values())
                worst = self._worst_case_usd(call)
                if cached is not None:
                    pending.popleft()
                    state.cached_calls += 1
                    rejected += self._accept(call, cached, cost=0.0, cached=True, state=state)
                elif state.spent_usd + reserved + worst <= state.budget_usd:
                    pending.popleft()
                    state.calls += 1
                    future = pool.submit(self.client.complete, call.messages, self._response_format, call.answer_tokens)
                    in_flight[future] = (call, worst)
                elif in_flight:
                    break  # calls in flight usually cost less than reserved: look again when one returns
                else:
                    pending.popleft()
                    for index, _ in call.members:
                        state.outcome[index] = (None, BUDGET_EXHAUSTED, False)
            if not in_flight:
                continue
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                call, worst = in_flight.pop(future)
                rejected += self._settle(call, worst, future, state)
        return sorted(rejected, key=lambda member: member[0])  # a stable retry prompt keeps reruns cached

    def _settle(self, call: _Call, worst: float, future: Future[FrontierReply], state: _RunState) -> list[tuple[int, TeacherItem]]:
        """Pay for a returned call (once), cache it and record its answers; returns the rejected members."""
        try:
            reply = future.result()
        except FrontierCallFailed as error:
            logger.warning("%s: a call for %d items failed: %s", self.name, len(call.members), error)
            for index, _ in call.members:
                state.outcome[index] = (None, f"failed: {error}", False)
            return []
        if reply.usage is None:
            # A completion happened but its price is unknown: charge the most it could have cost.
            cost = self.client.cost_usd(call.prompt_bound, reply.output_limit)
            logger.warning("%s: a response without usage; charged its worst case $%.6f", self.name, cost)
            if self.usage_log is not None:
                self.usage_log.record(self.model, call.prompt_bound, reply.output_limit, len(call.members), estimated=True)
        else:
            prompt_tokens, completion_tokens = reply.usage
            state.prompt_tokens += prompt_tokens
            state.completion_tokens += completion_tokens
            cost = self.client.cost_usd(prompt_tokens, completion_tokens)
            if self.usage_log is not None:
                self.usage_log.record(self.model, prompt_tokens, completion_tokens, len(call.members))
            if cost > worst:
                logger.warning("%s: a call cost $%.6f, over its worst case $%.6f", self.name, cost, worst)
        state.spent_usd += cost
        completion = _Completion(reply.content, reply.usage)
        self._cache_put(call.cache_key, completion)
        return self._accept(call, completion, cost=cost, cached=False, state=state)

    def _accept(
        self, call: _Call, completion: _Completion, *, cost: float, cached: bool, state: _RunState
    ) -> list[tuple[int, TeacherItem]]:
        """Record the call's valid answers and cost shares; returns the members answered out of schema."""
        texts = {str(n): item.text for n, (_, item) in enumerate(call.members, 1)}
        labels, problems = self._validated_answers(completion.content, texts)
        rejected = []
        for n, (index, item) in enumerate(call.members, 1):
            state.item_cost[index] += cost / len(call.members)
            answer = labels.get(str(n))
            if answer is None:
                rejected.append((index, item))
            state.outcome[index] = (answer, OK if answer is not None else OUT_OF_SCHEMA, cached)
        if problems:
            shown = "; ".join(problems[:5])
            logger.warning("%s: %d of %d answers out of schema: %s", self.name, len(rejected), len(call.members), shown)
        return rejected

    def _validated_answers(self, content: str | None, texts: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        """Labels by prompt id for the answers inside the schema and the spec, and what was wrong."""
        try:
            parsed = json.loads(content) if content is not None else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or set(parsed) != {"answers"} or not isinstance(parsed["answers"], list):
            return {}, [f"content is not an answers object: {str(content)[:80]!r}"]
        entries = [entry for entry in parsed["answers"] if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
        problems = [] if len(entries) == len(parsed["answers"]) else ["answers that are not objects with a string id"]
        times_answered = Counter(entry["id"] for entry in entries)
        labels: dict[str, str] = {}
        for entry in entries:
            answer_id = entry["id"]
            if answer_id not in texts:
                problems.append(f"an answer for an id that was not asked: {answer_id!r}")
            elif times_answered[answer_id] > 1:
                problems.append(f"id {answer_id} answered {times_answered[answer_id]} times")
            else:
                label, problem = self._label_from_answer(entry, texts[answer_id])
                if label is None:
                    problems.append(f"id {answer_id}: {problem}")
                else:
                    labels[answer_id] = label
        missing = [answer_id for answer_id in texts if answer_id not in times_answered]
        if missing:
            problems.append(f"no answer for ids {', '.join(missing)}")
        return labels, problems

    def _label_from_answer(self, entry: dict[str, Any], text: str) -> tuple[str | None, str]:
        if self.spec.task == "classification":
            if set(entry) != {"id", "label"}:
                return None, f"keys {sorted(entry)}"
            label = entry["label"]
            if not isinstance(label, str) or label not in self._label_set:
                return None, f"label {label!r} is not in the label set"
            return label, ""
        from models.constrained import is_valid_extraction  # imports torch: only when extracting

        if set(entry) != {"id", "slots"} or not isinstance(entry["slots"], dict):
            return None, f"not an id and a slots object: {entry!r:.80}"
        answer = {name: value for name, value in entry["slots"].items() if value is not None}  # null: not mentioned
        if not is_valid_extraction(answer, self.spec.slots, text):
            return None, f"slots {answer!r:.80} are not schema slots with spans of the text"
        return self.spec.answer_to_label(answer), ""

    def _cache_get(self, key: str) -> _Completion | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.json"
        try:
            stored = json.loads(path.read_text())
            usage = stored["usage"]
            return _Completion(stored["content"], None if usage is None else (int(usage[0]), int(usage[1])))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            logger.warning("%s: ignoring the unreadable cache entry %s: %s", self.name, path, error)
            return None

    def _cache_put(self, key: str, completion: _Completion) -> None:
        if self.cache_dir is None:
            return
        stored = {"model": self.model, "content": completion.content, "usage": completion.usage}
        # Whole or not at all, so an interrupted run never leaves half an entry behind.
        atomic_write(self.cache_dir / f"{key}.json", json.dumps(stored, ensure_ascii=False))


def ground_truth_path(home: Path) -> Path:
    """Where the traffic simulator appends each request's hidden gold answer."""
    return Path(home).resolve() / "simulator" / "ground_truth.jsonl"


def read_ground_truth(path: Path) -> dict[str, str]:
    """request id -> gold answer (for the simulated teacher and report scorekeeping only)."""
    if not path.exists():
        return {}
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {row["request_id"]: row["gold"] for row in rows}


class SimulatedTeacher:
    """A stand-in teacher answering from the simulator's hidden gold, with plausible mistakes.

    No LLM is called. With probability `error_rate` an answer is wrong the way a strong model is
    wrong: a confusable intent, or a dropped or misplaced slot. Costs and the budget cap work as
    for the real teacher, at `price_per_item_usd` per answered item.
    """

    def __init__(
        self,
        spec: TaskSpec,
        ground_truth: dict[str, str],
        *,
        error_rate: float = 0.05,
        price_per_item_usd: float = 0.0005,
        latency_s: float = 0.0,
        seed: int = 0,
        budget_usd: float = 5.0,
        usage_log: UsageLog | None = None,
    ):
        _check_spec(spec)
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
        _check_unique_ids(items)
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


def _check_spec(spec: TaskSpec) -> None:
    if spec.task == "classification" and not spec.labels:
        raise ValueError(f"workload {spec.name!r}: a classification teacher needs `labels`")
    if spec.task == "extraction" and not spec.slots:
        raise ValueError(f"workload {spec.name!r}: an extraction teacher needs `slots`")


def _check_unique_ids(items: list[TeacherItem]) -> None:
    repeated = [item_id for item_id, count in Counter(item.item_id for item in items).items() if count > 1]
    if repeated:
        raise ValueError(f"item ids must be unique within a run; repeated: {repeated[:5]}")


def _system_prompt(spec: TaskSpec) -> str:
    if spec.task == "classification":
        return (
            f"You label customer messages for the {spec.name!r} workload. For each text, choose the one "
            f"intent that fits best from this label set: {', '.join(spec.labels)}.\n"
            'Answer with JSON only: {"answers": [{"id": "<the text\'s id>", "label": "<a label from the set>"}]}, '
            "one answer per id."
        )
    return (
        f"You extract slots from customer messages for the {spec.name!r} workload. For each text, fill "
        f"these slots where the text mentions them: {', '.join(spec.slots)}.\n"
        "Copy every value verbatim from the text: an exact substring, same spelling, case and digits, "
        "never normalized or paraphrased. Use null for a slot the text does not mention.\n"
        'Answer with JSON only: {"answers": [{"id": "<the text\'s id>", "slots": {"<slot>": "<value>" or null}}]}, '
        "one answer per id."
    )


def _log_run(name: str, run: TeacherRun) -> None:
    reasons = Counter("failed" if label.reason.startswith("failed") else label.reason for label in run.labels)
    logger.info(
        "%s: %d of %d items labelled, %d out of schema, %d over budget, %d failed; %d calls (+%d cached), $%.4f of $%.2f",
        name,
        reasons[OK],
        len(run.labels),
        reasons[OUT_OF_SCHEMA],
        reasons[BUDGET_EXHAUSTED],
        reasons["failed"],
        run.calls,
        run.cached_calls,
        run.cost_usd,
        run.budget_usd,
    )
