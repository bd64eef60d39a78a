"""The OpenAI-compatible teacher against a real chat-completions server on loopback that misbehaves
on purpose: rate limits, server errors, a timeout, malformed content, missing ids, out-of-set labels
and slot values that are not spans of the input."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from slm_flywheel.config import FrontierPrice
from slm_flywheel.models.frontier import FrontierClient
from slm_flywheel.models.teacher import BUDGET_EXHAUSTED, OK, OUT_OF_SCHEMA, OpenAICompatibleTeacher, TeacherItem
from slm_flywheel.models.workload import TaskSpec
from slm_flywheel.serving.server import BackgroundServer as LoopbackServer

KEY = "sk-test"
PRICE_IN, PRICE_OUT = 2.5, 10.0  # USD per million tokens, gpt-4o-like
SLOTS = ("people", "time", "date", "first_name", "last_name")


class FakeProvider:
    """A chat-completions endpoint answering from gold payloads keyed by input text, with faults.

    Args:
        gold: text -> the answer payload without its id, e.g. {"label": "card_arrival"}.
        faults: request number (from 1) -> "429", "429-wait" (Retry-After: 3), "500", "timeout" or "malformed".
        wrong: text -> payloads given instead of the gold, one per time the text is asked.
        omit_once: texts whose answer is left out the first time they are asked.
        status: answer every request with this error status instead.
        delay_s: time each answered request takes, so that concurrent calls overlap.
        report_usage: False leaves `usage` out of the responses, as some gateways do.
        reasoning: refuse `temperature` and `max_tokens` with OpenAI's 400, as reasoning models do.
    """

    def __init__(
        self,
        gold: dict[str, dict[str, Any]],
        *,
        faults: dict[int, str] | None = None,
        wrong: dict[str, list[dict[str, Any]]] | None = None,
        omit_once: frozenset[str] = frozenset(),
        status: int | None = None,
        delay_s: float = 0.0,
        report_usage: bool = True,
        reasoning: bool = False,
    ):
        self.gold = gold
        self.faults = faults or {}
        self.wrong = wrong or {}
        self.omit_once = omit_once
        self.status = status
        self.delay_s = delay_s
        self.report_usage = report_usage
        self.reasoning = reasoning
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.faults_served: list[str] = []
        self.billed: list[tuple[int, int]] = []  # usage of 200 responses with a readable body
        self.asked: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.complete)

    async def complete(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            with self.lock:
                self.requests += 1
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        body = await request.json()
        with self.lock:
            self.requests += 1
            number = self.requests
            self.bodies.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(body, self.faults.get(number))
        finally:
            with self.lock:
                self.in_flight -= 1

    async def _answer(self, body: dict[str, Any], fault: str | None) -> JSONResponse:
        if self.status is not None:
            return JSONResponse({"error": {"message": "unavailable"}}, status_code=self.status)
        refused = [name for name in ("max_tokens", "temperature") if name in body]
        if self.reasoning and refused:
            message = f"Unsupported parameter: '{refused[0]}' is not supported with this model."
            error = {"message": message, "type": "invalid_request_error", "param": refused[0], "code": "unsupported_parameter"}
            return JSONResponse({"error": error}, status_code=400)
        if fault is not None and fault != "malformed":
            self.faults_served.append(fault)
        if fault == "429":
            return JSONResponse({"error": {"message": "rate limited"}}, status_code=429, headers={"Retry-After": "0"})
        if fault == "429-wait":
            return JSONResponse({"error": {"message": "rate limited"}}, status_code=429, headers={"Retry-After": "3"})
        if fault == "500":
            return JSONResponse({"error": {"message": "internal error"}}, status_code=500)
        if fault == "timeout":
            await asyncio.sleep(1.0)  # the client gives up after 0.5 s
            return JSONResponse({"error": {"message": "too late"}}, status_code=504)
        await asyncio.sleep(self.delay_s)
        answers = []
        for line in body["messages"][-1]["content"].splitlines():
            if not line.startswith("{"):
                continue
            asked = json.loads(line)
            text = asked["text"]
            with self.lock:
                times = self.asked[text]
                self.asked[text] += 1
            if text in self.omit_once and times == 0:
                continue
            wrong = self.wrong.get(text, [])
            answers.append({"id": asked["id"], **(wrong[times] if times < len(wrong) else self.gold[text])})
        content = json.dumps({"answers": answers})
        if fault == "malformed":
            self.faults_served.append(fault)
            content = content[: len(content) // 2]  # cut off mid-answer, as a truncated generation is
        completion = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
        if self.report_usage:
            prompt_chars = sum(len(message["content"]) for message in body["messages"])
            usage = {"prompt_tokens": prompt_chars // 4 + 7, "completion_tokens": len(content) // 4 + 1}
            completion["usage"] = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
            with self.lock:
                self.billed.append((usage["prompt_tokens"], usage["completion_tokens"]))
        return JSONResponse(completion)

    def billed_usd(self) -> float:
        return sum(prompt * PRICE_IN + completion * PRICE_OUT for prompt, completion in self.billed) / 1e6


@pytest.fixture(scope="module")
def banking(data_dir) -> TaskSpec:
    labels = tuple(json.loads((data_dir / "banking77" / "categories.json").read_text()))
    return TaskSpec(name="banking-intent", task="classification", prompt_template="Banking message: {text}\nIntent:", labels=labels)


def _items(spec: TaskSpec, count: int) -> tuple[list[TeacherItem], dict[str, str]]:
    """Items with distinct texts and their gold labels, spread over the label set."""
    items = [TeacherItem(f"req-{i}", f"customer message number {i} about my account") for i in range(count)]
    return items, {item.item_id: spec.labels[(7 * i) % len(spec.labels)] for i, item in enumerate(items)}


def _gold_payloads(items: list[TeacherItem], gold: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {item.text: {"label": gold[item.item_id]} for item in items}


def _teacher(spec: TaskSpec, url: str, **overrides: Any) -> OpenAICompatibleTeacher:
    client_options: dict[str, Any] = dict(
        base_url=f"{url}/v1", model="gpt-test", api_key=KEY, price=FrontierPrice(input=PRICE_IN, output=PRICE_OUT), max_retries=3, timeout_s=0.5,
        reasoning=False, reasoning_tokens=1024,
    )
    options: dict[str, Any] = dict(budget_usd=1.0, batch_size=4, max_concurrency=3, cache_dir=None)
    for name, value in overrides.items():
        (client_options if name in client_options else options)[name] = value
    return OpenAICompatibleTeacher(spec, FrontierClient(**client_options), **options)


def test_faulty_provider_run_completes_validated_paid_once_and_cached(banking, tmp_path):
    items, gold = _items(banking, 24)
    text = {item.item_id: item.text for item in items}
    provider = FakeProvider(
        _gold_payloads(items, gold),
        faults={1: "429", 2: "500", 3: "timeout", 5: "malformed"},
        wrong={
            text["req-5"]: [{"label": "card_arrivals"}] * 10,  # out of the set every time it is asked
            text["req-11"]: [{"label": "Card_Arrival"}],  # out of the set once
            text["req-20"]: [{"label": 42}],  # not even a string, once
        },
        omit_once=frozenset({text["req-17"]}),
    )
    with LoopbackServer(provider.app) as server:
        run = _teacher(banking, server.url, cache_dir=tmp_path / "cache").label(items)
        requests_after_first_run = provider.requests
        rerun = _teacher(banking, server.url, cache_dir=tmp_path / "cache").label(items)

    # The run completes, every item accounted for in input order.
    assert [label.item_id for label in run.labels] == [item.item_id for item in items]
    assert sorted(provider.faults_served) == ["429", "500", "malformed", "timeout"]
    by_id = {label.item_id: label for label in run.labels}
    # No out-of-set label is ever valid; the valid ones are exactly the server's gold.
    for label in run.labels:
        if label.valid:
            assert label.label in banking.labels and label.label == gold[label.item_id] and label.reason == OK
    always_bad = by_id["req-5"]
    assert (always_bad.valid, always_bad.label, always_bad.reason) == (False, None, OUT_OF_SCHEMA)
    assert all(label.valid for label in run.labels if label.item_id != "req-5")  # the retry rescued the rest

    # Each answered call is paid exactly once, from the usage the server reported.
    assert run.cost_usd == pytest.approx(provider.billed_usd(), rel=1e-12)
    assert run.prompt_tokens == sum(prompt for prompt, _ in provider.billed)
    assert run.completion_tokens == sum(completion for _, completion in provider.billed)
    assert sum(label.cost_usd for label in run.labels) == pytest.approx(run.cost_usd, rel=1e-9)
    assert run.calls == len(provider.billed) and run.cached_calls == 0
    assert run.cost_usd <= run.budget_usd == 1.0
    assert requests_after_first_run == len(provider.billed) + 3  # 429, 500 and the timeout were retried

    # The request constrains answers to the label set, a batch of numbered texts at a time.
    first = provider.bodies[0]
    schema = first["response_format"]["json_schema"]
    assert first["response_format"]["type"] == "json_schema" and schema["strict"] is True
    assert schema["schema"]["properties"]["answers"]["items"]["properties"]["label"]["enum"] == list(banking.labels)
    assert all(label in first["messages"][0]["content"] for label in banking.labels)
    assert max(body["messages"][-1]["content"].count('{"id"') for body in provider.bodies) == 4

    # The rerun is answered from the cache alone: no request, no cost, the same labels.
    assert provider.requests == requests_after_first_run
    assert (rerun.calls, rerun.cost_usd, rerun.prompt_tokens) == (0, 0.0, 0)
    assert rerun.cached_calls == run.calls
    assert [(label.label, label.reason) for label in rerun.labels] == [(label.label, label.reason) for label in run.labels]
    assert all(label.cached and label.cost_usd == 0.0 for label in rerun.labels)


def test_concurrency_is_bounded(banking):
    items, gold = _items(banking, 16)
    provider = FakeProvider(_gold_payloads(items, gold), delay_s=0.1)
    with LoopbackServer(provider.app) as server:
        run = _teacher(banking, server.url, batch_size=2, max_concurrency=3).label(items)
    assert all(label.valid for label in run.labels)
    assert provider.requests == 8
    assert 2 <= provider.max_in_flight <= 3


def test_tight_budget_labels_fewer_items_and_never_overspends(banking):
    items, gold = _items(banking, 24)
    provider = FakeProvider(_gold_payloads(items, gold))
    with LoopbackServer(provider.app) as server:
        probe = _teacher(banking, server.url)
        worst = max(probe.worst_case_cost_usd(items[i : i + 4]) for i in range(0, 24, 4))
        budget = 1.5 * worst  # room for one call in flight at a time, a few in all
        run = _teacher(banking, server.url, budget_usd=budget, max_concurrency=2).label(items)

    labelled = [label for label in run.labels if label.valid]
    exhausted = [label for label in run.labels if label.reason == BUDGET_EXHAUSTED]
    assert 0 < len(labelled) < len(items)
    assert len(labelled) + len(exhausted) == len(items)
    assert all(label.label is None and label.cost_usd == 0.0 for label in exhausted)
    assert all(label.label == gold[label.item_id] for label in labelled)
    assert run.cost_usd == pytest.approx(provider.billed_usd(), rel=1e-12)
    assert run.cost_usd <= budget
    # It stopped because the next call might have overspent, not before.
    assert budget - run.cost_usd < worst
    assert provider.requests == run.calls


def test_budget_below_one_call_sends_nothing(banking):
    items, gold = _items(banking, 8)
    provider = FakeProvider(_gold_payloads(items, gold))
    with LoopbackServer(provider.app) as server:
        teacher = _teacher(banking, server.url)
        run = _teacher(banking, server.url, budget_usd=0.5 * teacher.worst_case_cost_usd(items[:4])).label(items)
    assert provider.requests == 0
    assert run.cost_usd == 0.0 and run.calls == 0
    assert {label.reason for label in run.labels} == {BUDGET_EXHAUSTED}


def test_response_without_usage_is_charged_its_worst_case(banking):
    items, gold = _items(banking, 8)
    provider = FakeProvider(_gold_payloads(items, gold), report_usage=False)
    with LoopbackServer(provider.app) as server:
        teacher = _teacher(banking, server.url)
        run = teacher.label(items)
    assert all(label.valid for label in run.labels)
    expected = teacher.worst_case_cost_usd(items[:4]) + teacher.worst_case_cost_usd(items[4:])
    assert run.cost_usd == pytest.approx(expected, rel=1e-12)
    assert (run.prompt_tokens, run.completion_tokens) == (0, 0)


def test_calls_failing_after_retries_are_invalid_and_free(banking):
    items, gold = _items(banking, 8)
    provider = FakeProvider(_gold_payloads(items, gold), status=503)
    with LoopbackServer(provider.app) as server:
        run = _teacher(banking, server.url, max_retries=2).label(items)
    assert provider.requests == 2 * 3  # two batches, one try and two retries each
    assert all(not label.valid and label.label is None for label in run.labels)
    assert all(label.reason.startswith("failed: HTTP 503") and "after 3 attempts" in label.reason for label in run.labels)
    assert run.cost_usd == 0.0 and run.prompt_tokens == 0


def test_client_errors_are_not_retried(banking):
    items, gold = _items(banking, 8)
    provider = FakeProvider(_gold_payloads(items, gold))
    with LoopbackServer(provider.app) as server:
        run = _teacher(banking, server.url, api_key="sk-wrong").label(items)
    assert provider.requests == 2
    assert all(label.reason.startswith("failed: HTTP 401") for label in run.labels)


def test_retry_after_is_honoured_over_the_backoff(banking, monkeypatch):
    import openai._base_client

    items, gold = _items(banking, 4)
    provider = FakeProvider(_gold_payloads(items, gold), faults={1: "429-wait"})
    waits: list[float] = []
    # What the client chose to wait, not how long a clock ran: the SDK's `time` (sleep recorded,
    # not slept), not the server's.
    monkeypatch.setattr(openai._base_client, "time", SimpleNamespace(sleep=waits.append, time=time.time))
    with LoopbackServer(provider.app) as server:
        run = _teacher(banking, server.url).label(items)
    assert provider.faults_served == ["429-wait"]
    assert all(label.valid for label in run.labels)
    assert waits == [3.0]  # the server's Retry-After, where the SDK's own backoff would wait under 0.5 s


def test_api_key_comes_from_the_environment(banking, monkeypatch):
    monkeypatch.delenv("FLYWHEEL_TEACHER_API_KEY", raising=False)
    with pytest.raises(ValueError, match="FLYWHEEL_TEACHER_API_KEY"):
        _teacher(banking, "http://127.0.0.1:1", api_key=None)
    items, gold = _items(banking, 4)
    provider = FakeProvider(_gold_payloads(items, gold))
    monkeypatch.setenv("FLYWHEEL_TEACHER_API_KEY", KEY)
    with LoopbackServer(provider.app) as server:
        run = _teacher(banking, server.url, api_key=None).label(items)
    assert all(label.valid for label in run.labels)


def test_extraction_values_must_be_spans_of_the_input():
    spec = TaskSpec(name="restaurant-slots", task="extraction", prompt_template="Restaurant booking message: {text}\nSlots as JSON:", slots=SLOTS)
    nulls = dict.fromkeys(SLOTS)
    texts = {
        "full": "Table for 4 at 7pm tomorrow, name Ann Lee",
        "partial": "book a table for two on friday",
        "not_a_span": "dinner for four people at 8",
        "unknown_slot_once": "lunch at noon for 3",
        "empty_value_once": "a table please",
    }
    gold = {
        texts["full"]: {"slots": {"people": "4", "time": "7pm", "date": "tomorrow", "first_name": "Ann", "last_name": "Lee"}},
        texts["partial"]: {"slots": {**nulls, "people": "two", "date": "friday"}},  # strict style: nulls
        texts["not_a_span"]: {"slots": {"people": "four", "time": "8"}},
        texts["unknown_slot_once"]: {"slots": {"people": "3", "time": "noon"}},
        texts["empty_value_once"]: {"slots": {}},
    }
    wrong = {
        texts["not_a_span"]: [{"slots": {"people": "4", "time": "8"}}] * 10,  # "4" is not in the text
        texts["unknown_slot_once"]: [{"slots": {"guests": "3"}}],
        texts["empty_value_once"]: [{"slots": {"people": ""}}],
    }
    items = [TeacherItem(key, text) for key, text in texts.items()]
    provider = FakeProvider(gold, wrong=wrong)
    with LoopbackServer(provider.app) as server:
        run = _teacher(spec, server.url).label(items)

    by_id = {label.item_id: label for label in run.labels}
    assert by_id["full"].label == '{"people": "4", "time": "7pm", "date": "tomorrow", "first_name": "Ann", "last_name": "Lee"}'
    assert by_id["partial"].label == '{"people": "two", "date": "friday"}'
    assert by_id["unknown_slot_once"].label == '{"people": "3", "time": "noon"}'
    assert by_id["empty_value_once"].label == "{}"
    assert (by_id["not_a_span"].valid, by_id["not_a_span"].label, by_id["not_a_span"].reason) == (False, None, OUT_OF_SCHEMA)
    slot_schema = provider.bodies[0]["response_format"]["json_schema"]["schema"]["properties"]["answers"]["items"]["properties"]["slots"]
    assert set(slot_schema["properties"]) == set(SLOTS) and slot_schema["additionalProperties"] is False
    assert "verbatim" in provider.bodies[0]["messages"][0]["content"]


@pytest.mark.parametrize("configured", [False, True])
def test_reasoning_models_get_max_completion_tokens_and_no_temperature(banking, configured):
    items, gold = _items(banking, 8)
    provider = FakeProvider(_gold_payloads(items, gold), reasoning=True)
    with LoopbackServer(provider.app) as server:
        teacher = _teacher(banking, server.url, max_concurrency=1, reasoning=configured, reasoning_tokens=500)
        run = teacher.label(items)
    assert all(label.label == gold[label.item_id] for label in run.labels)
    # Unconfigured, the first call is refused (400, not retried) and the client switches for good.
    refused = 0 if configured else 1
    assert provider.requests == 2 + refused and teacher.client.reasoning
    answered = provider.bodies[refused:]
    assert all("temperature" not in body and "max_tokens" not in body for body in answered)
    call = teacher._plan_call(tuple(enumerate(items[:4])), retry=False)
    assert answered[0]["max_completion_tokens"] == call.answer_tokens + 500
    # The refused call costs nothing; the budget cap reserves the reasoning allowance too.
    assert run.cost_usd == pytest.approx(provider.billed_usd(), rel=1e-12) and run.calls == 2
    assert teacher.worst_case_cost_usd(items[:4]) == pytest.approx(teacher.client.cost_usd(call.prompt_bound, call.answer_tokens + 500))
