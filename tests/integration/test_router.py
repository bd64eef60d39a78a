"""The router in the serving tier, against a real OpenAI-compatible server on loopback that injects
429s, 500s, a timeout and malformed JSON: no request fails, each fallback is flagged and captured,
the circuit breaker opens and closes again, and the router's spend never passes its daily cap
(checked against the server's own log of usage tokens)."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from slm_flywheel.config import load_settings
from slm_flywheel.models.calibration import Calibration, Calibrator
from slm_flywheel.serving.app import create_app
from slm_flywheel.serving.capture import read_samples
from slm_flywheel.serving.router import FRONTIER, UNAVAILABLE
from slm_flywheel.serving.server import BackgroundServer, build_state
from tests.conftest import REPO
from tests.integration.test_serving import TOKEN, _adapter
from tests.integration.test_teacher import KEY, FakeProvider

WORKLOAD = "banking-intent"
PRICE_IN, PRICE_OUT = 300.0, 1200.0  # $ per million tokens: a made-up, expensive model


def _billed_usd(billed: list[tuple[int, int]]) -> float:
    return sum(prompt * PRICE_IN + completion * PRICE_OUT for prompt, completion in billed) / 1e6


def _settings(tmp_path, url, tiny_model_dir, data_dir, tracking_uri, **router):
    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    data.update(home=str(tmp_path / "state"), base_model=str(tiny_model_dir), data_dir=str(data_dir), tracking_uri=tracking_uri)
    data["serving"] = {"admin_token": "s3cret", "capture_flush_records": 1000, "capture_flush_seconds": 3600}
    data["costs"]["frontier_prices"]["gpt-test"] = {"input": PRICE_IN, "output": PRICE_OUT}
    data["workloads"] = {WORKLOAD: data["workloads"][WORKLOAD]}
    workload = data["workloads"][WORKLOAD]
    workload["teacher"] = {"kind": "openai", "base_url": f"{url}/v1", "model": "gpt-test", "batch_size": 8, "max_concurrency": 1, "timeout_s": 0.5, "max_retries": 0}
    workload["router"] = {"mode": "fallback", "timeout_s": 10, **router}
    path = tmp_path / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_settings(path)


@pytest.fixture
def serve(tmp_path, tiny_model_dir, data_dir, tracking_uri, monkeypatch):
    """serve(provider, threshold, **router) -> (client, state): the serving tier with one banking
    adapter whose calibration has `threshold` (None: no validation share reached the target, so
    every answer goes to the frontier; 0: the small model keeps every valid answer)."""
    monkeypatch.setenv("FLYWHEEL_TEACHER_API_KEY", KEY)
    opened = []

    def start(provider, threshold=None, **router):
        frontier = BackgroundServer(provider.app)
        frontier.__enter__()
        settings = _settings(tmp_path, frontier.url, tiny_model_dir, data_dir, tracking_uri, **router)
        adapter = _adapter(settings, WORKLOAD, "b1", 1)
        Calibration(Calibrator("temperature", 1.0), 0.9, threshold, 0.0, None, 0.2, 0.04, 50).save(adapter)
        state = build_state(settings, "replica-a", load_champions=False, bf16=False)
        server = BackgroundServer(create_app(state))
        server.__enter__()
        client = httpx.Client(base_url=server.url, timeout=60)
        opened.append((frontier, server, state, client))
        for path, body in (("/v1/load_lora_adapter", {"lora_name": f"{WORKLOAD}@v1", "lora_path": str(adapter)}), (f"/v1/workloads/{WORKLOAD}/route", {"lora_name": f"{WORKLOAD}@v1"})):
            assert client.post(path, json=body, headers=TOKEN).status_code == 200
        return client, state

    yield start
    for frontier, server, state, client in opened:
        client.close()
        server.__exit__(None, None, None)
        state.engine.close()
        state.writer.close()
        frontier.__exit__(None, None, None)


def _gold(data_dir, count: int) -> dict[str, dict[str, str]]:
    import json

    labels = json.loads((data_dir / "banking77" / "categories.json").read_text())
    return {f"my card from order {i} has not arrived yet": {"label": labels[i % len(labels)]} for i in range(count)}


def _ask(client, text: str) -> dict:
    response = client.post(f"/v1/workloads/{WORKLOAD}/predict", json={"inputs": [text]})
    assert response.status_code == 200, response.text  # the frontier never turns a request into an error
    return response.json()["predictions"][0]


def test_faults_are_served_by_the_small_model_flagged_and_the_breaker_opens_and_closes(serve, data_dir):
    gold = _gold(data_dir, 20)
    texts = list(gold)
    provider = FakeProvider(gold, faults={2: "429", 3: "500", 4: "timeout", 5: "malformed"})
    client, state = serve(provider, breaker_failures=3, breaker_cooldown_s=1.0)
    answers = [_ask(client, text) for text in texts[:5]]
    assert [a["served_by"] for a in answers] == [FRONTIER, UNAVAILABLE, UNAVAILABLE, UNAVAILABLE, UNAVAILABLE]
    assert answers[0]["answer"] == gold[texts[0]]["label"] and answers[0]["route_reason"] == "low_confidence"
    assert all(a["route_reason"].startswith("failed") for a in answers[1:4])
    assert answers[4]["route_reason"] == "breaker_open"  # three failures in a row opened it; no call was made
    assert all(a["answer"] == a["slm_answer"] for a in answers[1:])  # the small model's own answer, flagged
    assert provider.requests == 4
    metrics = client.get("/metrics").text
    assert f'flywheel_frontier_breaker_open{{workload="{WORKLOAD}"}} 1.0' in metrics
    # After the cooldown one trial call goes through (request 5 is malformed: the teacher asks
    # once more), it answers, and the breaker closes.
    deadline, index = time.monotonic() + 30, 5
    while (answer := _ask(client, texts[index]))["route_reason"] == "breaker_open":
        assert time.monotonic() < deadline, "the breaker never let a trial call through"
        index += 1
        time.sleep(0.2)
    assert answer["served_by"] == FRONTIER and answer["answer"] == gold[texts[index]]["label"]
    assert provider.faults_served == ["429", "500", "timeout", "malformed"]
    assert f'flywheel_frontier_breaker_open{{workload="{WORKLOAD}"}} 0.0' in client.get("/metrics").text
    state.writer.flush()
    rows = read_samples(state.writer.root, WORKLOAD)
    assert len(rows) == index + 1
    assert rows["served_by"].tolist()[:5] == [FRONTIER] + [UNAVAILABLE] * 4
    frontier_rows = rows[rows["served_by"] == FRONTIER]
    assert frontier_rows["served_answer"].tolist() == [gold[t]["label"] for t in frontier_rows["input"]]
    assert (frontier_rows["frontier_cost_usd"] > 0).all() and frontier_rows["frontier_latency_ms"].notna().all()


def test_spend_never_passes_the_daily_cap(serve, data_dir):
    gold = _gold(data_dir, 16)
    provider = FakeProvider(gold)
    # At these prices a call costs about $0.13 and reserves $2.81 (twice its worst case: the 77
    # labels' schema is a long prompt), so a few calls fit under the cap and the rest must not.
    cap = 3.5
    client, state = serve(provider, daily_spend_usd=cap)
    answers = [_ask(client, text) for text in gold]
    served = [a["served_by"] for a in answers]
    assert served[0] == FRONTIER and served[-1] == UNAVAILABLE
    assert all(a["route_reason"] == "over_budget" for a in answers if a["served_by"] == UNAVAILABLE)
    assert 0 < _billed_usd(provider.billed) <= cap
    assert state.routers[WORKLOAD].spend.spent_usd == pytest.approx(_billed_usd(provider.billed), rel=1e-9)


def test_audits_ask_the_frontier_after_the_answer_and_land_in_capture(serve, data_dir):
    gold = _gold(data_dir, 6)
    provider = FakeProvider(gold)
    # A cap far above the audits' reservations: a call reserves twice its worst case (~$2.8 here),
    # so under the default $5 two audits in flight at once would leave one unasked (over_budget).
    client, state = serve(provider, threshold=0.0, audit_share=1.0, daily_spend_usd=100.0)
    answers = [_ask(client, text) for text in gold]
    assert {a["served_by"] for a in answers} == {"slm"} and {a["route_reason"] for a in answers} == {"confident"}
    deadline = time.monotonic() + 30  # each row is captured once its audit has returned
    while len(rows := _flushed(state)) < len(gold):
        assert time.monotonic() < deadline, f"{len(rows)} of {len(gold)} audited rows captured"
        time.sleep(0.2)
    assert sorted(rows["audit_answer"]) == sorted(g["label"] for g in gold.values())
    assert rows["served_by"].eq("slm").all() and len(provider.billed) == len(gold)
    # The honesty figures in /metrics: audits counted, the wrong-path rate with its interval
    # (the tiny model's answers against the gold), and the label-free estimate.
    metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in client.get("/metrics").text.splitlines() if line.startswith("flywheel_router")}
    assert metrics[f'flywheel_router_audited{{workload="{WORKLOAD}"}}'] == len(gold)
    wrong = sum(row.answer != row.audit_answer for row in rows.itertuples()) / len(gold)
    estimate, low, high = (metrics[f'flywheel_router_wrong_path_rate{{bound="{bound}",workload="{WORKLOAD}"}}'] for bound in ("estimate", "low", "high"))
    assert estimate == pytest.approx(wrong) and low <= estimate <= high
    assert metrics[f'flywheel_router_label_free_accuracy{{workload="{WORKLOAD}"}}'] == pytest.approx(rows["calibrated_confidence"].mean())
    # Six audits are under `live_min_labels`: the version's threshold is still the one in force.
    assert metrics[f'flywheel_router_threshold{{workload="{WORKLOAD}"}}'] == 0.0


def _flushed(state):
    state.writer.flush()
    return read_samples(state.writer.root, WORKLOAD)


def test_chat_completions_naming_the_workload_are_routed_and_say_who_answered(serve, data_dir):
    gold = _gold(data_dir, 3)
    texts = list(gold)
    provider = FakeProvider(gold)
    client, state = serve(provider)
    chat = {"model": WORKLOAD, "messages": [{"role": "user", "content": texts[0]}]}
    body = client.post("/v1/chat/completions", json=chat).json()
    assert body["choices"][0]["message"]["content"] == gold[texts[0]]["label"]
    assert body["flywheel"]["served_by"] == FRONTIER and body["flywheel"]["route_reason"] == "low_confidence"
    label_tokens = state.engine.tokenizer.encode(" " + gold[texts[0]]["label"], add_special_tokens=False)
    assert body["usage"]["completion_tokens"] == len(label_tokens)
    # Log-probabilities are the small model's: such a request is answered by it, not routed.
    with_logprobs = client.post("/v1/chat/completions", json={**chat, "messages": [{"role": "user", "content": texts[1]}], "logprobs": True}).json()
    assert with_logprobs["flywheel"]["served_by"] == "slm" and with_logprobs["choices"][0]["logprobs"] is not None
    # Naming the adapter (a push's smoke test) answers with it, unrouted.
    named = client.post("/v1/chat/completions", json={**chat, "model": f"{WORKLOAD}@v1"}).json()
    assert named["flywheel"]["served_by"] == "slm"
    assert provider.requests == 1
