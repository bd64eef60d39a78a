"""Serving benchmark: p50/p95 latency and requests/s at concurrency 1 and 8 (32 in the full run),
one input per request, through the HTTP server, before and after the fast classification path,
with the answers of both paths compared on golden, and the adapter hot-swap time.

    .venv/bin/python bench/serve.py [--quick] [--requests N] [--json bench/serve.json]

For each workload (banking-intent, restaurant-slots) the adapter is the registry's champion when
there is one (`flywheel train <workload>` first), else a small one trained here (about a minute).

* "stepwise" is the unoptimized path: one forward pass per answer token over the whole vocabulary
  (`serving.tree_decoding: false`), with the adapter unmerged (`serving.merge_routed: false`);
  "tree": classification decodes the label trie in two packed forward passes (`models/inference.py`);
  "+merged": the routed adapter answers from a merged copy of the base weights (`serving/engine.py`).
  The default is "tree+merged" for classification; extraction decodes stepwise either way, so
  restaurant-slots has "stepwise" and "stepwise+merged". `--quick` leaves out the "tree" row (the
  unmerged tree path) and its identity check, sends 64 requests per banking row and 16 per
  restaurant row, and checks identity on 128 golden items (32 for extraction).
* Identity on golden (in-process): answers and confidences of the tree path (the same unmerged
  model) and of the served path (merged, tree for classification) against the unoptimized one, in
  fp32 (where arithmetic is exact enough for 1e-3 to mean the algorithm) and in bf16 (what serves
  on a CPU with bf16), beside the bf16 noise floor: the stepwise path's own confidences with the
  same input alone (batch 1) vs in a batch of 32.
* The physical floor: FLOPs per request counted from the model's parameters and the tokens the
  tree path actually runs, over this run's measured bf16 matmul peak (`bench/train.py`'s probe).

The last line is the headline `rps_c8=<requests/s at concurrency 8> p50_c1_ms=<p50 at concurrency 1>`
of the default path ("tree+merged") for banking-intent.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORKLOADS = ("banking-intent", "restaurant-slots")
PATHS = {"classification": ("stepwise", "tree", "tree+merged"), "extraction": ("stepwise", "stepwise+merged")}
DEFAULT_PATH = "tree+merged"  # banking-intent's served path: the headline
TRAIN_EXAMPLES = 320  # the stand-in adapter's size when the registry has no champion


def _adapter(settings: Any, context: Any, workdir: Path) -> Path:
    from slm_flywheel.models.base_model import resolve_base_model
    from slm_flywheel.models.data import sample_training_set
    from slm_flywheel.models.registry import CHAMPION, alias_version, download_adapter
    from slm_flywheel.models.training import train_lora
    from slm_flywheel.tracking import mlflow_client

    record = alias_version(mlflow_client(settings), context.name, CHAMPION)
    if record is not None:
        return download_adapter(mlflow_client(settings), record, settings.adapters_dir)
    train = sample_training_set(context.splits["train"], TRAIN_EXAMPLES, 1, True)
    base = resolve_base_model(settings.base_model, settings.models_dir)
    training = context.config.training.model_copy(update={"max_examples": TRAIN_EXAMPLES})
    return train_lora(context.spec, base, train, workdir / f"bench-{context.name}", training).adapter_dir


def _serve(settings: Any, workload: str, adapter: Path, ready: Any, stop: Any) -> None:
    """The server under test, in its own process as `flywheel serve` runs: in this process it
    would share an interpreter with the clients and with what the benchmark ran before it (the
    trained stand-in adapters, the identity models), 159 vs 106 ms p50 at c1, measured."""
    from slm_flywheel.serving.app import create_app
    from slm_flywheel.serving.server import BackgroundServer, build_state

    state = build_state(settings, f"bench-{settings.serving.tree_decoding}", load_champions=False)
    try:
        state.engine.load_adapter(f"{workload}@v1", adapter).result()
        with BackgroundServer(create_app(state)) as server:
            ready.put(server.url)
            stop.wait()
    finally:
        state.engine.close()
        state.writer.close()


def _load(url: str, workload: str, texts: list[str], concurrency: int, count: int) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    failures = 0
    cursor = iter(range(count))
    lock = threading.Lock()

    def worker() -> None:
        nonlocal failures
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                with lock:
                    index = next(cursor, None)
                if index is None:
                    return
                started = time.perf_counter()
                response = client.post(f"/v1/workloads/{workload}/predict", json={"inputs": [texts[index % len(texts)]]})
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    failures += response.status_code != 200

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": count / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "failures": failures,
    }


def _compare(reference: list[Any], fast: list[Any]) -> dict[str, Any]:
    """How far `fast` is from `reference`: differing answers (their indices) and confidence gaps."""
    differ = [i for i, (r, f) in enumerate(zip(reference, fast)) if r.answer != f.answer]
    gaps = [abs(r.confidence - f.confidence) for r, f in zip(reference, fast) if r.answer == f.answer]
    return {
        "items": len(reference),
        "answers_differ": len(differ),
        "differ_at": differ[:20],
        "max_confidence_gap": max(gaps, default=0.0),
        "over_1e-3": sum(gap > 1e-3 for gap in gaps),
    }


def _identity(base: str, adapter: Path, context: Any, texts: list[str], floor_items: int, unmerged_tree: bool = True) -> dict[str, Any]:
    """On `texts`, in fp32 and bf16, against stepwise decoding with the unmerged (named) adapter: the
    served path (the adapter merged into a copy of the base, tree decoding for classification) and,
    with `unmerged_tree`, tree decoding with the unmerged model (classification)."""
    from peft import PeftModel

    from slm_flywheel.models.inference import Predictor, load_model, load_tokenizer

    tokenizer = load_tokenizer(base)
    result: dict[str, Any] = {}
    for dtype, bf16 in (("fp32", False), ("bf16", True)):
        model = PeftModel.from_pretrained(load_model(base, None, bf16=bf16), str(adapter), adapter_name=f"{context.name}@bench")
        model.eval()
        stepwise = Predictor(model, tokenizer, context.spec, 32, tree=False)
        reference = stepwise.predict(texts)
        classification = context.config.task == "classification"
        if classification and unmerged_tree:
            result[dtype] = _compare(reference, Predictor(model, tokenizer, context.spec, 32, tree=True).predict(texts))
        served = Predictor(load_model(base, adapter, bf16=bf16), tokenizer, context.spec, 32, tree=classification)
        result[f"{dtype}_served"] = _compare(reference, served.predict(texts))
        # Packed, the tree path runs each prompt (the template's shared opening once a pass) and its
        # trie nodes: tokens per request.
        result[f"{dtype}_served"]["tokens_per_request"] = served.tokens_run / len(texts)
        result[f"{dtype}_served"]["tree_tokens_per_request"] = served.tree_tokens_run / len(texts)
        result[f"{dtype}_served"]["prompt_tokens_per_request"] = sum(p.prompt_tokens for p in reference) / len(texts)
        if bf16:  # the noise floor: the same stepwise path, each input alone instead of in a batch
            alone = [stepwise.predict([text])[0] for text in texts[:floor_items]]
            result["bf16_floor"] = _compare(reference[:floor_items], alone)
    return result


def _flops_per_request(base: str, adapter: Path, tokens: float) -> float:
    """Forward FLOPs of one request of `tokens` tokens (prompt and tree pass, counted by the
    predictor): 2 per decoder weight per token (bench/train.py's counts; the served adapter is
    merged into them, so it adds none), plus attention (QK^T and AV, about half of a square for
    causal). The output rows the trie projects (its allowed tokens) are a few thousand weights: left out."""
    from bench.train import count_params

    counts = count_params(Path(base), adapter)
    hidden = _hidden_size(base)
    attention = len(counts.layer_params) * 2 * 2 * hidden * tokens * tokens / 2
    return 2 * tokens * sum(counts.layer_params) + attention


def _hidden_size(base: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(base).hidden_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and golden items (under 5 minutes)")
    parser.add_argument("--requests", type=int, default=None, help="requests per row (banking; restaurant-slots a half, a quarter with --quick)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("serve.json"))
    args = parser.parse_args()
    count = args.requests or (64 if args.quick else 256)
    golden_items = 128 if args.quick else None  # None: all of golden
    concurrencies = (1, 8) if args.quick else (1, 8, 32)
    started_all = time.perf_counter()

    import tempfile

    import torch
    from rich.console import Console
    from rich.table import Table

    from bench import quiet_settings
    from bench.train import matmul_peak
    from slm_flywheel.models.base_model import resolve_base_model
    from slm_flywheel.models.context import resolve_workload
    from slm_flywheel.models.inference import PACKED_ROWS

    settings = quiet_settings()
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    base = resolve_base_model(settings.base_model, settings.models_dir)
    peak = {"bf16_tflops": matmul_peak("bf16", "cpu") / 1e12, "fp32_tflops": matmul_peak("fp32", "cpu") / 1e12}
    rows: list[dict[str, Any]] = []
    identity: dict[str, Any] = {}
    floors: dict[str, Any] = {}
    swap_ms = None
    for workload in WORKLOADS:
        context = resolve_workload(settings, workload)
        adapter = _adapter(settings, context, workdir)
        golden = list(context.splits["golden"]["text"])
        checked = golden[: golden_items or len(golden)]
        if context.config.task == "extraction":  # its decoding takes a forward pass per token: fewer items
            checked = checked[: len(checked) // 4]
        identity[workload] = _identity(base, adapter, context, checked, 32 if args.quick else 64, unmerged_tree=not args.quick)
        # --quick measures the unoptimized and the served path only (no unmerged "tree" row), to stay under 5 minutes.
        paths = tuple(p for p in PATHS[context.config.task] if not (args.quick and p == "tree"))
        requests = count if context.config.task == "classification" else max(count // (4 if args.quick else 2), 16)
        for path in paths:
            serving = settings.serving.model_copy(update={"admin_token": None, "adapter_roots": [adapter.parent],
                                                      "tree_decoding": path.startswith("tree"), "merge_routed": path.endswith("+merged")})
            spawn = multiprocessing.get_context("spawn")
            ready, stop = spawn.Queue(), spawn.Event()
            process = spawn.Process(target=_serve, args=(settings.model_copy(update={"serving": serving, "home": workdir / "state"}), workload, adapter, ready, stop))
            process.start()
            try:
                url = ready.get(timeout=600)
                _load(url, workload, golden, 4, 16)  # warm-up
                for concurrency in concurrencies:
                    result = _load(url, workload, golden, concurrency, requests)
                    rows.append({"workload": workload, "path": path, "concurrency": concurrency, **result})
                if workload == "banking-intent" and path == DEFAULT_PATH:
                    import httpx

                    started = time.perf_counter()
                    with httpx.Client(base_url=url, timeout=120) as client:
                        client.post("/v1/load_lora_adapter", json={"lora_name": f"{workload}@v2", "lora_path": str(adapter)}).raise_for_status()
                        client.post(f"/v1/workloads/{workload}/route", json={"lora_name": f"{workload}@v2"}).raise_for_status()
                    swap_ms = 1000 * (time.perf_counter() - started)
            finally:
                stop.set()
                process.join(timeout=60)
        if context.config.task == "classification":  # the floor, from the tokens the tree path ran in the identity check
            tokens = identity[workload]["bf16_served"]["tokens_per_request"]
            prompt_tokens = identity[workload]["bf16_served"]["prompt_tokens_per_request"]
            flops = _flops_per_request(base, adapter, tokens)
            tree_tokens = identity[workload]["bf16_served"]["tree_tokens_per_request"]
            floors[workload] = {
                "prompt_tokens": prompt_tokens, "packed_prompt_tokens": tokens - tree_tokens, "tree_tokens": tree_tokens,
                "gflop_per_request": flops / 1e9,
            }

    console = Console(width=max(Console().width, 120))
    table = Table(title=f"serving through HTTP, one input per request, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    for column in ("workload", "path", "concurrency", "requests/s", "p50 ms", "p95 ms", "failures"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["workload"], row["path"], str(row["concurrency"]), f"{row['rps']:.1f}", f"{row['p50_ms']:.0f}", f"{row['p95_ms']:.0f}", str(row["failures"])
        )
    console.print(table)
    check = Table(title="identity on golden against stepwise decoding with the unmerged adapter (same inputs)")
    for column in ("workload", "path, arithmetic", "items", "answers differ", "max |confidence gap|", "gaps > 1e-3"):
        check.add_column(column, justify="right")
    for workload, found in identity.items():
        for name, label in (
            ("fp32", "tree, fp32"), ("bf16", "tree, bf16"), ("fp32_served", "served (merged), fp32"), ("bf16_served", "served (merged), bf16"),
            ("bf16_floor", "bf16 floor: stepwise alone vs batched"),
        ):
            if name not in found:
                continue
            item = found[name]
            check.add_row(workload, label, str(item["items"]), str(item["answers_differ"]), f"{item['max_confidence_gap']:.1e}", str(item["over_1e-3"]))
    console.print(check)
    for workload, floor in floors.items():
        seconds = floor["gflop_per_request"] / (peak["bf16_tflops"] * 1000)
        print(
            f"{workload} floor: {floor['gflop_per_request']:.1f} GFLOP per request ({floor['prompt_tokens']:.1f}-token prompts run as "
            f"{floor['packed_prompt_tokens']:.1f}, their shared opening once a batch of {PACKED_ROWS}, + {floor['tree_tokens']:.1f} "
            f"tree tokens) over the measured bf16 peak {peak['bf16_tflops']:.2f} TFLOP/s = "
            f"{1000 * seconds:.1f} ms, {1 / seconds:.0f} requests/s at full use"
        )
    print(f"adapter hot swap (load and merge + route switch): {swap_ms:.0f} ms; total {time.perf_counter() - started_all:.0f} s")
    tree_rows = {r["concurrency"]: r for r in rows if r["workload"] == "banking-intent" and r["path"] == DEFAULT_PATH}
    args.json.write_text(json.dumps({
        "rows": rows, "identity": identity, "floors": floors, "peak": peak, "swap_ms": swap_ms, "requests": count,
        "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
    }, indent=1))
    print(f"rps_c8={tree_rows[8]['rps']:.1f} p50_c1_ms={tree_rows[1]['p50_ms']:.0f}")


if __name__ == "__main__":
    main()
