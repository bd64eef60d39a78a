"""bench/serve.py's identity comparison and its FLOP count."""

from __future__ import annotations

import pytest
import torch

from bench import serve as bench_serve
from slm_flywheel.models.inference import Prediction


def test_compare_counts_differing_answers_and_confidence_gaps():
    reference = [Prediction("a", 0.50, True), Prediction("b", 0.90, True), Prediction("c", 0.30, True)]
    fast = [Prediction("a", 0.5004, True), Prediction("x", 0.90, True), Prediction("c", 0.32, True)]
    found = bench_serve._compare(reference, fast)
    assert (found["items"], found["answers_differ"], found["differ_at"]) == (3, 1, [1])
    # Gaps only where the answers agree: 4e-4 and 0.02.
    assert found["max_confidence_gap"] == pytest.approx(0.02) and found["over_1e-3"] == 1


def test_flops_per_request_counts_every_decoder_weight_the_merged_adapter_adds_none(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from slm_flywheel.models.inference import load_model

    model = load_model(str(tiny_model_dir), None, bf16=False)
    decoder_weights = sum(m.weight.numel() for m in model.get_decoder().modules() if isinstance(m, torch.nn.Linear))
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapted.save_pretrained(tmp_path / "adapter")
    hidden, layers, tokens = model.config.hidden_size, model.config.num_hidden_layers, 20.0
    expected = 2 * tokens * decoder_weights + layers * 2 * hidden * tokens * tokens
    assert bench_serve._flops_per_request(str(tiny_model_dir), tmp_path / "adapter", tokens) == pytest.approx(expected)
