"""Label-efficiency benchmark: drifted-slice accuracy recovered per teacher label bought, for the
project's selection (`select_informative`, what `nightly-retrain` buys labels for) against random
selection (`select_random`) at equal budgets.

    .venv/bin/python -m bench.loop [--quick] [--json bench/loop.json] [--budgets 10,20] [--seeds 0,1]

The demo's loop on a Banking77 slice, built from `models/` directly (no Prefect, MLflow or
serving): a launch champion trained on launch data (the late intents capped at `rare_cap`
examples); a window of `prior-shift` traffic (70% on the late intents) that the champion answers
and that is embedded; for each budget, strategy and seed, that many labels from the simulated
teacher (5% wrong), a retrain the way the nightly flow does it (the champion's data replayed plus
the new labels, a share held out for the gate, warm start if `relabel.retrain_mode` says so) and
the retrained adapter's accuracy on the drifted slice: golden rows (never in the window nor in any
training set) weighted to the prior-shift mix, `shift_share * late + (1 - shift_share) * usual`.

Recovery level: the accuracy random selection reaches at its largest budget. Labels a strategy
needs to reach it: where its mean accuracy curve, piecewise linear through (0, champion) and
(budget, accuracy) points, first crosses it. The champion and its window answers are cached under
`<home>/bench/loop/<config hash>/` (`--fresh` retrains). The last line is the headline
`labels_ratio_vs_random=<labels informative needs / labels random needs>` (target <= 0.5).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import quiet_settings

if TYPE_CHECKING:
    import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The slice: 16 Banking77 intents, 4 of them late (12 of 77 in the demo; more here so the late
# intents carry enough golden rows to score), each usual intent with ~16 launch examples (the
# demo's 1,500 for 77). Batches of 8 for 2 epochs (52 steps): with the workload's batches of 16 the
# 208-example champion got usual intents 0.73 and late ones 0.07 right; with 8, 0.80 and 0.27.
SLICE = {"intents": 16, "late": 4, "launch_examples": 208, "golden_fraction": 0.15, "epochs": 2.0, "batch_size": 8, "slice_seed": 0}
SIZES = {
    "full": {"window": 600, "budgets": (10, 20, 40, 80), "seeds": (0, 1, 2)},
    "quick": {"window": 600, "budgets": (10, 20, 40), "seeds": (0,)},
}
STRATEGIES = ("informative", "random")


@dataclass(frozen=True)
class Cell:
    """One retrain: `budget` labels bought with `strategy` on the window of `seed`."""

    seed: int
    budget: int
    strategy: str
    bought: int  # teacher labels bought (valid answers)
    late_bought: int  # of them, on a late intent (by the hidden gold)
    distinct_bought: int
    trained_new: int  # bought minus the gate's held-out share
    accuracy: float  # the drifted slice (prior-shift weights)
    accuracy_late: float
    accuracy_usual: float
    train_s: float


def labels_to_reach(budgets: list[int], accuracies: list[float], level: float) -> float | None:
    """The first budget at which the piecewise-linear curve through (budget, accuracy) reaches `level`."""
    points = list(zip(budgets, accuracies))
    if points[0][1] >= level:
        return float(points[0][0])
    for (b0, a0), (b1, a1) in pairwise(points):
        if a1 >= level:
            return b0 + (b1 - b0) * (level - a0) / (a1 - a0) if a0 < level else float(b0)
    return None


def _slice_config(settings: Any) -> Any:
    """The banking-intent workload's config narrowed to the slice (see `SLICE`)."""
    from slm_flywheel.models.data import banking77_labels

    config = settings.workload("banking-intent")
    intents = sorted(random.Random(SLICE["slice_seed"]).sample(sorted(banking77_labels(settings.require_data_dir())), SLICE["intents"]))
    return config.model_copy(update={
        "labels": intents,
        "splits": config.splits.model_copy(update={"golden_fraction": SLICE["golden_fraction"]}),
        "launch": config.launch.model_copy(update={"late_count": SLICE["late"]}),
        "training": config.training.model_copy(update={"max_examples": SLICE["launch_examples"], "epochs": SLICE["epochs"], "batch_size": SLICE["batch_size"]}),
    })


def _accuracy(predictions: list[Any], golds: list[str], late: set[str], shift_share: float) -> tuple[float, float, float]:
    """(prior-shift weighted, late, usual) accuracy."""
    late_hits = [p.answer == g for p, g in zip(predictions, golds) if g in late]
    usual_hits = [p.answer == g for p, g in zip(predictions, golds) if g not in late]
    acc_late, acc_usual = sum(late_hits) / len(late_hits), sum(usual_hits) / len(usual_hits)
    return shift_share * acc_late + (1 - shift_share) * acc_usual, acc_late, acc_usual


def _retrain_set(replay: pd.DataFrame, bought: pd.DataFrame, relabel: Any) -> tuple[pd.DataFrame, int]:
    """The nightly retrain set from the bought labels, built as `build_training_set` builds it: the
    gate's share held out (the same stable split by id), then `retrain_rows` (the champion's data
    replayed, new labels winning over replayed rows with the same text). Returns the rows and how
    many are new."""
    from slm_flywheel.models.retrain import in_holdout, retrain_rows

    new = bought[~bought["id"].map(lambda item_id: in_holdout(item_id, relabel.holdout_share))]
    return retrain_rows(replay, new, relabel), len(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="budgets up to 40, one seed (under 5 minutes on 2 cores)")
    parser.add_argument("--budgets", type=lambda s: tuple(int(b) for b in s.split(",")), default=None, help="comma-separated label budgets")
    parser.add_argument("--seeds", type=lambda s: tuple(int(b) for b in s.split(",")), default=None, help="comma-separated window seeds")
    parser.add_argument("--fresh", action="store_true", help="retrain the champion and re-answer the windows (ignore the cache)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("loop.json"))
    args = parser.parse_args()
    sizes = {**SIZES["quick" if args.quick else "full"]}
    sizes["budgets"] = sorted(args.budgets or sizes["budgets"])
    sizes["seeds"] = args.seeds or sizes["seeds"]
    started = time.perf_counter()

    import numpy as np
    import pandas as pd
    from datasets import Dataset, Value, concatenate_datasets
    from rich.console import Console
    from rich.table import Table

    from slm_flywheel.models.base_model import resolve_base_model
    from slm_flywheel.models.drift import Embedder
    from slm_flywheel.models.inference import Prediction, Predictor, load_model, load_tokenizer
    from slm_flywheel.models.scenarios import launch_plan, launch_training_set, scenario_requests
    from slm_flywheel.models.selection import select_informative, select_random
    from slm_flywheel.models.teacher import SimulatedTeacher, TeacherItem
    from slm_flywheel.models.training import train_lora
    from slm_flywheel.models.context import WorkloadContext

    console = Console(stderr=True)
    settings = quiet_settings()
    config = _slice_config(settings)
    context = WorkloadContext(settings, "banking-intent", config)  # the slice, resolved by the one data-dir rule
    spec, splits = context.spec, context.splits
    plan = launch_plan(spec.task, spec.labels, config.launch)
    late = set(plan.late_labels)
    base = resolve_base_model(settings.base_model, settings.models_dir)
    tokenizer = load_tokenizer(base)
    relabel = config.relabel

    def predict(adapter: Path, texts: list[str]) -> list[Any]:
        return Predictor(load_model(base, adapter), tokenizer, spec, config.eval_batch_size).predict(texts)

    # Champion: trained on the launch data once per configuration, then reused.
    key = hashlib.sha256(json.dumps([settings.base_model, spec.to_dict(), config.model_dump(mode="json")], sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(settings.home).resolve() / "bench" / "loop" / key
    champion_dir = cache / "champion"
    launch_set = launch_training_set(splits["train"], plan, config.training.max_examples, config.training.seed)
    launch_set = launch_set.cast_column("id", Value("string"))  # dataset rows and request ids side by side
    champion_s = 0.0
    if args.fresh or not (champion_dir / "adapter_config.json").exists():
        console.print(f"training the launch champion on {len(launch_set)} examples ({len(late)} late intents capped at {plan.rare_cap}) -> {champion_dir}")
        champion_s = train_lora(spec, base, launch_set, champion_dir, config.training).seconds
    else:
        console.print(f"launch champion: cached at {champion_dir} (--fresh retrains it)")
    replay = launch_set.to_pandas()[["id", "text", "label"]]
    embedder = Embedder(torch_threads=settings.torch_threads)
    reference = embedder.encode_cached(list(replay["text"]), cache / "embeddings")

    golden = splits["golden"]
    golds = list(golden["label"])
    answers_path = cache / "champion-golden.json"
    if args.fresh or not answers_path.exists():
        answers_path.write_text(json.dumps([asdict(p) for p in predict(champion_dir, list(golden["text"]))]))
    champion_acc = _accuracy([Prediction(**p) for p in json.loads(answers_path.read_text())], golds, late, plan.shift_share)

    # Windows: prior-shift traffic from the non-golden rows, answered by the champion and embedded.
    pool = concatenate_datasets([splits["train"], splits["validation"]])
    windows = {}
    for seed in sizes["seeds"]:
        requests = scenario_requests(pool, plan, "prior-shift", sizes["window"], seed=100 + seed)
        texts = [r.text for r in requests]
        window_path = cache / f"window-{sizes['window']}-s{seed}.json"
        if args.fresh or not window_path.exists():
            window_path.write_text(json.dumps([p.confidence for p in predict(champion_dir, texts)]))
        windows[seed] = {
            "ids": [f"s{seed}-{i}" for i in range(len(requests))],
            "texts": texts,
            "golds": [r.gold for r in requests],
            "confidences": np.asarray(json.loads(window_path.read_text())),
            "embeddings": embedder.encode_cached(texts, cache / "embeddings"),
        }
    setup_s = time.perf_counter() - started
    console.print(f"setup {setup_s:.0f} s; champion drifted-slice accuracy {champion_acc[0]:.3f} (late {champion_acc[1]:.3f}, usual {champion_acc[2]:.3f})")

    # Cells: equal budgets, same windows and training seeds for both strategies.
    cells: list[Cell] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    for seed in sizes["seeds"]:
        window = windows[seed]
        teacher = SimulatedTeacher(spec, dict(zip(window["ids"], window["golds"])), error_rate=config.teacher.simulated_error_rate, budget_usd=1e9, seed=seed)
        for budget in sizes["budgets"]:
            for strategy in STRATEGIES:
                if strategy == "informative":
                    picks = select_informative(window["texts"], window["embeddings"], window["confidences"], reference, budget, seed=seed).indices
                else:
                    picks = select_random(len(window["texts"]), budget, seed=seed)
                run = teacher.label([TeacherItem(window["ids"][i], window["texts"][i]) for i in picks])
                text_of = {window["ids"][i]: window["texts"][i] for i in picks}
                bought = pd.DataFrame([(l.item_id, text_of[l.item_id], l.label) for l in run.labels if l.valid], columns=["id", "text", "label"])
                rows, trained_new = _retrain_set(replay, bought, relabel)
                training = Dataset.from_pandas(rows, preserve_index=False)
                warm = champion_dir if relabel.retrain_mode == "warm_start" else None
                trained = train_lora(spec, base, training, workdir / f"{seed}-{budget}-{strategy}", config.training.model_copy(update={"seed": config.training.seed + seed}), warm_start_adapter=warm)
                accuracy = _accuracy(predict(trained.adapter_dir, list(golden["text"])), golds, late, plan.shift_share)
                shutil.rmtree(trained.adapter_dir)
                golds_bought = [window["golds"][i] for i in picks]
                cells.append(Cell(seed, budget, strategy, len(bought), sum(g in late for g in golds_bought), len({window["texts"][i] for i in picks}), trained_new, *accuracy, trained.seconds))
                console.print(f"seed {seed} budget {budget:>3} {strategy:<11} accuracy {accuracy[0]:.3f} (late {accuracy[1]:.3f}, usual {accuracy[2]:.3f}); {sum(g in late for g in golds_bought)}/{len(picks)} late; train {trained.seconds:.0f} s; {time.perf_counter() - started:.0f} s so far")

    shutil.rmtree(workdir)

    # Curves: mean over seeds, anchored at the champion (0 labels).
    def curve(strategy: str, field: str = "accuracy") -> list[float]:
        return [float(np.mean([getattr(c, field) for c in cells if c.strategy == strategy and c.budget == b])) for b in sizes["budgets"]]

    budgets = [0, *sizes["budgets"]]
    curves = {s: [champion_acc[0], *curve(s)] for s in STRATEGIES}
    level = curves["random"][-1]
    needed = {s: labels_to_reach(budgets, curves[s], level) for s in STRATEGIES}
    ratio = needed["informative"] / needed["random"] if needed["informative"] is not None and needed["random"] else float("inf")
    half_level = champion_acc[0] + 0.5 * (level - champion_acc[0])
    half_needed = {s: labels_to_reach(budgets, curves[s], half_level) for s in STRATEGIES}

    table = Table(title=f"label efficiency: banking-intent slice ({SLICE['intents']} intents, {len(late)} late), window {sizes['window']}, seeds {list(sizes['seeds'])}")
    for column in ("labels", "informative", "random", "difference", "late acc inf / rnd", "usual acc inf / rnd", "late bought inf / rnd"):
        table.add_column(column, justify="right")
    table.add_row("0 (champion)", f"{champion_acc[0]:.3f}", f"{champion_acc[0]:.3f}", "", f"{champion_acc[1]:.2f}", f"{champion_acc[2]:.2f}", "")
    for i, budget in enumerate(sizes["budgets"]):
        late_share = {s: np.mean([c.late_bought / c.budget for c in cells if c.strategy == s and c.budget == budget]) for s in STRATEGIES}
        table.add_row(
            str(budget), f"{curves['informative'][i + 1]:.3f}", f"{curves['random'][i + 1]:.3f}", f"{curves['informative'][i + 1] - curves['random'][i + 1]:+.3f}",
            " / ".join(f"{curve(s, 'accuracy_late')[i]:.2f}" for s in STRATEGIES), " / ".join(f"{curve(s, 'accuracy_usual')[i]:.2f}" for s in STRATEGIES),
            " / ".join(f"{late_share[s]:.0%}" for s in STRATEGIES),
        )
    Console(width=max(Console().width, 110)).print(table)

    def fmt(value: float | None) -> str:
        return "not reached" if value is None else f"{value:.1f}"

    print(f"recovery level = random's accuracy at {budgets[-1]} labels: {level:.3f} (champion {champion_acc[0]:.3f}); labels to reach it: informative {fmt(needed['informative'])}, random {fmt(needed['random'])}")
    print(f"half the gain ({half_level:.3f}): informative {fmt(half_needed['informative'])}, random {fmt(half_needed['random'])}")
    print(f"total {time.perf_counter() - started:.0f} s (setup {setup_s:.0f} s, champion training {champion_s:.0f} s)")
    args.json.write_text(json.dumps({
        "slice": SLICE, "sizes": {**sizes, "budgets": list(sizes["budgets"]), "seeds": list(sizes["seeds"])},
        "late_intents": sorted(late), "shift_share": plan.shift_share, "retrain_mode": relabel.retrain_mode,
        "champion": dict(zip(("accuracy", "accuracy_late", "accuracy_usual"), champion_acc)),
        "cells": [asdict(c) for c in cells], "curves": {"budgets": budgets, **curves},
        "recovery_level": level, "labels_needed": needed, "half_level": half_level, "half_labels_needed": half_needed,
        "labels_ratio_vs_random": ratio, "seconds": time.perf_counter() - started, "champion_train_s": champion_s, "cpus": os.cpu_count(),
    }, indent=1))
    print(f"labels_ratio_vs_random={ratio:.2f}")


if __name__ == "__main__":
    main()
