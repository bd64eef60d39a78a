"""`OpenAICompatibleTeacher`: a frontier model through `FrontierClient`, batched under a JSON schema, checked, budgeted and cached on disk."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slm_flywheel.files import atomic_write
from slm_flywheel.models.frontier import FrontierCallFailed, FrontierClient, FrontierReply, answers_format
from slm_flywheel.models.teacher.prompts import (
    RETRY_NOTE,
    TOKENS_FOR_ENVELOPE,
    TOKENS_PER_ANSWER,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_SLOT_KEY,
    system_prompt,
)
from slm_flywheel.models.teacher.records import (
    BUDGET_EXHAUSTED,
    FAILED,
    OK,
    OUT_OF_SCHEMA,
    TeacherItem,
    TeacherLabel,
    TeacherRun,
    check_spec,
    check_unique_ids,
    log_run,
    logger,
)
from slm_flywheel.models.usage import UsageLog

if TYPE_CHECKING:
    from slm_flywheel.models.workload import TaskSpec


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
        check_spec(spec)
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
        self._system_prompt = system_prompt(spec)
        self._response_format = answers_format(spec)
        # A label is at most one token per UTF-8 byte (see `_plan_call`).
        self._label_tokens = max((len(label.encode()) for label in spec.labels), default=0)

    def label(self, items: list[TeacherItem]) -> TeacherRun:
        """Label `items`: answers outside the schema get one more call, then go to review."""
        check_unique_ids(items)
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
        log_run(self.name, run)
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
            {"role": "system", "content": self._system_prompt + (RETRY_NOTE if retry else "")},
            {"role": "user", "content": "Texts, one JSON object per line:\n" + "\n".join(lines)},
        ]
        answer_tokens = TOKENS_FOR_ENVELOPE + sum(self._answer_token_bound(item.text) for _, item in members)
        keyed = {"model": self.model, "messages": messages, "response_format": self._response_format}
        cache_key = hashlib.sha256(json.dumps(keyed, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        # The budget cap needs a bound, not an average: a byte-level BPE token covers at least one
        # byte, so UTF-8 bytes bound the prompt tokens where chars/4 (the English average) does
        # not (digits, other scripts). The schema is counted too, as providers add it to the
        # prompt. Over-estimating only matters for the last calls before the cap, since each
        # reservation is replaced by the call's reported usage as soon as it returns.
        prompt_bound = sum(len(message["content"].encode()) + TOKENS_PER_MESSAGE for message in messages)
        prompt_bound += len(json.dumps(self._response_format).encode())
        return _Call(members, messages, cache_key, prompt_bound, answer_tokens)

    def _answer_token_bound(self, text: str) -> int:
        """The completion-token allowance for one item's answer; slot values are spans of the text."""
        if self.spec.task == "classification":
            return TOKENS_PER_ANSWER + self._label_tokens
        keys = sum(len(slot.encode()) + TOKENS_PER_SLOT_KEY for slot in self.spec.slots)
        return TOKENS_PER_ANSWER + keys + len(text.encode())

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
                state.outcome[index] = (None, f"{FAILED}: {error}", False)
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
        from slm_flywheel.models.constrained import is_valid_extraction  # imports torch: only when extracting

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
