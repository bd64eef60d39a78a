"""The routed version answers from a merged copy of the base weights: the same answers and
confidences as its unmerged, named adapter; a swap moves the route to the new merged copy and
drops the old one; a load that fails changes nothing."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pytest
import torch

from slm_flywheel.config import load_settings
from slm_flywheel.models.inference import load_model
from slm_flywheel.models.workload import build_task_spec, load_splits
from slm_flywheel.serving.engine import AdapterEngine
from tests.conftest import REPO

WORKLOAD = "banking-intent"


def _random_adapter(tiny_model_dir: Path, folder: Path, seed: int) -> Path:
    """A LoRA adapter of random, non-zero weights on every linear layer, saved as a push delivers it."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(load_model(str(tiny_model_dir), None, bf16=False), config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def setup(tiny_model_dir, data_dir, tmp_path_factory):
    # Classification only: the tiny model's extraction gives up before its first token, so it would
    # compare nothing; bench/serve.py checks extraction's merged answers on the real model.
    workload = load_settings(REPO / "flywheel.yaml", data_dir=data_dir).workload(WORKLOAD)
    spec = build_task_spec(WORKLOAD, workload, data_dir)
    texts = list(load_splits(spec, workload, data_dir)["golden"]["text"][:24])
    folder = tmp_path_factory.mktemp("adapters")
    adapters = {version: _random_adapter(tiny_model_dir, folder / f"v{version}", seed) for version, seed in ((1, 3), (2, 4))}
    return spec, texts, adapters


def _answers(engine: AdapterEngine, texts: list[str], adapter: str | None = None) -> list[tuple]:
    return _rows(engine.predict(WORKLOAD, texts, adapter=adapter).result(timeout=120))


def _rows(served: list) -> list[tuple]:
    return [(s.adapter, s.prediction.answer, s.prediction.valid, s.prediction.tokens, s.prediction.confidence, s.prediction.token_logprobs) for s in served]


def _same(routed: list[tuple], named: list[tuple]) -> None:
    assert len(routed) == len(named)
    for mine, theirs in zip(routed, named):
        assert mine[:4] == theirs[:4]  # adapter, answer, valid, tokens
        assert mine[4] == pytest.approx(theirs[4], abs=1e-5)  # fp32: only rounding differs
        assert mine[5] == pytest.approx(theirs[5], abs=1e-5)


def test_the_routed_merged_copy_answers_as_the_named_adapter_and_a_swap_moves_it(setup, tiny_model_dir):
    spec, texts, adapters = setup
    engine = AdapterEngine(str(tiny_model_dir), {WORKLOAD: spec}, bf16=False)
    try:
        engine.load_adapter(f"{WORKLOAD}@v1", adapters[1]).result(timeout=120)
        assert set(engine._merged) == {f"{WORKLOAD}@v1"}
        v1 = _answers(engine, texts, f"{WORKLOAD}@v1")  # named: the unmerged peft path
        _same(_answers(engine, texts), v1)

        engine.load_adapter(f"{WORKLOAD}@v2", adapters[2]).result(timeout=120)
        v2 = _answers(engine, texts, f"{WORKLOAD}@v2")
        assert [a[1:4] for a in v1] != [a[1:4] for a in v2]  # two different models
        _same(_answers(engine, texts), v1)  # loaded is not routed: v1 still answers
        _same(_answers(engine, texts, f"{WORKLOAD}@v1"), v1)  # peft's active adapter is v1 again

        with warnings.catch_warnings():  # unloading v1, the named adapter peft last ran, warns nothing
            warnings.simplefilter("error")
            engine.switch(WORKLOAD, f"{WORKLOAD}@v2").result(timeout=120)
        _same(_answers(engine, texts), v2)
        assert set(engine._merged) == {f"{WORKLOAD}@v2"} and set(engine.adapters) == {f"{WORKLOAD}@v2"}  # v1's copy went with it
    finally:
        engine.close()


def test_without_merging_the_route_answers_alike_from_the_peft_model(setup, tiny_model_dir):
    spec, texts, adapters = setup
    merged = AdapterEngine(str(tiny_model_dir), {WORKLOAD: spec}, bf16=False)
    plain = AdapterEngine(str(tiny_model_dir), {WORKLOAD: spec}, bf16=False, merge_routed=False)
    try:
        for engine in (merged, plain):
            engine.load_adapter(f"{WORKLOAD}@v1", adapters[1]).result(timeout=120)
        assert plain._merged == {}
        _same(_answers(merged, texts), _answers(plain, texts))
    finally:
        merged.close()
        plain.close()


def test_an_adapter_that_fails_to_load_leaves_the_engine_as_it_was(setup, tiny_model_dir, tmp_path):
    spec, texts, adapters = setup
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((adapters[1] / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    engine = AdapterEngine(str(tiny_model_dir), {WORKLOAD: spec}, bf16=False)
    try:
        engine.load_adapter(f"{WORKLOAD}@v1", adapters[1]).result(timeout=120)
        before = _answers(engine, texts)
        with pytest.raises(Exception):
            engine.load_adapter(f"{WORKLOAD}@v2", broken).result(timeout=120)
        assert engine.snapshot() == ({f"{WORKLOAD}@v1": str(adapters[1])}, {WORKLOAD: f"{WORKLOAD}@v1"})
        assert set(engine._merged) == {f"{WORKLOAD}@v1"}
        assert _answers(engine, texts) == before
    finally:
        engine.close()


def test_a_predictor_over_another_model_answers_as_a_new_one_and_shares_the_tokenizer_tables(setup, tiny_model_dir):
    from slm_flywheel.models.inference import Predictor, load_tokenizer

    spec, texts, adapters = setup
    tokenizer = load_tokenizer(str(tiny_model_dir))
    first = Predictor(load_model(str(tiny_model_dir), adapters[1], bf16=False), tokenizer, spec, 8)
    first.predict(texts)  # builds the label trie
    second_model = load_model(str(tiny_model_dir), adapters[2], bf16=False)
    moved = first.with_model(second_model)
    fresh = Predictor(second_model, tokenizer, spec, 8)
    assert [(p.answer, p.tokens, p.confidence) for p in moved.predict(texts)] == [(p.answer, p.tokens, p.confidence) for p in fresh.predict(texts)]
    assert moved._label_constraint is first._label_constraint and moved.model is second_model and first.model is not second_model
    assert moved.tokens_run == fresh.tokens_run  # counted from zero


def test_a_load_whose_merge_finishes_after_close_fails_instead_of_hanging(setup, tiny_model_dir):
    from slm_flywheel.serving.engine import EngineError

    spec, texts, adapters = setup
    engine = AdapterEngine(str(tiny_model_dir), {WORKLOAD: spec}, bf16=False)
    closed = threading.Event()
    check = engine._check_loadable  # the helper thread's first step: held until the engine is closed
    engine._check_loadable = lambda *args: (closed.wait(60), check(*args))
    loading = engine.load_adapter(f"{WORKLOAD}@v1", adapters[1])
    engine.close()
    closed.set()
    with pytest.raises(EngineError, match="shut down"):
        loading.result(timeout=120)  # settled either way; before, it never was
    with pytest.raises(EngineError, match="shut down"):
        engine.predict(WORKLOAD, texts).result(timeout=5)
    engine.close()  # twice is harmless


def test_an_idle_engine_lets_its_worker_thread_go_and_the_next_request_starts_another(setup, tiny_model_dir, monkeypatch):
    # An idle worker thread would keep torch's OpenMP pool, slowing the rest of the process (the
    # engine module's docstring): it exits after IDLE_EXIT_S, and no request or route is lost.
    import time

    import slm_flywheel.serving.engine as engine_module

    monkeypatch.setattr(engine_module, "IDLE_EXIT_S", 0.2)
    spec, texts, adapters = setup

    def workers() -> list[threading.Thread]:
        return [thread for thread in threading.enumerate() if thread.name == "adapter-engine"]

    before = set(workers())  # another test's engine, if one is still winding down
    engine = AdapterEngine(str(tiny_model_dir), {WORKLOAD: spec}, bf16=False)
    assert not set(workers()) - before  # building it starts no worker: there is no work yet
    engine.load_adapter(f"{WORKLOAD}@v1", adapters[1]).result(timeout=120)
    engine.switch(WORKLOAD, f"{WORKLOAD}@v1").result(timeout=120)
    first = _answers(engine, texts)
    deadline = time.monotonic() + 60
    while set(workers()) - before:
        assert time.monotonic() < deadline, "the idle engine's worker thread never exited"
        time.sleep(0.05)
    assert _answers(engine, texts) == first  # a new worker, the same route and answers
    engine.close()
    assert not [thread for thread in set(workers()) - before if thread.is_alive()]


def test_a_lone_request_is_not_held_for_batch_mates_and_queued_ones_share_a_batch(setup, tiny_model_dir, monkeypatch):
    # The batching window holds a batch for more requests only while requests arrive together
    # (bench/RESULTS.md: c=1 p50 -12 ms, c=8 unchanged). With an hour-long window, a lone request
    # still comes back at once, and requests queued behind a busy engine go in one batch.
    spec, texts, adapters = setup
    engine = AdapterEngine(str(tiny_model_dir), {WORKLOAD: spec}, bf16=False, batch_wait_s=3600)
    try:
        engine.load_adapter(f"{WORKLOAD}@v1", adapters[1]).result(timeout=120)
        engine.switch(WORKLOAD, f"{WORKLOAD}@v1").result(timeout=120)
        assert len(engine.predict(WORKLOAD, texts[:1]).result(timeout=120)) == 1  # not an hour later
        reference = _answers(engine, texts[:3])  # one request of three inputs: one batch, then no more together

        batches: list[int] = []
        real = engine._predict_batch

        def counted(workload, adapter, batch):
            batches.append(len(batch))
            return real(workload, adapter, batch)

        monkeypatch.setattr(engine, "_predict_batch", counted)
        gate = threading.Event()
        busy = engine._call(gate.wait)  # the engine works on something until the gate opens
        queued = [engine.predict(WORKLOAD, [text]) for text in texts[:3]]
        gate.set()
        busy.result(timeout=120)
        served = [future.result(timeout=120)[0] for future in queued]
        assert batches == [3]
        _same(_rows(served), reference)
    finally:
        engine.close()
