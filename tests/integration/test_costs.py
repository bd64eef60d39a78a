"""The cost ledger against a real OpenAI-compatible server on loopback that logs every call's usage:
the ledger's frontier and relabel spend are that log times the configured prices, to the cent."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import yaml

from rich.console import Console
from typer.testing import CliRunner

from slm_flywheel.app import cli
from slm_flywheel.app.cli import app
from slm_flywheel.config import load_settings
from slm_flywheel.models.context import resolve_workload
from slm_flywheel.tracking import mlflow_client
from slm_flywheel.models.teacher import TeacherItem
from slm_flywheel.models.workload import TaskSpec
from slm_flywheel.serving.capture import Sample, SampleWriter
from slm_flywheel.serving.server import BackgroundServer
from slm_flywheel.tasks.costs import compute_ledger, log_ledger_to_mlflow, token_counter
from slm_flywheel.tasks.relabel import build_teacher, label_with_cache
from tests.conftest import REPO
from tests.integration.test_teacher import KEY, FakeProvider

WORKLOAD = "banking-intent"
# A made-up, expensive model, so that the sums run to dollars and a cent is a real difference.
PRICE_IN, PRICE_OUT = 300.0, 1200.0


def _billed_usd(billed: list[tuple[int, int]]) -> float:
    return sum(prompt * PRICE_IN + completion * PRICE_OUT for prompt, completion in billed) / 1e6


@pytest.fixture
def spec(data_dir) -> TaskSpec:
    labels = tuple(json.loads((data_dir / "banking77" / "categories.json").read_text()))
    return TaskSpec(name=WORKLOAD, task="classification", prompt_template="Banking message: {text}\nIntent:", labels=labels)


def _settings(tmp_path, url, tiny_model_dir, data_dir, tracking_uri):
    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    data.update(home=str(tmp_path / "state"), base_model=str(tiny_model_dir), data_dir=str(data_dir), tracking_uri=tracking_uri)
    data["costs"]["frontier_prices"]["gpt-test"] = {"input": PRICE_IN, "output": PRICE_OUT}
    workload = data["workloads"][WORKLOAD]
    workload["teacher"] = {"kind": "openai", "base_url": f"{url}/v1", "model": "gpt-test", "batch_size": 4, "max_concurrency": 2, "timeout_s": 10}
    workload["relabel"] = {"budget_usd": 100.0}
    path = tmp_path / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_settings(path)


def test_ledger_spend_equals_the_servers_usage_log_times_the_prices(tmp_path, spec, tiny_model_dir, data_dir, tracking_uri, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_TEACHER_API_KEY", KEY)
    relabel_items = [TeacherItem(f"req-{i}", f"where is the card I ordered, message {i}") for i in range(22)]
    audit_items = [TeacherItem(f"aud-{i}", f"please audit my transfer number {i}") for i in range(9)]
    gold = {item.text: {"label": spec.labels[i % len(spec.labels)]} for i, item in enumerate(relabel_items + audit_items)}
    # A rate limit (retried: one call), a truncated answer (paid, then asked again) and a label
    # outside the set (paid, then asked again): every paid call must reach the ledger once.
    provider = FakeProvider(gold, faults={2: "429", 4: "malformed"}, wrong={relabel_items[3].text: [{"label": "not_a_label"}]})
    with BackgroundServer(provider.app) as server:
        settings = _settings(tmp_path, server.url, tiny_model_dir, data_dir, tracking_uri)
        labels_dir = settings.state_dir / "teacher-labels" / WORKLOAD
        relabel_run, _ = label_with_cache(build_teacher(resolve_workload(settings, WORKLOAD, spec), "relabel"), relabel_items, labels_dir)
        billed_relabel = list(provider.billed)
        audit_run, _ = label_with_cache(build_teacher(resolve_workload(settings, WORKLOAD, spec), "audit"), audit_items, labels_dir)
        billed_audit = provider.billed[len(billed_relabel) :]
        # A rerun comes from the cache: nothing is paid, nothing is added to the ledger.
        label_with_cache(build_teacher(resolve_workload(settings, WORKLOAD, spec), "relabel"), relabel_items, labels_dir)
    assert len(provider.billed) == len(billed_relabel) + len(billed_audit)
    assert provider.faults_served == ["429", "malformed"] and len(billed_relabel) >= 8  # 6 batches + the retried answers

    # Some served traffic, so the frontier-only counterfactual has requests to price.
    writer = SampleWriter(settings.samples_dir, "replica-1")
    texts = ["I still have not received my card", "how do I top up by bank transfer?", "my card was declined twice"]
    for number, text in enumerate(texts):
        writer.append(Sample(datetime.now(timezone.utc), f"s-{number}", WORKLOAD, text, "card_arrival", True, 0.9, f"{WORKLOAD}@v1", 12.0, "replica-1"))
    writer.close()

    client = mlflow_client(settings)
    ledger = compute_ledger(resolve_workload(settings, WORKLOAD, spec), client)
    total = ledger.total
    assert (total.relabel_calls, total.audit_calls) == (len(billed_relabel), len(billed_audit))
    assert round(total.relabel_usd, 2) == round(_billed_usd(billed_relabel), 2) and total.relabel_usd == pytest.approx(_billed_usd(billed_relabel), rel=1e-9)
    assert round(total.audit_usd, 2) == round(_billed_usd(billed_audit), 2)
    assert round(total.frontier_usd, 2) == round(_billed_usd(provider.billed), 2) and total.frontier_usd == pytest.approx(_billed_usd(provider.billed), rel=1e-9)
    assert total.relabel_usd > 1.0  # dollars, not fractions of a cent
    # The teacher's own accounting (its budget cap) agrees with the ledger.
    assert total.relabel_usd == pytest.approx(relabel_run.cost_usd, rel=1e-9) and total.audit_usd == pytest.approx(audit_run.cost_usd, rel=1e-9)
    assert total.teacher_tokens == sum(prompt + completion for prompt, completion in provider.billed)

    # Frontier-only: every captured request at the measured tokens and the counterfactual model's price.
    count = token_counter(settings)
    prompt_tokens = sum(count([spec.prompt_template.format(text=text) for text in texts]))
    answer_tokens = sum(count(["card_arrival"] * len(texts)))
    price = settings.costs.frontier_prices[settings.costs.frontier_model]
    assert (total.requests, total.slm_served, total.frontier_served) == (3, 3, 0)
    assert (total.prompt_tokens, total.completion_tokens) == (prompt_tokens, answer_tokens)
    assert total.frontier_only_usd == pytest.approx((prompt_tokens * price.input + answer_tokens * price.output) / 1e6)
    assert total.serving_usd == pytest.approx(24 * settings.costs.serving_usd_per_hour * settings.costs.serving_replicas)
    assert total.cost_usd == pytest.approx(total.frontier_usd + total.serving_usd)  # nothing trained here

    # The daily metrics land in MLflow under the same names.
    run = client.get_run(log_ledger_to_mlflow(client, settings, ledger, "test"))
    assert run.data.metrics["relabel_usd"] == pytest.approx(total.relabel_usd)
    assert run.data.metrics["frontier_only_cost_usd"] == pytest.approx(total.frontier_only_usd)
    assert run.data.tags["kind"] == "cost-ledger"

    # `flywheel costs` prints the same ledger: JSON, and a table with the break-even volume.
    config = str(tmp_path / "flywheel.yaml")
    printed = CliRunner().invoke(app, ["costs", WORKLOAD, "--config", config, "--json"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output)["total"]["relabel_usd"] == pytest.approx(total.relabel_usd)
    # A console as wide as the table: the CLI's console fixed its width when it was made (from
    # COLUMNS or the terminal then), which differs between a pytest process and an xdist worker.
    monkeypatch.setattr(cli, "console", Console(width=250))
    table = CliRunner().invoke(app, ["costs", WORKLOAD, "--config", config, "--since", datetime.now(timezone.utc).date().isoformat()])
    assert table.exit_code == 0, table.output
    assert "frontier-only" in table.output and f"${total.relabel_usd:,.2f}" in table.output and "Break-even" in table.output
    bad = CliRunner().invoke(app, ["costs", WORKLOAD, "--config", config, "--since", "yesterday"])
    assert bad.exit_code == 2 and "--since must be a date" in bad.output


def test_a_call_without_usage_is_logged_at_the_worst_case_it_was_charged(tmp_path, spec):
    from slm_flywheel.config import CostConfig, FrontierPrice
    from slm_flywheel.models.costs import build_ledger
    from slm_flywheel.models.frontier import FrontierClient
    from slm_flywheel.models.teacher import OpenAICompatibleTeacher
    from slm_flywheel.models.usage import UsageLog, read_usage

    items = [TeacherItem(f"req-{i}", f"card question {i}") for i in range(6)]
    provider = FakeProvider({item.text: {"label": spec.labels[0]} for item in items}, report_usage=False)
    log = UsageLog(tmp_path / "usage.jsonl", WORKLOAD, "relabel")
    with BackgroundServer(provider.app) as server:
        client = FrontierClient(base_url=f"{server.url}/v1", model="gpt-test", api_key=KEY, price=FrontierPrice(input=PRICE_IN, output=PRICE_OUT))
        teacher = OpenAICompatibleTeacher(spec, client, budget_usd=100.0, batch_size=4, usage_log=log)
        run = teacher.label(items)
    records = read_usage(log.path)
    assert len(records) == run.calls == 2 and all(record.estimated for record in records)
    prices = CostConfig(frontier_prices={"gpt-4o-mini": FrontierPrice(input=0.15, output=0.6), "gpt-test": FrontierPrice(input=PRICE_IN, output=PRICE_OUT)})
    assert build_ledger(WORKLOAD, [], records, [], [], prices).total.relabel_usd == pytest.approx(run.cost_usd, rel=1e-12)
