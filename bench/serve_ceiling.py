"""Where a served banking batch's time goes, in process (issue #15): the served predictor (tree
decoding, adapter merged, bf16), its packed prompt pass alone, and the decoder's 210 linear layers
alone at the same row counts (the prompt pass's rows and the trie pass's rows), at batch 1 and 8.

    .venv/bin/python -m bench.serve_ceiling --base <base model dir> --adapter <banking adapter dir>

The linears alone are the ceiling of any change that leaves the matmuls as they are: with every
other operation free, a batch takes at least the prompt pass's linears plus the trie pass's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the base model's directory (an HF checkpoint)")
    parser.add_argument("--adapter", required=True, help="a banking-intent LoRA adapter's directory")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from slm_flywheel.models.context import load_workload
    from slm_flywheel.models.inference import Predictor, load_model, load_tokenizer, pack_prompts

    context = load_workload("banking-intent")
    texts = context.golden_texts(64)
    model = load_model(args.base, args.adapter, bf16=True)  # merged, as the routed version serves
    predictor = Predictor(model, load_tokenizer(args.base), context.spec, 32, tree=True)
    decoder = model.get_decoder()
    linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]

    def linears_ms(rows: int) -> float:
        inputs = {m.in_features: torch.randn(rows, m.in_features, dtype=torch.bfloat16) for m in linears}
        return _median_ms(lambda: [F.linear(inputs[m.in_features], m.weight) for m in linears], 5)

    for batch in (1, 8):
        groups = [texts[i : i + batch] for i in range(0, 8 * batch, batch)]
        batch_ms, trie_rows = [], []
        for group in groups:
            before = predictor.tree_tokens_run
            batch_ms.append(_median_ms(lambda group=group: predictor.predict(group), 3))
            trie_rows.append((predictor.tree_tokens_run - before) / 4)  # 4 calls: warm-up + 3
        packed = pack_prompts(predictor.token_ids(groups[0]))
        width = packed.width
        trie = max(1, round(statistics.mean(trie_rows)))
        with torch.inference_mode():
            prompt_ms = _median_ms(
                lambda: decoder(**packed.decoder_inputs(), use_cache=True), 5
            )
            prompt_linears_ms, trie_linears_ms = linears_ms(width), linears_ms(trie)
        flops = 2 * width * sum(m.weight.numel() for m in linears)
        print(
            f"batch {batch}: served predictor {statistics.median(batch_ms):.1f} ms a batch ({statistics.mean(trie_rows):.1f} trie rows); "
            f"prompt pass of {width} rows {prompt_ms:.1f} ms, its linears alone {prompt_linears_ms:.1f} ms "
            f"({flops / prompt_linears_ms / 1e9:.3f} TFLOP/s); the linears at {trie} trie rows {trie_linears_ms:.1f} ms; "
            f"ceiling with every other op free: {1000 * batch / (prompt_linears_ms + trie_linears_ms):.1f} requests/s"
        )


if __name__ == "__main__":
    main()
