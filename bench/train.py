"""Training benchmark: LoRA SFT throughput of the project's `train_lora` against a plain trl
`SFTTrainer` with default settings, on the same examples of the same base model, with both
adapters' golden accuracy and each path's share of the machine's measured matmul peak.

    .venv/bin/python bench/train.py [--quick] [--workload banking-intent] [--examples N] [--golden N] [--threads N] [--json bench/train.json]

Each path trains in a fresh process (so its peak RSS is its own), then scores its adapter on the
same golden subset with the project's evaluation (`evaluate_model`: constrained decoding, the
`evaluate` metrics), so the accuracies are comparable. Plain trl is `SFTTrainer(model=<path>,
peft_config=LoraConfig(r, alpha, target_modules=<the workload's>))` on a prompt/completion dataset
with a default `SFTConfig` apart from output_dir, epochs, batch size and learning rate (the
workload's), report_to none, use_cpu on a CPU (its default bf16 is refused there otherwise) and no
progress bar; so fp32 weights, bf16 autocast, activation
checkpointing, LoRA on every layer. The project path is `train_lora` with the workload's
`TrainingConfig` (bf16 weights where the hardware has bf16 matmuls, LoRA on the top
`lora_layers` layers, loss head on completion positions only, batches of similar lengths).

Seconds are `trainer.train()` only (model load and tokenization excluded, for both). Tokens are
prompt + completion + EOS as the project tokenizes them: one count for both paths.

FLOPs are the work a LoRA step needs, the same formula for both paths (an estimate):

    F = 2·N_frozen·T + 2·N_bp·T + 6·N_lora·T + 4·N_head·T_loss

N_frozen: the base's decoder linear weights (every token goes forward through them); N_bp: those
of the layers the gradient flows through (the lowest adapted layer and above: backward to the
inputs only, the frozen weights get no gradient); N_lora: adapter weights (forward, backward to
inputs, weight gradient); N_head: the LM head (forward + backward to its input) on the T_loss
positions that carry a loss. Not counted: attention scores (< 1% at these lengths), norms and
other elementwise work, padding, activation-checkpointing recompute and LM-head rows without a
loss. Each path's FLOP/s is compared with the best of a few square matmuls (2048³ on a CPU) in
the dtype its matmuls run in (bf16 for both where the CPU has AVX-512 BF16 or AMX, or on a GPU; else fp32).

On a machine shared with other jobs, torch's default of one thread per core stalls at every
parallel region whenever another process holds a core (10-20x slower on 2 cores): `--threads 1`
keeps a shared run meaningful, and the output says how much CPU other processes took meanwhile.

`--ablation` adds one project run per factor between the two paths (`ablation_rows`), each with its
tokens/s and golden accuracy on the same items, so the cause of an accuracy gap is measured.

Prints a table; the last line is the headline `speedup_vs_trl=<project tokens/s ÷ plain-trl tokens/s>
golden_delta=<project minus trl> mcnemar_p=<p that trl is better> peak_fraction=<project's share of the peak>`.
Targets (issue #16): speedup ≥ 3 at equal or better golden accuracy (equal: plain trl not better at
the 5% level, one-sided exact McNemar on the paired golden items), and ≥ 40% of the matmul peak.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

@dataclass(frozen=True)
class ParamCounts:
    """What the FLOP estimate needs to know about a base model and an adapter."""

    layer_params: tuple[int, ...]  # decoder linear weights of layer 0, 1, ...
    head_params: int  # the LM head (tied or not)
    lora_params: int
    lowest_adapted_layer: int

    @property
    def backprop_params(self) -> int:
        return sum(self.layer_params[self.lowest_adapted_layer :])


def training_flops(counts: ParamCounts, tokens: int, loss_tokens: int) -> float:
    """2·N_frozen·T + 2·N_bp·T + 6·N_lora·T + 4·N_head·T_loss (see the module docstring)."""
    forward = 2 * sum(counts.layer_params) * tokens
    backward = 2 * counts.backprop_params * tokens
    lora = 6 * counts.lora_params * tokens
    head = 4 * counts.head_params * loss_tokens
    return float(forward + backward + lora + head)


def count_params(base_dir: Path, adapter_dir: Path) -> ParamCounts:
    """Read the counts from the safetensors headers of the base model and of a saved peft adapter."""
    from safetensors import safe_open

    layers: dict[int, int] = {}
    head = 0
    for file in sorted(base_dir.glob("*.safetensors")):
        with safe_open(str(file), "pt") as weights:
            for name in weights.keys():
                shape = weights.get_slice(name).get_shape()
                layer = re.search(r"\blayers\.(\d+)\.", name)
                if layer and len(shape) == 2:
                    layers[int(layer.group(1))] = layers.get(int(layer.group(1)), 0) + shape[0] * shape[1]
                elif name.endswith(("lm_head.weight", "embed_tokens.weight")):
                    head = shape[0] * shape[1]  # tied: the embedding is the head
    lora, adapted = 0, set()
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as weights:
        for name in weights.keys():
            shape = weights.get_slice(name).get_shape()
            lora += shape[0] * shape[1] if len(shape) == 2 else shape[0]
            layer = re.search(r"\blayers\.(\d+)\.", name)
            if layer:
                adapted.add(int(layer.group(1)))
    return ParamCounts(tuple(layers.get(i, 0) for i in range(max(layers) + 1)), head, lora, min(adapted, default=0))


def matmul_peak(dtype_name: str, device: str) -> float:
    """FLOP/s of the best of 10 square matmuls (2048³ on a CPU, 8192³ on a GPU) after 3 warm-ups."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    size = 8192 if device == "cuda" else 2048
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    best = float("inf")
    for attempt in range(13):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if attempt >= 3:
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def ablation_rows(training: Any, num_layers: int) -> list[tuple[str, dict[str, Any]]]:
    """The project path with one factor changed per row (mostly to plain trl's choice), then with all of trl's at once.

    Overrides are `TrainingConfig` fields. Plain trl: LoRA on every layer, fp32 frozen weights under
    bf16 autocast, linear decay without warmup, random batches, completion-only loss (its default
    for prompt/completion data), the same learning rate and batch size (the benchmark passes the
    workload's), so as many steps as the examples fill, however few.
    The layers row is the other choice: the top half if the workload adapts every layer, else all.
    """
    trl_settings = {"lora_layers": None, "base_weights": "fp32", "lr_scheduler": "linear", "warmup_ratio": 0.0, "group_by_length": "off",
                    "min_steps": 0}
    every_layer = training.lora_layers is None or training.lora_layers >= num_layers
    layers = (f"LoRA on the top {num_layers // 2} layers", {"lora_layers": num_layers // 2}) if every_layer else ("LoRA on all layers", {"lora_layers": None})
    return [
        layers,
        ("fp32 frozen weights", {"base_weights": "fp32"}),
        ("linear, no warmup", {"lr_scheduler": "linear", "warmup_ratio": 0.0}),
        ("random batches", {"group_by_length": "off"}),
        ("full batches however few steps (min_steps 0)", {"min_steps": 0}),
        ("batches of similar prompt lengths", {"group_by_length": "prompt"}),
        ("loss on prompt too", {"completion_only_loss": False}),
        ("learning rate /2", {"learning_rate": training.learning_rate / 2}),
        ("learning rate x2", {"learning_rate": training.learning_rate * 2}),
        ("all of trl's settings", trl_settings),
    ]


@dataclass(frozen=True)
class Job:
    """One path's run: the same examples, base model and golden subset for every path."""

    path: str
    workload: str
    base_path: str
    texts: list[str]
    labels: list[str]
    golden_texts: list[str]
    golden_labels: list[str]
    output_dir: str
    threads: int | None
    # This row's TrainingConfig fields, resolved once in main() for every row: a row never rereads
    # flywheel.yaml, so an edit during a long run cannot change the rows still to come.
    training: dict[str, Any] = field(default_factory=dict)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine from /proc/stat, CPU seconds of this process)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan"), usage.ru_utime + usage.ru_stime
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def _train_plain_trl(spec: Any, job: Job, config: Any, output_dir: Path) -> tuple[float, bool]:
    """Plain trl: defaults apart from what it takes to run the same job. Returns (seconds, bf16)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_dict({
        "prompt": [spec.prompt(text) for text in job.texts],
        "completion": [spec.completion(label) for label in job.labels],
    })
    args = SFTConfig(
        output_dir=str(output_dir / "trainer"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),  # bf16 on a CPU is refused without it
        disable_tqdm=True,  # cosmetic: no progress bar in the benchmark's output
    )
    peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=config.target_modules, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=job.base_path, args=args, train_dataset=dataset, peft_config=peft_config)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(str(output_dir))
    return seconds, bool(args.bf16)


def run_path(job: Job) -> dict[str, Any]:
    """Train one path in this (fresh) process, record its peak RSS, then score it on the golden subset."""
    import torch
    from datasets import Dataset

    from slm_flywheel.config import TrainingConfig, load_settings
    from slm_flywheel.models.evaluation import evaluate_model
    from slm_flywheel.models.training import train_lora
    from slm_flywheel.models.context import resolve_workload

    if job.threads:
        torch.set_num_threads(job.threads)
    settings = load_settings()
    context = resolve_workload(settings, job.workload)
    config, spec = context.config, context.spec
    training = TrainingConfig.model_validate(job.training)
    output_dir = Path(job.output_dir)
    machine_before, own_before = _cpu_seconds()
    if job.path == "project":
        train_set = Dataset.from_dict({"text": job.texts, "label": job.labels})
        result = train_lora(spec, job.base_path, train_set, output_dir, training)
        seconds, bf16 = result.seconds, result.bf16
    else:
        seconds, bf16 = _train_plain_trl(spec, job, training, output_dir)
    peak_rss = _peak_rss_mb()
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    machine_after, own_after = _cpu_seconds()
    # CPU time other processes took while this path trained (model load included): 0 on a quiet machine.
    others_cpu_s = max(0.0, (machine_after - machine_before) - (own_after - own_before))
    golden = evaluate_model(spec, job.base_path, output_dir, job.golden_texts, job.golden_labels, config.eval_batch_size)
    return {
        "path": job.path, "train_s": seconds, "bf16": bf16, "peak_rss_mb": peak_rss, "gpu_peak_mb": gpu_peak,
        "threads": torch.get_num_threads(), "cpu_s": own_after - own_before, "others_cpu_s": others_cpu_s,
        "golden": golden.metrics, "golden_correct": golden.correct,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="240 examples, 308 golden items (about 2 minutes on a quiet 2-core box)")
    parser.add_argument("--workload", default="banking-intent")
    parser.add_argument("--examples", type=int, default=None, help="training examples for both paths (default 240 quick, 1280 full)")
    parser.add_argument("--golden", type=int, default=None, help="golden items, spread over labels (default 308 quick, 770 full)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the peak and both paths (default: torch's, one per core)")
    parser.add_argument("--ablation", action="store_true", help="also train the project path once per factor set to plain trl's (ABLATION)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("train.json"))
    args = parser.parse_args()
    examples = args.examples or (240 if args.quick else 1280)
    golden_size = args.golden or (308 if args.quick else 770)

    import torch
    from rich.console import Console
    from rich.table import Table

    from slm_flywheel.config import load_settings
    from slm_flywheel.models.base_model import resolve_base_model
    from slm_flywheel.models.data import sample_training_set
    from slm_flywheel.models.gates import mcnemar_exact
    from slm_flywheel.models.inference import load_tokenizer
    from slm_flywheel.models.training import tokenize_examples
    from slm_flywheel.models.context import resolve_workload

    started = time.perf_counter()
    settings = load_settings()
    context = resolve_workload(settings, args.workload)
    config, spec, splits = context.config, context.spec, context.splits
    stratify = spec.task == "classification"
    train_set = sample_training_set(splits["train"], examples, config.training.seed, stratify)
    golden = sample_training_set(splits["golden"], golden_size, config.training.seed, stratify)
    base_path = resolve_base_model(settings.base_model, settings.models_dir)
    tokenized = tokenize_examples(spec, load_tokenizer(base_path), train_set, config.training.max_length)
    tokens = int(sum(len(ids) for ids in tokenized["input_ids"]) * config.training.epochs)
    loss_tokens = int(sum(sum(mask) for mask in tokenized["completion_mask"]) * config.training.epochs)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peaks = {dtype: matmul_peak(dtype, device) for dtype in ("bf16", "fp32")}

    rows: list[tuple[str, str, dict[str, Any]]] = [("project", "project", {}), ("plain-trl", "plain-trl", {})]
    if args.ablation:
        num_layers = json.loads((Path(base_path) / "config.json").read_text())["num_hidden_layers"]
        rows += [(name, "project", overrides) for name, overrides in ablation_rows(config.training, num_layers)]
    workdir = tempfile.TemporaryDirectory(prefix="bench-train-")
    runs: dict[str, dict[str, Any]] = {}
    for index, (name, path, overrides) in enumerate(rows):
        training = {**config.training.model_dump(), "max_examples": len(train_set), **overrides}
        job = Job(path, args.workload, base_path, list(train_set["text"]), list(train_set["label"]),
                  list(golden["text"]), list(golden["label"]), str(Path(workdir.name) / f"run-{index}"), args.threads, training)
        # A fresh process per path: clean peak RSS, no allocator or thread-pool state carried over.
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            run = pool.submit(run_path, job).result()
        counts = count_params(Path(base_path), Path(job.output_dir))
        row_loss_tokens = loss_tokens if overrides.get("completion_only_loss", True) else tokens
        flops = training_flops(counts, tokens, row_loss_tokens)
        dtype = "bf16" if run["bf16"] else "fp32"
        runs[name] = {
            **run, "overrides": overrides, "tokens": tokens, "loss_tokens": row_loss_tokens, "examples": examples,
            "tokens_per_s": tokens / run["train_s"], "examples_per_s": examples * config.training.epochs / run["train_s"],
            "flops": flops, "flop_per_s": flops / run["train_s"], "peak_dtype": dtype,
            "lora_params": counts.lora_params, "backprop_layers": len(counts.layer_params) - counts.lowest_adapted_layer,
        }
        print(f"{name}: {run['train_s']:.1f} s, golden {run['golden']}", flush=True)
    workdir.cleanup()
    # The peak again after the rows, and the higher of the two counts: one measurement before the
    # rows once read 0.21 TFLOP/s where fresh processes read 0.40-0.42 minutes later, which would
    # have doubled every row's share of the peak.
    before = peaks
    peaks = {dtype: max(before[dtype], matmul_peak(dtype, device)) for dtype in before}
    for run in runs.values():
        run["peak_fraction"] = run["flop_per_s"] / peaks[run["peak_dtype"]]

    project, trl = runs["project"], runs["plain-trl"]
    speedup = project["tokens_per_s"] / trl["tokens_per_s"]
    metric = "accuracy" if spec.task == "classification" else "slot_f1"
    correct = {name: run.pop("golden_correct") for name, run in runs.items()}
    for name, run in runs.items():
        # Paired on the same golden items: is plain trl better than this row (one-sided exact McNemar)?
        run["vs_trl"] = {"delta": run["golden"][metric] - trl["golden"][metric],
                         "p_trl_better": mcnemar_exact(correct[name], correct["plain-trl"])[2]}
    only_project, only_trl, p_project_better = mcnemar_exact(correct["plain-trl"], correct["project"])
    p_trl_better = project["vs_trl"]["p_trl_better"]
    delta = project["vs_trl"]["delta"]
    targets = {
        "speedup_ge_3": speedup >= 3.0,
        # "Equal" means within the noise of the golden subset: plain trl not better at the 5% level.
        "golden_not_worse": delta >= 0.0 or p_trl_better >= 0.05,
        "peak_fraction_ge_0.4": project["peak_fraction"] >= 0.4,
    }

    table = Table(title=(
        f"LoRA training, {args.workload}: {examples} examples ({tokens:,} tokens), golden {len(golden)} items, "
        f"{device}, {os.cpu_count()} CPUs, {project['threads']} threads"
    ))
    columns = ("path", "train s", "tokens/s", "examples/s", "peak RSS MB", "TFLOP/s", "of peak", "backprop layers",
               f"golden {metric}", "invalid", "vs trl", "p trl better")
    for column in columns:
        table.add_column(column, justify="right")
    for path, run in runs.items():
        table.add_row(
            path, f"{run['train_s']:.1f}", f"{run['tokens_per_s']:.0f}", f"{run['examples_per_s']:.1f}", f"{run['peak_rss_mb']:.0f}",
            f"{run['flop_per_s'] / 1e12:.3f}", f"{100 * run['peak_fraction']:.1f}% {run['peak_dtype']}", str(run["backprop_layers"]),
            f"{run['golden'][metric]:.3f}", f"{run['golden'].get('invalid_rate', 0.0):.1%}",
            f"{run['vs_trl']['delta']:+.3f}", "" if path == "plain-trl" else f"{run['vs_trl']['p_trl_better']:.3f}",
        )
    Console(width=None if sys.stdout.isatty() else 130).print(table)
    print(
        f"matmul peak ({device}, the higher of before and after the rows): bf16 {peaks['bf16'] / 1e12:.2f} TFLOP/s "
        f"(before {before['bf16'] / 1e12:.2f}), fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s (before {before['fp32'] / 1e12:.2f})"
    )
    print(
        f"golden {metric}: project - plain trl = {delta:+.3f} on {len(golden)} items (only project right {only_project}, only trl right "
        f"{only_trl}; exact McNemar p project better {p_project_better:.3f}, p trl better {p_trl_better:.3f})"
    )
    others = {path: run["others_cpu_s"] for path, run in runs.items()}
    shared = any(seconds > 0.05 * run["train_s"] * (os.cpu_count() or 1) for seconds, run in zip(others.values(), runs.values()))
    print(
        "CPU seconds other processes used while each path loaded and trained: "
        + ", ".join(f"{path} {seconds:.0f}" for path, seconds in others.items())
        + f" ({'shared' if shared else 'quiet'} machine)"
    )
    print("targets: " + ", ".join(f"{name} {'met' if met else 'NOT met'}" for name, met in targets.items()))
    args.json.write_text(json.dumps({
        "workload": args.workload, "quick": args.quick, "examples": examples, "golden_items": len(golden),
        "tokens": tokens, "loss_tokens": loss_tokens, "device": device, "cpus": os.cpu_count(),
        "matmul_peak_flop_per_s": peaks, "matmul_peak_before_flop_per_s": before, "paths": runs, "speedup_vs_trl": speedup,
        "golden_delta": delta,
        "mcnemar": {"only_project": only_project, "only_trl": only_trl, "p_project_better": p_project_better, "p_trl_better": p_trl_better},
        "targets": targets, "shared_machine": shared, "wall_s": time.perf_counter() - started,
    }, indent=1))
    print(f"speedup_vs_trl={speedup:.2f} golden_delta={delta:+.3f} mcnemar_p={p_trl_better:.3f} peak_fraction={project['peak_fraction']:.3f}")


if __name__ == "__main__":
    main()
