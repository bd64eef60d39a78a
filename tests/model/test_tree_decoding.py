"""Classification's two-pass trie decoding gives the stepwise decoder's answers, tokens and
confidences (fp32), whatever else shares the batch, in at most two forward passes; packing runs
the prompts' shared opening once."""

from __future__ import annotations

import pytest
import torch

from slm_flywheel.config import load_settings
from slm_flywheel.models.inference import Predictor, load_model, load_tokenizer, pack_prompts
from slm_flywheel.models.workload import build_task_spec, load_splits
from tests.conftest import REPO


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    """The tiny model with a LoRA adapter of random (non-zero) weights, unmerged and named, as the
    serving engine holds it."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    model = get_peft_model(load_model(str(tiny_model_dir), None, bf16=False), config, adapter_name="banking-intent@v1")
    model.eval()
    return model


@pytest.fixture(scope="module")
def banking(data_dir):
    settings = load_settings(REPO / "flywheel.yaml", data_dir=data_dir)
    workload = settings.workload("banking-intent")
    spec = build_task_spec("banking-intent", workload, data_dir)
    return spec, list(load_splits(spec, workload, data_dir)["golden"]["text"][:48])


def _passes(model) -> list[int]:
    calls = [0]
    model.get_decoder().register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_tree_decoding_matches_stepwise_decoding(served, tiny_model_dir, banking):
    spec, texts = banking
    tokenizer = load_tokenizer(str(tiny_model_dir))
    stepwise = Predictor(served, tokenizer, spec, 16, tree=False).predict(texts)
    tree = Predictor(served, tokenizer, spec, 16).predict(texts)
    assert len({p.answer for p in tree}) > 3  # the random model answers with many labels: a real check
    for slow, fast in zip(stepwise, tree):
        assert (fast.answer, fast.valid, fast.tokens, fast.prompt_tokens) == (slow.answer, slow.valid, slow.tokens, slow.prompt_tokens)
        assert fast.confidence == pytest.approx(slow.confidence, abs=1e-5)
        assert fast.token_logprobs == pytest.approx(slow.token_logprobs, abs=1e-5)
        assert sum(fast.token_logprobs) == pytest.approx(torch.tensor(fast.confidence).log().item(), abs=1e-5)


def test_packed_rows_do_not_see_each_other(served, tiny_model_dir, banking):
    # Packing puts a batch's prompts and trie nodes in one sequence: a leak across rows would make
    # an answer depend on its batch-mates.
    spec, texts = banking
    predictor = Predictor(served, load_tokenizer(str(tiny_model_dir)), spec, 48)
    together = predictor.predict(texts)
    alone = [predictor.predict([text])[0] for text in texts[:12]]
    reversed_ = predictor.predict(texts[:12][::-1])[::-1]
    for one, other, flipped in zip(alone, together, reversed_):
        assert one.answer == other.answer == flipped.answer
        assert one.confidence == pytest.approx(other.confidence, abs=1e-5)
        assert flipped.confidence == pytest.approx(other.confidence, abs=1e-5)


def test_tree_decoding_takes_two_forward_passes_per_batch(served, tiny_model_dir, banking):
    spec, texts = banking
    tokenizer = load_tokenizer(str(tiny_model_dir))
    calls = _passes(served)
    fast = Predictor(served, tokenizer, spec, 16)
    prompt_tokens = sum(p.prompt_tokens for p in fast.predict(texts[:16]))
    assert calls[0] <= 2
    calls[0] = 0
    slow = Predictor(served, tokenizer, spec, 16, tree=False)
    slow.predict(texts[:16])
    assert calls[0] > 2  # the label trie is deeper than two tokens somewhere it goes
    # Packed, the tree path runs each prompt's tokens once (no padding; the template's opening
    # once for the batch) plus the trie nodes.
    shared = pack_prompts(fast.token_ids(texts[:16])).shared
    assert shared >= 3  # "Banking message:"
    assert prompt_tokens - 15 * shared < fast.tokens_run < slow.tokens_run


def test_packing_shares_the_common_opening_once():
    packed = pack_prompts([[5, 6, 7, 8], [5, 6, 9], [5, 6, 7]])
    assert packed.shared == 2 and packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 7]]
    assert packed.starts.tolist() == [2, 4, 5] and packed.ends.tolist() == [4, 5, 6]
    assert packed.positions.tolist() == [[0, 1, 2, 3, 2, 2]]  # each prompt's tokens where they sit alone
    seen = [row.nonzero().flatten().tolist() for row in packed.mask]
    assert seen == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 4], [0, 1, 5]]
    # Every prompt keeps its last token in its own block (it chooses that prompt's first answer token).
    same = pack_prompts([[1, 2, 3], [1, 2, 3]])
    assert same.shared == 2 and same.input_ids.tolist() == [[1, 2, 3, 3]]
    assert same.positions.tolist() == [[0, 1, 2, 2]]
    # Nothing in common, or one prompt alone: plain block-diagonal packing.
    for prompts in ([[1, 2], [3, 4]], [[1, 2, 3]]):
        assert pack_prompts(prompts).shared == 0


def test_a_large_batch_is_packed_a_few_rows_a_pass(served, tiny_model_dir, banking):
    # The packed pass's attention grows with the square of the rows in it: a batch of 48 runs as
    # passes of at most PACKED_ROWS rows, with the same answers as one row at a time.
    from slm_flywheel.models.inference import PACKED_ROWS

    spec, texts = banking
    predictor = Predictor(served, load_tokenizer(str(tiny_model_dir)), spec, 48)
    rows: list[int] = []
    packed = predictor._predict_labels
    predictor._predict_labels = lambda batch: rows.append(len(batch)) or packed(batch)  # type: ignore[method-assign]
    answers = predictor.predict(texts)
    assert rows == [PACKED_ROWS] * (len(texts) // PACKED_ROWS) and PACKED_ROWS < len(texts)
    one_by_one = Predictor(served, predictor.tokenizer, spec, 1).predict(texts[:8])
    assert [p.answer for p in answers[:8]] == [p.answer for p in one_by_one]
    assert [p.confidence for p in answers[:8]] == pytest.approx([p.confidence for p in one_by_one], abs=1e-5)
