"""Drift-check benchmark: time and peak memory of the drift check (embed the window, run the tests)
on 1k, 10k and 100k-sample windows of real texts with cached reference embeddings, and the
embedding throughput (bf16 and fp32) measured on its own.

    .venv/bin/python bench/drift.py [--quick] [--json bench/drift.json]

Window texts are Banking77 requests outside the reference, every other one rewritten by the
`new-phrasing` scenario (so there is drift to find; each rewrite is drawn afresh, so a 100k window
holds ~50k distinct rewritten texts), cycled to the window size. Each window goes through the check
as `detect_drift_in_window` runs it (`embed_window` under the configured `max_embedded`, then
`detect_drift`), less the MLflow logging and the plot. Peak RSS is the process's high-water mark
during that window's check alone (reset through /proc/self/clear_refs before each), and CPU s
its process time (both cores busy: about twice the wall time; much less on a shared machine).

The full run also checks the 100k window with every row embedded (`max_embedded` = 100k: what
bf16 alone buys). `--quick` estimates that row from the measured bf16 rate (marked "est.") and
embeds fewer texts for the throughput rows; every other number is measured in both modes.
The last line is the headline `drift_100k_s=<seconds of the 100k-window check>`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where it can't."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="estimate the uncapped 100k row, embed fewer texts for throughput")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("drift.json"))
    args = parser.parse_args()

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from slm_flywheel.config import load_settings
    from slm_flywheel.models.drift import DriftReference, DriftWindow, Embedder, detect_drift, embed_window
    from slm_flywheel.models.scenarios import rephrase
    from slm_flywheel.models.context import resolve_workload

    load_before = os.getloadavg()[0]
    settings = load_settings()
    context = resolve_workload(settings, "banking-intent")
    config, splits = context.config.drift, context.splits
    embedder = Embedder(torch_threads=settings.torch_threads)
    reference_texts = list(splits["train"]["text"][:2000])
    pool = [(text, label) for split, start in (("train", 2000), ("validation", 0)) for text, label in zip(splits[split]["text"][start:], splits[split]["label"][start:])]
    rng = random.Random(0)

    def window_of(size: int) -> tuple[list[str], list[str]]:
        rows = [pool[i % len(pool)] for i in range(size)]
        return [rephrase(text, rng) if i % 2 else text for i, (text, _) in enumerate(rows)], [label for _, label in rows]

    # Model load, first-call kernel set-up and the reference cache stay outside the timings.
    cache = Path(settings.state_dir) / "bench-embeddings"
    embedder.encode(window_of(256)[0])
    reference = DriftReference(embedder.encode_cached(reference_texts, cache), list(splits["train"]["label"][:2000]), np.full(2000, 0.85))

    def check(texts: list[str], labels: list[str], max_embedded: int) -> dict:
        confidences = np.random.default_rng(len(texts)).uniform(0.3, 1.0, len(texts))
        peak_reset = _reset_peak_rss()
        started, cpu_started = time.perf_counter(), time.process_time()
        embedded = embed_window(embedder, texts, max_embedded, config.seed)
        embedded_at = time.perf_counter()
        window = DriftWindow(embedded.vectors, labels, confidences, embedded=embedded.positions)
        report = detect_drift(reference, window, config, "classification")
        done, cpu_s = time.perf_counter(), time.process_time() - cpu_started
        return {
            "window": len(texts), "embedded": len(embedded.positions), "max_embedded": max_embedded,
            "embed_s": embedded_at - started, "tests_s": done - embedded_at, "total_s": done - started, "cpu_s": cpu_s,
            "peak_rss_mb": _peak_rss_mb() if peak_reset else None, "drifted": report.drifted, "measured": True,
        }

    rows = []
    for size in (1_000, 10_000, 100_000):
        texts, labels = window_of(size)
        rows.append(check(texts, labels, config.max_embedded))
    capped = rows[-1]

    # Throughput: the same texts through the configured embedder and through fp32.
    block = window_of(500 if args.quick else 2000)[0]
    started = time.perf_counter()
    fast = embedder.encode(block)
    fast_rate = len(block) / (time.perf_counter() - started)

    if args.quick:
        rows.append({
            **capped, "embedded": capped["window"], "max_embedded": capped["window"], "embed_s": capped["window"] / fast_rate,
            "total_s": capped["window"] / fast_rate + capped["tests_s"], "cpu_s": None, "peak_rss_mb": None, "drifted": None, "measured": False,
        })
    else:
        texts, labels = window_of(100_000)
        rows.append(check(texts, labels, len(texts)))

    exact_embedder = Embedder(torch_threads=settings.torch_threads, bf16=False)
    exact_embedder.encode(block[:256])
    started = time.perf_counter()
    exact = exact_embedder.encode(block)
    exact_rate = len(block) / (time.perf_counter() - started)
    cosine = (fast * exact).sum(axis=1)
    precision = "bf16" if embedder.bf16 else "fp32"
    throughput = {
        "precision": precision, "texts": len(block), "texts_per_s": fast_rate, "fp32_texts_per_s": exact_rate,
        "cosine_to_fp32_min": float(cosine.min()), "cosine_to_fp32_mean": float(cosine.mean()),
    }

    table = Table(title=f"drift check, {os.cpu_count()} CPUs, {precision}, max_embedded {config.max_embedded:,}, reference {len(reference.embeddings):,} cached embeddings")
    for column in ("window", "rows embedded", "embedding s", "tests s", "total s", "CPU s", "peak RSS MB", "drifted"):
        table.add_column(column, justify="right")
    for row in rows:
        mark = "" if row["measured"] else " (est.)"
        table.add_row(
            f"{row['window']:,}", f"{row['embedded']:,}", f"{row['embed_s']:.1f}{mark}", f"{row['tests_s']:.2f}", f"{row['total_s']:.1f}{mark}",
            "-" if row["cpu_s"] is None else f"{row['cpu_s']:.1f}",
            "-" if row["peak_rss_mb"] is None else f"{row['peak_rss_mb']:.0f}", "-" if row["drifted"] is None else str(row["drifted"]),
        )
    Console(width=140).print(table)
    print(
        f"embedding throughput ({len(block):,} window texts, all-MiniLM-L6-v2, max {embedder.max_seq_length} tokens): "
        f"{precision} {fast_rate:.0f} texts/s, fp32 {exact_rate:.0f} texts/s; cosine to fp32 min {cosine.min():.5f}, mean {cosine.mean():.5f}"
    )
    load_after = os.getloadavg()[0]
    print(f"1-min load average {load_before:.1f} before, {load_after:.1f} after ({os.cpu_count()} CPUs: above that, the machine was shared)")
    if not rows[-1]["measured"]:
        print(f"(est.): the uncapped 100k row is 100,000 / {fast_rate:.0f} texts/s plus the measured tests, not a run")
    args.json.write_text(json.dumps({"rows": rows, "throughput": throughput, "quick": args.quick, "cpus": os.cpu_count(), "load_average": [load_before, load_after]}, indent=1))
    print(f"drift_100k_s={capped['total_s']:.1f}")


if __name__ == "__main__":
    main()
