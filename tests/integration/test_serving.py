"""The serving tier on loopback with the tiny model: vLLM LoRA API, hot swap under load, capture."""

import json
import random
import threading

import httpx
import pytest
from datasets import Dataset

from slm_flywheel.config import TrainingConfig
from slm_flywheel.models.training import train_lora
from slm_flywheel.models.workload import build_task_spec
from slm_flywheel.serving.app import create_app
from slm_flywheel.serving.capture import read_samples
from slm_flywheel.serving.server import BackgroundServer, build_state

TOKEN = {"Authorization": "Bearer s3cret"}
TINY = TrainingConfig(max_examples=16, batch_size=8, lora_r=4, lora_alpha=8, bf16=False)


def _adapter(settings, workload, folder, seed):
    spec = build_task_spec(workload, settings.workload(workload), settings.data_dir)
    rng = random.Random(seed)
    if spec.task == "classification":
        labels = [rng.choice(spec.labels) for _ in range(16)]
    else:
        labels = ['{"people": "2"}'] * 16
    data = Dataset.from_dict({"id": list(range(16)), "text": [f"table for 2 number {i}" for i in range(16)], "label": labels})
    out = settings.home.resolve() / "trained" / folder
    train_lora(spec, str(settings.base_model), data, out, TINY.model_copy(update={"seed": seed}))
    return out


@pytest.fixture
def server(serving_settings):
    state = build_state(serving_settings, "replica-a", load_champions=False, bf16=False)
    srv = BackgroundServer(create_app(state))
    with srv:
        yield srv, state, serving_settings
    state.engine.close()
    state.writer.close()


def test_hot_swap_under_concurrent_traffic_loses_nothing(server):
    srv, state, settings = server
    paths = {
        "banking-intent@v1": _adapter(settings, "banking-intent", "b1", 1),
        "banking-intent@v2": _adapter(settings, "banking-intent", "b2", 2),
        "restaurant-slots@v1": _adapter(settings, "restaurant-slots", "r1", 3),
    }
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        for name in ("banking-intent@v1", "restaurant-slots@v1"):
            response = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(paths[name])}, headers=TOKEN)
            assert response.status_code == 200, response.text
        models = {m["id"] for m in client.get("/v1/models").json()["data"]}
        assert {"banking-intent@v1", "restaurant-slots@v1"} <= models

        results, failures = [], []
        switched = threading.Event()

        def traffic(worker: int) -> None:
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                for i in range(12):
                    workload = "banking-intent" if (worker + i) % 2 else "restaurant-slots"
                    request_id = f"w{worker}-{i}"
                    after_switch = switched.is_set()
                    r = c.post(f"/v1/workloads/{workload}/predict", json={"inputs": [f"book a table for {i} people please"]}, headers={"x-request-id": request_id})
                    if r.status_code != 200:
                        failures.append((request_id, r.status_code, r.text))
                        continue
                    results.append((request_id, workload, r.json()["predictions"][0]["version"], after_switch))

        threads = [threading.Thread(target=traffic, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        # Swap banking-intent mid-traffic: load v2, route to it, v1 is unloaded after.
        loaded = client.post("/v1/load_lora_adapter", json={"lora_name": "banking-intent@v2", "lora_path": str(paths["banking-intent@v2"])}, headers=TOKEN)
        assert loaded.status_code == 200, loaded.text
        routed = client.post("/v1/workloads/banking-intent/route", json={"lora_name": "banking-intent@v2"}, headers=TOKEN)
        assert routed.status_code == 200 and routed.json()["previous"] == "banking-intent@v1"
        switched.set()
        for t in threads:
            t.join()

        assert failures == []
        assert len(results) == 48
        for request_id, workload, version, after_switch in results:
            if workload == "restaurant-slots":
                assert version == "restaurant-slots@v1"
            else:
                assert version in {"banking-intent@v1", "banking-intent@v2"}
                if after_switch:
                    assert version == "banking-intent@v2", request_id
        assert client.get("/v1/workloads").json()["workloads"]["banking-intent"] == "banking-intent@v2"
        assert "banking-intent@v1" not in {m["id"] for m in client.get("/v1/models").json()["data"]}

        chat = client.post("/v1/chat/completions", json={"model": "banking-intent", "messages": [{"role": "user", "content": "where is my card"}]})
        assert chat.status_code == 200 and chat.json()["model"] == "banking-intent@v2"
        assert chat.json()["choices"][0]["message"]["content"] in build_task_spec("banking-intent", settings.workload("banking-intent"), settings.data_dir).labels

        metrics = client.get("/metrics").text
        assert 'flywheel_requests_total{adapter="restaurant-slots@v1",workload="restaurant-slots"}' in metrics
        assert "flywheel_request_latency_seconds_bucket" in metrics and "flywheel_capture_dropped" in metrics

    # After shutdown every request is in the sample store, with the version that served it.
    srv.__exit__(None, None, None)
    state.writer.close()
    captured = {}
    for workload in ("banking-intent", "restaurant-slots"):
        frame = read_samples(settings.samples_dir, workload)
        assert set(frame["replica_id"]) == {"replica-a"}
        assert frame["request_id"].is_unique  # made by the server
        captured.update(dict(zip(frame["client_request_id"], frame["adapter_version"])))  # the client's x-request-id, kept
    for request_id, _, version, _ in results:
        assert captured[request_id] == version
    assert state.writer.dropped == 0


def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server, tmp_path):
    srv, state, settings = server
    path = _adapter(settings, "banking-intent", "b1", 1)
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        def load(name, lora_path, headers=TOKEN):
            return client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": lora_path}, headers=headers)

        assert load("banking-intent@v1", str(path), headers={}).status_code == 401
        wrong = load("banking-intent@v1", str(path), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and "wrong bearer token" in wrong.json()["error"]["message"]
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        escaped = load("banking-intent@v1", str(settings.home / ".." / "elsewhere"))
        assert escaped.status_code == 403 and "outside the allowed adapter roots" in escaped.json()["error"]["message"]
        assert load("banking-intent@v1", str(settings.home / "nothing-here")).status_code == 400
        # A folder inside the roots whose weights file is a symlink to a file outside them.
        linked = settings.home / "linked-adapter"
        linked.mkdir()
        (linked / "adapter_config.json").write_bytes((path / "adapter_config.json").read_bytes())
        (outside / "adapter_model.safetensors").write_bytes((path / "adapter_model.safetensors").read_bytes())
        (linked / "adapter_model.safetensors").symlink_to(outside / "adapter_model.safetensors")
        smuggled = load("banking-intent@v1", str(linked))
        assert smuggled.status_code == 403, smuggled.text
        assert "adapter_model.safetensors is a symlink to" in smuggled.json()["error"]["message"]
        assert load("banking-intent@v1", str(path)).status_code == 200
        assert load("banking-intent@v1", str(path)).status_code == 400  # already loaded
        assert load("nope@v1", str(path)).status_code == 400
        ref = load("banking-intent@v9", "models:/banking-intent@champion")
        assert ref.status_code == 404 and "no alias @champion" in ref.json()["error"]["message"]

        predict = "/v1/workloads/banking-intent/predict"
        cases = [
            (client.post(predict, json={"inputs": [""]}), 400, "inputs[0] is empty"),
            (client.post(predict, json={"inputs": []}), 400, "'inputs' is empty"),
            (client.post(predict, json={"inputs": ["x" * 1_000_000]}), 413, "the limit is"),
            (client.post(predict, content=b'{"inputs": ["\xff\xfe"]}', headers={"content-type": "application/json"}), 400, "not valid UTF-8"),
            (client.post(predict, content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
            (client.post(predict, content=b'{"inputs": ["ok \\ud800"]}', headers={"content-type": "application/json"}), 400, "body.inputs[0] holds a lone surrogate (U+D800) at character 3"),
            (client.post(predict, content=b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", headers={"content-type": "application/json"}), 400, "nested too deeply"),
            (client.post(predict, content=b'{"inputs": [[[[' + b"[" * 70 + b"]" * 70 + b"]]]]}", headers={"content-type": "application/json"}), 400, "nested too deeply at body.inputs[0]"),
            (client.post(predict, json={"inputs": ["hi"]}, headers={"x-request-id": "r" * 201}), 400, "x-request-id is 201 characters"),
            (client.post("/v1/unload_lora_adapter", json={"lora_name": "x"}, headers={"Authorization": "Bearer caf\xe9".encode("latin-1")}), 403, "wrong bearer token"),
            (load("banking-intent@v2", str(settings.home) + "/nul\x00byte"), 400, "not a usable path"),
            (client.post(predict, json={"text": "hi"}), 400, "missing field 'inputs'"),
            (client.post(predict, json={"inputs": ["a"] * 65}), 413, "the limit is 64"),
            (client.post("/v1/workloads/nope/predict", json={"inputs": ["hi"]}), 404, "unknown workload 'nope'"),
            (client.post("/v1/workloads/restaurant-slots/predict", json={"inputs": ["hi"]}), 503, "has no adapter loaded"),
            (client.post("/v1/chat/completions", json={"model": "ghost@v1", "messages": [{"role": "user", "content": "hi"}]}), 404, "does not exist"),
            (client.post("/v1/unload_lora_adapter", json={"lora_name": "ghost@v1"}, headers=TOKEN), 404, "is not loaded"),
            (client.post("/v1/unload_lora_adapter", json={"lora_name": "banking-intent@v1"}, headers=TOKEN), 409, "switch first"),
        ]
        for response, status, message in cases:
            assert response.status_code == status, (message, response.text)
            assert message in response.json()["error"]["message"]
        ok = client.post(predict, json={"inputs": ["my card has not arrived"]})
        assert ok.status_code == 200 and ok.json()["predictions"][0]["version"] == "banking-intent@v1"
        assert client.get("/health").json()["status"] == "ok"


def test_simulator_sends_real_requests_and_keeps_gold_apart(server):
    from typer.testing import CliRunner

    from slm_flywheel.app.cli import app
    from slm_flywheel.app.simulate import simulate
    from slm_flywheel.models.teacher import read_ground_truth

    srv, state, settings = server
    path = _adapter(settings, "banking-intent", "b1", 1)
    state.engine.load_adapter("banking-intent@v1", path).result()
    truth = settings.home / "truth.jsonl"
    result = simulate(settings, "banking-intent", "prior-shift", 30, srv.url, truth_path=truth, concurrency=3, seed=5)
    assert (result.sent, result.failed) == (30, 0)
    gold = read_ground_truth(truth)
    assert len(gold) == 30
    rows = [json.loads(line) for line in truth.read_text().splitlines()]
    assert all(row["client_request_id"].startswith("sim-prior-shift-") for row in rows)
    spec = build_task_spec("banking-intent", settings.workload("banking-intent"), settings.data_dir)
    assert set(gold.values()) <= set(spec.labels)

    config_path = settings.home / "cli.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(json_safe(settings)))
    cli = CliRunner().invoke(app, ["simulate", "--workload", "banking-intent", "--requests", "10", "--scenario", "new-phrasing", "--url", srv.url, "--truth", str(truth), "--config", str(config_path)])
    assert cli.exit_code == 0, cli.output
    assert "10 requests (0 failed)" in cli.output
    assert len(read_ground_truth(truth)) == 40
    bad = CliRunner().invoke(app, ["simulate", "--workload", "banking-intent", "--scenario", "sideways", "--url", srv.url, "--config", str(config_path)])
    assert bad.exit_code == 2 and "unknown scenario 'sideways'" in bad.output

    state.writer.close()
    captured = set(read_samples(settings.samples_dir, "banking-intent")["request_id"])
    assert set(read_ground_truth(truth)) <= captured  # every simulated request was captured


def json_safe(settings):
    import json

    return json.loads(settings.model_dump_json())


def test_load_by_registry_reference_resolves_to_the_local_adapter(server):
    from slm_flywheel.tracking import mlflow_client
    from slm_flywheel.models.registry import assign_initial_alias, register_adapter

    srv, state, settings = server
    path = _adapter(settings, "restaurant-slots", "r1", 3)
    client = mlflow_client(settings)
    experiment = client.create_experiment("serving-ref", artifact_location=(settings.home / "artifacts").resolve().as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.log_artifacts(run_id, str(path), "adapter")
    version = register_adapter(client, "restaurant-slots", run_id, {})
    assign_initial_alias(client, "restaurant-slots", version.version)
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        loaded = http.post("/v1/load_lora_adapter", json={"lora_name": "restaurant-slots@v1", "lora_path": "models:/restaurant-slots@champion"}, headers=TOKEN)
        assert loaded.status_code == 200, loaded.text
        models = {m["id"]: m["root"] for m in http.get("/v1/models").json()["data"]}
        assert models["restaurant-slots@v1"] == str(settings.adapters_dir / "restaurant-slots" / "v1")
        answer = http.post("/v1/workloads/restaurant-slots/predict", json={"inputs": ["table for 2 please"]}).json()
        assert answer["predictions"][0]["version"] == "restaurant-slots@v1"


def test_route_refuses_a_non_boolean_unload_previous(server):
    srv, _, _ = server
    route = f"{srv.url}/v1/workloads/banking-intent/route"
    for value in ("false", "true", 0, None):  # "false" used to be read as true
        response = httpx.post(route, json={"lora_name": "banking-intent@v1", "unload_previous": value}, headers=TOKEN, timeout=30)
        assert response.status_code == 400 and "JSON boolean" in response.json()["error"]["message"], (value, response.text)
