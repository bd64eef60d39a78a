"""Serving benchmark: requests/s and p50/p95 latency at concurrency 1, 8, 32, batched vs unbatched,
and the adapter hot-swap time, with the real base model and a Banking77 adapter.

    .venv/bin/python bench/serve.py [--quick] [--requests N] [--json bench/serve.json]

The adapter is the registry's banking-intent champion when there is one (`flywheel train
banking-intent` first), else a small one trained here (a minute). Prints a table; the last line
is the headline `rps_c8=<batched requests/s at concurrency 8>`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _adapter(settings, workdir: Path) -> Path:
    from slm_flywheel.tracking import mlflow_client
    from slm_flywheel.models.base_model import resolve_base_model
    from slm_flywheel.models.data import sample_training_set
    from slm_flywheel.models.registry import CHAMPION, alias_version, download_adapter
    from slm_flywheel.models.training import train_lora
    from slm_flywheel.models.context import resolve_workload

    record = alias_version(mlflow_client(settings), "banking-intent", CHAMPION)
    if record is not None:
        return download_adapter(mlflow_client(settings), record, settings.adapters_dir)
    context = resolve_workload(settings, "banking-intent")
    config, spec = context.config, context.spec
    train = sample_training_set(context.splits["train"], 320, 1, True)
    base = resolve_base_model(settings.base_model, settings.models_dir)
    return train_lora(spec, base, train, workdir / "bench-adapter", config.training.model_copy(update={"max_examples": 320})).adapter_dir


def _load(url: str, texts: list[str], concurrency: int, count: int) -> dict[str, float]:
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
                response = client.post("/v1/workloads/banking-intent/predict", json={"inputs": [texts[index % len(texts)]]})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a run of a couple of minutes)")
    parser.add_argument("--requests", type=int, default=None, help="requests per configuration")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("serve.json"))
    args = parser.parse_args()
    count = args.requests or (64 if args.quick else 256)

    import tempfile

    from rich.console import Console
    from rich.table import Table

    from slm_flywheel.config import load_settings
    from slm_flywheel.models.context import resolve_workload
    from slm_flywheel.serving.app import create_app
    from slm_flywheel.serving.server import BackgroundServer, build_state

    settings = load_settings()
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    adapter = _adapter(settings, workdir)
    texts = list(resolve_workload(settings, "banking-intent").splits["golden"]["text"])
    settings = settings.model_copy(update={"home": workdir / "state"})
    rows = []
    swap_ms = None
    for mode, max_batch in (("unbatched", 1), ("batched", 32)):
        serving = settings.serving.model_copy(update={"max_batch": max_batch, "batch_wait_ms": 5.0, "admin_token": None, "adapter_roots": [adapter.parent]})
        state = build_state(settings.model_copy(update={"serving": serving}), f"bench-{mode}", load_champions=False)
        state.engine.load_adapter("banking-intent@v1", adapter).result()
        with BackgroundServer(create_app(state)) as server:
            _load(server.url, texts, 4, 16)  # warm-up
            for concurrency in (1, 8, 32):
                result = _load(server.url, texts, concurrency, count)
                rows.append({"mode": mode, "concurrency": concurrency, **result})
            if mode == "batched":
                import httpx

                started = time.perf_counter()
                with httpx.Client(base_url=server.url, timeout=120) as client:
                    client.post("/v1/load_lora_adapter", json={"lora_name": "banking-intent@v2", "lora_path": str(adapter)}).raise_for_status()
                    client.post("/v1/workloads/banking-intent/route", json={"lora_name": "banking-intent@v2"}).raise_for_status()
                swap_ms = 1000 * (time.perf_counter() - started)
        state.engine.close()
        state.writer.close()

    table = Table(title=f"serving: real base model, banking-intent adapter, {count} requests per row, {os.cpu_count()} CPUs")
    for column in ("mode", "concurrency", "requests/s", "p50 ms", "p95 ms", "failures"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["mode"], str(row["concurrency"]), f"{row['rps']:.1f}", f"{row['p50_ms']:.0f}", f"{row['p95_ms']:.0f}", str(row["failures"]))
    Console().print(table)
    print(f"adapter hot swap (load + verify-free route switch): {swap_ms:.0f} ms")
    args.json.write_text(json.dumps({"rows": rows, "swap_ms": swap_ms, "requests": count, "cpus": os.cpu_count()}, indent=1))
    batched_c8 = next(r["rps"] for r in rows if r["mode"] == "batched" and r["concurrency"] == 8)
    print(f"rps_c8={batched_c8:.1f}")


if __name__ == "__main__":
    main()
