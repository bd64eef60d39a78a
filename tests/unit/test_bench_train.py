"""The training benchmark's FLOP estimate and parameter counts, and the length-grouped batch order it measures."""


import pytest
import torch
from datasets import Dataset
from safetensors.torch import save_file

from bench import train as bench_train
from slm_flywheel.config import TrainingConfig
from slm_flywheel.models.training import grouping_lengths, length_grouped_order, step_batch_size


def test_training_flops_counts_forward_everywhere_and_backward_from_the_lowest_adapted_layer():
    counts = bench_train.ParamCounts(layer_params=(10, 20, 30), head_params=100, lora_params=4, lowest_adapted_layer=1)
    # forward 2*60*T + backward 2*(20+30)*T + LoRA 6*4*T + head 4*100*T_loss
    assert bench_train.training_flops(counts, tokens=7, loss_tokens=3) == 2 * 60 * 7 + 2 * 50 * 7 + 6 * 4 * 7 + 4 * 100 * 3
    everywhere = bench_train.ParamCounts((10, 20, 30), 100, 4, lowest_adapted_layer=0)
    assert bench_train.training_flops(everywhere, 7, 3) - bench_train.training_flops(counts, 7, 3) == 2 * 10 * 7


def test_count_params_reads_layers_head_and_adapter_from_safetensors(tmp_path):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir(), adapter.mkdir()
    save_file({
        "model.embed_tokens.weight": torch.zeros(50, 8),  # tied head
        "model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 8),
        "model.layers.0.input_layernorm.weight": torch.zeros(8),  # not a matmul
        "model.layers.1.mlp.up_proj.weight": torch.zeros(16, 8),
        "model.layers.10.mlp.down_proj.weight": torch.zeros(8, 16),
    }, str(base / "model.safetensors"))
    save_file({
        "base_model.model.model.layers.10.mlp.down_proj.lora_A.weight": torch.zeros(2, 16),
        "base_model.model.model.layers.10.mlp.down_proj.lora_B.weight": torch.zeros(8, 2),
    }, str(adapter / "adapter_model.safetensors"))
    counts = bench_train.count_params(base, adapter)
    assert counts.layer_params == (64, 128) + (0,) * 8 + (128,)  # indexed by layer number
    assert (counts.head_params, counts.lora_params, counts.lowest_adapted_layer) == (400, 48, 10)
    assert counts.backprop_params == 128


@pytest.mark.parametrize("n", [37, 64, 200])
def test_length_grouped_order_is_a_permutation_of_full_batches_of_similar_lengths(n):
    lengths = [(i * 7919) % 61 + 10 for i in range(n)]  # scrambled lengths 10..70
    order = length_grouped_order(lengths, batch_size=8, generator=torch.Generator().manual_seed(0), window=4)
    assert sorted(order) == list(range(n))
    batches = [order[i : i + 8] for i in range(0, n, 8)]
    assert all(len(batch) == 8 for batch in batches[:-1])  # a short batch can only come last

    def padding(batches: list[list[int]]) -> int:
        return sum(len(batch) * max(lengths[i] for i in batch) - sum(lengths[i] for i in batch) for batch in batches)

    assert padding(batches) < padding([list(range(i, min(i + 8, n))) for i in range(0, n, 8)]) / 2


def test_length_grouped_order_shuffles_batches_and_changes_every_call():
    lengths = list(range(64))
    generator = torch.Generator().manual_seed(1)
    first, second = length_grouped_order(lengths, 4, generator), length_grouped_order(lengths, 4, generator)
    assert first != second
    starts = [min(lengths[i] for i in first[k : k + 4]) for k in range(0, 64, 4)]
    assert starts != sorted(starts)  # batches are not served shortest first


def test_grouping_lengths_are_the_whole_sequences_by_default_the_prompts_or_none():
    tokenized = Dataset.from_dict({
        "input_ids": [[1, 2, 3, 9, 9], [1, 2, 9], [1, 2, 3, 4, 5, 6, 9, 9, 9]],
        "completion_mask": [[0, 0, 0, 1, 1], [0, 0, 1], [0, 0, 0, 0, 0, 0, 1, 1, 1]],
    })
    assert grouping_lengths(tokenized, TrainingConfig().group_by_length) == [5, 3, 9]  # the default: whole length
    assert grouping_lengths(tokenized, "prompt") == [3, 2, 6]
    assert grouping_lengths(tokenized, "off") is None
    # The old boolean still reads as it did: true is whole-length grouping, false none.
    assert TrainingConfig(group_by_length=True).group_by_length == "whole"
    assert TrainingConfig(group_by_length=False).group_by_length == "off"
    with pytest.raises(ValueError, match="group_by_length"):
        TrainingConfig(group_by_length="answer")


def test_ablation_rows_are_valid_training_configs_and_the_last_is_plain_trls_settings():
    training = TrainingConfig(learning_rate=0.002, lora_layers=15)
    rows = dict(bench_train.ablation_rows(training, num_layers=30))
    for name, overrides in rows.items():
        changed = TrainingConfig.model_validate({**training.model_dump(), **overrides})  # a typo'd field fails here
        assert changed != training, name
    assert rows["learning rate /2"] == {"learning_rate": 0.001}
    trl = rows["all of trl's settings"]
    single = {**rows["LoRA on all layers"], **rows["fp32 frozen weights"], **rows["linear, no warmup"], **rows["random batches"],
              **rows["full batches however few steps (min_steps 0)"]}
    assert trl == single

    # Adapting every layer already, the layers row tries the top half instead.
    every = dict(bench_train.ablation_rows(TrainingConfig(), num_layers=30))
    assert every["LoRA on the top 15 layers"] == {"lora_layers": 15} and "LoRA on all layers" not in every


@pytest.mark.parametrize(("examples", "update", "batch"), [
    (1280, {}, 16),  # 80 steps of 16: enough
    (240, {}, 12),  # 15 steps of 16 is under 20: 20 steps of 12
    (100, {}, 8),  # 12 steps of 8 at the floor: never under 8
    (240, {"min_steps": 0}, 16),  # off
    (240, {"batch_size": 4}, 4),  # never over batch_size, nor up to the floor
    (240, {"epochs": 2}, 16),  # 30 steps over two epochs
    (240, {"gradient_accumulation_steps": 2}, 8),  # steps count accumulated batches: 7.5 of 16x2 -> 15 of 8x2
])
def test_step_batch_size_shrinks_a_short_run_to_min_steps_down_to_eight(examples, update, batch):
    config = TrainingConfig(batch_size=16, min_steps=20).model_copy(update=update)
    assert step_batch_size(examples, config) == batch
