"""Drift-check benchmark: time and peak memory of `detect_drift` on 1k, 10k and 100k-sample windows
with cached reference embeddings, and the embedding throughput measured separately.

    .venv/bin/python bench/drift.py [--quick] [--json bench/drift.json]

Window texts are Banking77 rows (rewritten for half of each window, so there is drift to find);
a window's embeddings are tiled from one embedded block so the 100k run measures the tests, not
100k embeddings (the embedding rate is its own row: divide to get a full window's cost).
The last line is the headline `drift_100k_s=<embedding + tests for a 100k window>` (the embedding
part extrapolated from the measured rate).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="embed fewer texts (still runs 1k, 10k and 100k windows)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("drift.json"))
    args = parser.parse_args()

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from flywheel.config import load_settings
    from models.drift import DriftConfig, DriftReference, DriftWindow, Embedder, detect_drift
    from models.scenarios import rephrase
    from models.workload import build_task_spec, load_splits

    settings = load_settings()
    config = settings.workload("banking-intent")
    spec = build_task_spec("banking-intent", config, settings.require_data_dir())
    splits = load_splits(spec, config, settings.require_data_dir())
    embedder = Embedder(torch_threads=settings.torch_threads)
    rng = random.Random(0)
    reference_texts = list(splits["train"]["text"][:2000])
    block = 500 if args.quick else 2000
    window_texts = [rephrase(t, rng) if i % 2 else t for i, t in enumerate(splits["validation"]["text"][:block] * 4)][:block]

    cache = Path(settings.state_dir) / "bench-embeddings"
    embedder.encode_cached(reference_texts[:8], cache)  # load the model outside the timings
    started = time.perf_counter()
    reference_emb = embedder.encode_cached(reference_texts, cache)
    started = time.perf_counter()
    window_block = embedder.encode(window_texts)
    embed_seconds = time.perf_counter() - started
    embed_rate = len(window_texts) / embed_seconds

    reference = DriftReference(reference_emb, list(splits["train"]["label"][:2000]), np.full(len(reference_emb), 0.85))
    rows = []
    for size in (1_000, 10_000, 100_000):
        reps = -(-size // len(window_block))
        embeddings = np.tile(window_block, (reps, 1))[:size]
        labels = (list(splits["validation"]["label"]) * (size // len(splits["validation"]) + 1))[:size]
        confidences = np.random.default_rng(size).uniform(0.3, 1.0, size)
        window = DriftWindow(embeddings, labels, confidences)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        report = detect_drift(reference, window, DriftConfig(), "classification")
        seconds = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append({
            "window": size, "tests_s": seconds, "embed_s_estimate": size / embed_rate,
            "total_s_estimate": seconds + size / embed_rate, "peak_rss_mb": peak_mb,
            "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "drifted": report.drifted,
        })

    table = Table(title=f"drift check, {os.cpu_count()} CPUs, reference {len(reference_emb)} cached embeddings")
    for column in ("window", "tests s", "embedding s (est.)", "total s (est.)", "peak RSS MB", "drifted"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['window']:,}", f"{row['tests_s']:.2f}", f"{row['embed_s_estimate']:.0f}", f"{row['total_s_estimate']:.0f}", f"{row['peak_rss_mb']:.0f}", str(row["drifted"]))
    Console().print(table)
    print(f"embedding throughput: {embed_rate:.0f} texts/s ({len(window_texts)} texts, all-MiniLM-L6-v2, max 64 tokens)")
    args.json.write_text(json.dumps({"rows": rows, "embed_texts_per_s": embed_rate, "cpus": os.cpu_count()}, indent=1))
    print(f"drift_100k_s={rows[-1]['total_s_estimate']:.1f}")


if __name__ == "__main__":
    main()
