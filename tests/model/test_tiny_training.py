"""Train the tiny model (real tokenizer) for a few steps: LoRA moves, base stays, reload is exact."""

import json
import random
import string

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from slm_flywheel.config import TrainingConfig
from slm_flywheel.models.constrained import is_valid_extraction
from slm_flywheel.models.inference import Predictor, load_model, load_tokenizer
from slm_flywheel.models.training import train_lora
from slm_flywheel.models.workload import TaskSpec

LABELS = ("card_arrival", "card_linking", "exchange_rate", "top_up_failed")
SLOTS = ("people", "time", "date", "first_name", "last_name")
CLASSIFY = TaskSpec("tiny-intent", "classification", "Banking message: {text}\nIntent:", labels=LABELS)
EXTRACT = TaskSpec("tiny-slots", "extraction", "Restaurant booking message: {text}\nSlots as JSON:", slots=SLOTS)
CONFIG = TrainingConfig(max_examples=64, epochs=1, batch_size=8, learning_rate=5e-3, lora_r=4, lora_alpha=8, bf16=False, seed=3)


def _classification_data(n: int = 32) -> Dataset:
    rng = random.Random(0)
    texts = [f"my card {rng.choice(['never came', 'link', 'rate', 'top up'])} {i}" for i in range(n)]
    return Dataset.from_dict({"id": list(range(n)), "text": texts, "label": [LABELS[i % 4] for i in range(n)]})


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + " ,.!?'\"{}:\\é€"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter")
    result = train_lora(CLASSIFY, str(tiny_model_dir), _classification_data(), out, CONFIG)
    return result


def test_training_moves_adapter_weights_and_freezes_base(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    result = train_lora(CLASSIFY, str(tiny_model_dir), _classification_data(), tmp_path / "a", CONFIG)
    adapter = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert lora_b, "no LoRA B matrices were saved"
    # LoRA B starts at zero: any non-zero entry means training moved it.
    assert all(v.abs().sum() > 0 for v in lora_b.values())
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(result.adapter_dir))
    for name, tensor in reloaded.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(tensor, base_before[key]), f"base weight {key} changed"
    assert result.tokens > 0 and result.seconds > 0


def test_lora_layers_limits_the_adapter_to_the_top_layers(tiny_model_dir, tmp_path):
    config = CONFIG.model_copy(update={"lora_layers": 1})
    result = train_lora(CLASSIFY, str(tiny_model_dir), _classification_data(16), tmp_path / "a", config)
    keys = load_file(str(result.adapter_dir / "adapter_model.safetensors")).keys()
    assert any(".layers.1." in k for k in keys)
    assert not any(".layers.0." in k for k in keys)


def test_saved_adapter_reloads_and_predicts_identically(trained, tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    texts = list(_classification_data(12)["text"]) + _random_texts(4, seed=1)
    first = Predictor(load_model(str(tiny_model_dir), trained.adapter_dir, bf16=False), tokenizer, CLASSIFY, 5).predict(texts)
    second = Predictor(load_model(str(tiny_model_dir), trained.adapter_dir, bf16=False), tokenizer, CLASSIFY, 16).predict(texts)
    assert [p.answer for p in first] == [p.answer for p in second]
    assert [p.confidence for p in first] == pytest.approx([p.confidence for p in second], rel=1e-4)


def test_classification_answers_never_leave_the_label_set(tiny_model_dir, trained):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    for adapter in (None, trained.adapter_dir):
        predictor = Predictor(load_model(str(tiny_model_dir), adapter, bf16=False), tokenizer, CLASSIFY, 16)
        for prediction in predictor.predict(_random_texts(40, seed=2)):
            assert prediction.valid and prediction.answer in LABELS
            assert 0.0 < prediction.confidence <= 1.0


def test_extraction_answers_are_valid_json_spans_or_flagged_invalid(tiny_model_dir, tmp_path):
    rng = random.Random(5)
    texts, labels = [], []
    for i in range(24):
        people, name = str(rng.randint(2, 9)), rng.choice(["Ann", "Bob", "Cy"])
        texts.append(f"table for {people} please, I am {name}")
        labels.append(json.dumps({"people": people, "first_name": name}))
    data = Dataset.from_dict({"id": list(range(24)), "text": texts, "label": labels})
    result = train_lora(EXTRACT, str(tiny_model_dir), data, tmp_path / "slots", CONFIG)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    inputs = texts[:8] + _random_texts(24, seed=3)
    for adapter in (None, result.adapter_dir):
        predictor = Predictor(load_model(str(tiny_model_dir), adapter, bf16=False), tokenizer, EXTRACT, 16)
        for text, prediction in zip(inputs, predictor.predict(inputs)):
            if prediction.valid:
                assert isinstance(prediction.answer, dict)
                assert is_valid_extraction(prediction.answer, SLOTS, text), (text, prediction)
            else:
                assert prediction.answer is None and prediction.confidence == 0.0


def test_evaluation_cache_reuses_a_result_only_for_the_same_model_and_items(trained, tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    import slm_flywheel.models.inference
    from slm_flywheel.models.evaluation import evaluate_model, evaluate_sets

    data = _classification_data(12)
    texts, labels = list(data["text"]), list(data["label"])
    cache = tmp_path / "eval-cache"
    fresh = evaluate_model(CLASSIFY, str(tiny_model_dir), trained.adapter_dir, texts, labels, 4, cache_dir=cache)
    assert len(list(cache.glob("*.json"))) == 1
    # The same adapter bytes in another folder (as downloaded from the registry) hit the cache:
    # no model is loaded at all.
    copy = tmp_path / "downloaded"
    shutil.copytree(trained.adapter_dir, copy)
    loads = []
    real_load = slm_flywheel.models.inference.load_model
    monkeypatch.setattr(slm_flywheel.models.inference, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    sets = {"golden": (texts, labels), "drift": (texts[:5], labels[:5])}
    reused = evaluate_sets(CLASSIFY, str(tiny_model_dir), copy, sets, 4, cache_dir=cache)
    assert reused["golden"] == fresh
    assert reused["drift"].predictions == fresh.predictions[:5]  # computed: a new item set
    assert len(loads) == 1 and len(list(cache.glob("*.json"))) == 2
    # Another model (the base alone) or other references miss it.
    evaluate_sets(CLASSIFY, str(tiny_model_dir), None, {"golden": (texts, labels)}, 4, cache_dir=cache)
    evaluate_sets(CLASSIFY, str(tiny_model_dir), copy, {"golden": (texts, labels[::-1])}, 4, cache_dir=cache)
    assert len(loads) == 3 and len(list(cache.glob("*.json"))) == 4


def test_an_uncached_set_is_measured_every_time_in_its_own_batches(trained, tiny_model_dir, tmp_path):
    from slm_flywheel.models.evaluation import EvalSet, evaluate_sets

    data = _classification_data(12)
    texts, labels = list(data["text"]), list(data["label"])
    cache = tmp_path / "eval-cache"
    sets = {"golden": (texts, labels), "latency": EvalSet(texts, labels, batch_size=3, cached=False)}
    first = evaluate_sets(CLASSIFY, str(tiny_model_dir), trained.adapter_dir, sets, 12, cache_dir=cache)
    assert len(list(cache.glob("*.json"))) == 1  # only the cached set is stored
    again = evaluate_sets(CLASSIFY, str(tiny_model_dir), trained.adapter_dir, sets, 12, cache_dir=cache)
    assert again["golden"] == first["golden"]  # stored, latency included
    assert again["latency"].predictions == first["latency"].predictions == first["golden"].predictions
    assert again["latency"].metrics["latency_p95_ms"] != first["latency"].metrics["latency_p95_ms"]  # timed anew


def test_training_is_reproducible_and_each_ablation_knob_changes_the_adapter(tiny_model_dir, tmp_path):
    """Same config twice: the same adapter; each knob bench/train.py --ablation turns: a different one."""
    data = _classification_data(32)
    runs = iter(range(100))

    def adapter(**update) -> dict[str, torch.Tensor]:
        result = train_lora(CLASSIFY, str(tiny_model_dir), data, tmp_path / str(next(runs)), CONFIG.model_copy(update=update))
        return load_file(str(result.adapter_dir / "adapter_model.safetensors"))

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    reference = adapter()
    assert same(reference, adapter())
    for update in ({"group_by_length": "off"}, {"group_by_length": "prompt"}, {"completion_only_loss": False}, {"lr_scheduler": "constant"}):
        assert not same(reference, adapter(**update)), update
    bf16 = adapter(bf16=True)
    assert not same(bf16, adapter(bf16=True, base_weights="fp32"))


def test_a_short_run_trains_on_smaller_batches_to_take_min_steps(tiny_model_dir, tmp_path):
    steps: dict[str, int] = {}
    config = CONFIG.model_copy(update={"batch_size": 16, "min_steps": 4})
    for name, run_config in (("shrunk", config), ("off", config.model_copy(update={"min_steps": 0}))):
        result = train_lora(CLASSIFY, str(tiny_model_dir), _classification_data(32), tmp_path / name, run_config,
                            progress=lambda done, total, name=name: steps.__setitem__(name, total))
        steps[name + " batch"] = result.batch_size
    # 32 examples at 16 are 2 steps, under 4: 4 steps of 8; with min_steps off, 2 of 16.
    assert steps == {"shrunk": 4, "shrunk batch": 8, "off": 2, "off batch": 16}
