"""Router benchmark: the frontier share a calibrated-confidence router needs to keep served answers
at a target accuracy on prior-shift traffic, against random routing and the oracle.

    .venv/bin/python -m bench.router [--quick] [--json bench/router.json] [--fresh]

Built from `models/` directly (no Prefect, MLflow or serving). A launch champion is trained on
launch data as the demo's launch stage trains it (the late intents capped at `rare_cap` examples;
`--quick`: a 16-intent Banking77 slice, 208 examples, as `bench/loop.py` uses), then calibrated on
the validation split with its answers (`models/calibration.py`: the answer probability's map and
the per-answer offsets, what `train-adapter` stores with a version). The traffic is `prior-shift`
(70% on the late intents) drawn from the golden rows, never trained or calibrated on, so the
champion answers each golden row once and the traffic reuses those answers; the frontier is the
SIMULATED teacher at 5% error.

For each target accuracy of the served answers (small model and frontier together), the frontier
share each policy needs, sending requests to the frontier in its order until the target is met,
and the served accuracy there:

* calibrated: least calibrated confidence first (the router's order);
* answer probability: least answer probability first (the calibrated order without the
  per-answer offsets: any monotone map of the probability alone ranks alike);
* random: any order (the expected share, `(target - slm) / (frontier - slm)`);
* oracle: the floor, the frontier exactly where the small model is wrong (and the frontier right).

It also reports what the version's own threshold (fitted on validation for a small-model target
equal to the row's) does on this traffic: its frontier share and served accuracy, and the
expected calibration error before and after calibration on validation (cross-fitted), golden and
the traffic. And what a deployment with `router.live_threshold` (the default) gets: the requests
in order through the router's own `LiveThreshold` (`models/calibration.py`), which starts at the
version's threshold and raises it from the frontier's answers to the inputs it routed and to the
`router.audit_share` it audits; its share and served accuracy count every request, the ones
answered before it had labels enough included, and are the mean (and range) over `AUDIT_DRAWS`
draws of which answers are audited. The champion and its answers are cached under `<home>/bench/router/<config hash>/`
(`--fresh` redoes them). Last line: `frontier_share_vs_oracle=<share / oracle share at 0.90>`, the
share a deployment sends to the frontier (with the live threshold, or the version's own threshold
where `router.live_threshold` is off), over the oracle's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench import quiet_settings

if TYPE_CHECKING:
    from slm_flywheel.config import RouterConfig, Settings
    from slm_flywheel.models.context import WorkloadContext

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The --quick slice: bench/loop.py's (16 intents, 4 late, 208 launch examples, 2 epochs, batches
# of 8), with 15% of it for validation so the calibrator sees ~300 items rather than ~100.
SLICE = {"intents": 16, "late": 4, "launch_examples": 208, "validation_fraction": 0.15, "golden_fraction": 0.15, "epochs": 2.0, "batch_size": 8, "slice_seed": 0}
SIZES = {"full": {"traffic": 2000}, "quick": {"traffic": 600}}
TARGETS = (0.85, 0.90, 0.95)
FRONTIER_ERROR = 0.05
HEADLINE_TARGET = 0.90
AUDIT_DRAWS = 50  # draws of which answers the router audits, for the live threshold's rows (the mean over 5 was 0.05 off the 100-draw mean share)


def accuracy_by_share(order: np.ndarray, slm_correct: np.ndarray, frontier_correct: np.ndarray) -> np.ndarray:
    """Served accuracy when the first k requests of `order` go to the frontier, for k = 0..n."""
    gain = frontier_correct[order].astype(float) - slm_correct[order].astype(float)
    return (slm_correct.sum() + np.r_[0.0, np.cumsum(gain)]) / len(order)


def share_needed(order: np.ndarray, slm_correct: np.ndarray, frontier_correct: np.ndarray, target: float) -> float | None:
    """The smallest frontier share, taking requests in `order`, whose served accuracy reaches `target`."""
    reached = np.nonzero(accuracy_by_share(order, slm_correct, frontier_correct) >= target - 1e-12)[0]
    return float(reached[0] / len(order)) if len(reached) else None


def random_share(slm_accuracy: float, frontier_accuracy: float, target: float) -> float | None:
    """The expected frontier share random routing needs: accuracy is linear in the share."""
    if slm_accuracy >= target:
        return 0.0
    if frontier_accuracy < target:
        return None
    return (target - slm_accuracy) / (frontier_accuracy - slm_accuracy)


def oracle_order(slm_correct: np.ndarray, frontier_correct: np.ndarray) -> np.ndarray:
    """Requests the frontier fixes first (small model wrong, frontier right), those it breaks last."""
    gain = frontier_correct.astype(int) - slm_correct.astype(int)
    return np.argsort(-gain, kind="stable")


def live_routing(
    calibrated: np.ndarray, valid: np.ndarray, agreed: np.ndarray, version_threshold: float | None, target: float, router: RouterConfig, seed: int = 0,
) -> np.ndarray:
    """Which requests, in order, the router sends to the frontier with its live threshold.

    `agreed`: whether the small model's answer equals the frontier's (the label the router gets
    for a routed or audited request); audits are `router.audit_share` of the served requests."""
    from slm_flywheel.models.calibration import LiveThreshold, keeps

    live = LiveThreshold(target, router.frontier_accuracy, audit_share=router.audit_share, window=router.live_window, min_labels=router.live_min_labels)
    audits = np.random.default_rng(seed).random(len(calibrated)) < router.audit_share
    to_frontier = np.zeros(len(calibrated), dtype=bool)
    for i, (confidence, ok) in enumerate(zip(calibrated, valid)):
        if ok:
            live.observe(confidence)
        threshold = live.threshold(version_threshold)
        to_frontier[i] = not ok or not keeps(threshold, confidence)
        if ok and (to_frontier[i] or audits[i]):
            live.label(confidence, bool(agreed[i]), audited=not to_frontier[i])
    return to_frontier


def _workload(settings: Settings, quick: bool) -> WorkloadContext:
    """The banking-intent workload, resolved; with `quick`, narrowed to the slice (see `SLICE`)."""
    from slm_flywheel.models.context import resolve_workload
    from slm_flywheel.models.data import banking77_labels

    if not quick:
        return resolve_workload(settings, "banking-intent")
    config = settings.workload("banking-intent")
    intents = sorted(random.Random(SLICE["slice_seed"]).sample(sorted(banking77_labels(settings.require_data_dir())), SLICE["intents"]))
    sliced = config.model_copy(update={
        "labels": intents,
        "splits": config.splits.model_copy(update={"golden_fraction": SLICE["golden_fraction"], "validation_fraction": SLICE["validation_fraction"]}),
        "launch": config.launch.model_copy(update={"late_count": SLICE["late"]}),
        "training": config.training.model_copy(update={"max_examples": SLICE["launch_examples"], "epochs": SLICE["epochs"], "batch_size": SLICE["batch_size"]}),
    })
    return resolve_workload(settings.model_copy(update={"workloads": {**settings.workloads, "banking-intent": sliced}}), "banking-intent")


def _fmt(share: float | None) -> str:
    return "unreachable" if share is None else f"{share:.3f}"


def _with_accuracy(row: dict[str, float | None], policy: str) -> str:
    share, accuracy = row[policy], row[f"{policy}_served_accuracy"]
    return _fmt(share) if share is None or accuracy is None else f"{share:.3f} ({accuracy:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the 16-intent slice, 600 requests (under 5 minutes on 2 cores)")
    parser.add_argument("--fresh", action="store_true", help="retrain the champion and re-answer (ignore the cache)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("router.json"))
    args = parser.parse_args()
    sizes = SIZES["quick" if args.quick else "full"]
    started = time.perf_counter()

    from datasets import Value
    from rich.console import Console
    from rich.table import Table

    from slm_flywheel.models.base_model import resolve_base_model
    from slm_flywheel.models.calibration import calibrate, expected_calibration_error
    from slm_flywheel.models.inference import Prediction, Predictor, load_model, load_tokenizer
    from slm_flywheel.models.scenarios import launch_plan, launch_training_set, scenario_requests
    from slm_flywheel.models.teacher import SimulatedTeacher, TeacherItem
    from slm_flywheel.models.training import train_lora

    console = Console(stderr=True)
    settings = quiet_settings()
    context = _workload(settings, args.quick)
    config, spec, splits = context.config, context.spec, context.splits
    plan = launch_plan(spec.task, spec.labels, config.launch)
    base = resolve_base_model(settings.base_model, settings.models_dir)

    # The router's own settings do not change the champion or its answers: not part of the key.
    trained_by = config.model_dump(mode="json", exclude={"router"})
    key = hashlib.sha256(json.dumps([settings.base_model, spec.to_dict(), trained_by], sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(settings.home).resolve() / "bench" / "router" / key
    champion_dir = cache / "champion"
    champion_s = 0.0
    if args.fresh or not (champion_dir / "adapter_config.json").exists():
        launch_set = launch_training_set(splits["train"], plan, config.training.max_examples, config.training.seed).cast_column("id", Value("string"))
        console.print(f"training the launch champion on {len(launch_set)} examples ({len(plan.late_labels)} late intents capped at {plan.rare_cap}) -> {champion_dir}")
        champion_s = train_lora(spec, base, launch_set, champion_dir, config.training).seconds
    else:
        console.print(f"launch champion: cached at {champion_dir} (--fresh retrains it)")

    # The champion's answers on validation (the calibration set) and on golden, cached; the
    # traffic's are golden's (its requests are golden rows, unchanged under prior shift).
    answered: dict[str, list[Prediction]] = {}
    predictor = None
    for name in ("validation", "golden"):
        path = cache / f"{name}-{len(splits[name])}.json"
        if args.fresh or not path.exists():
            predictor = predictor or Predictor(load_model(base, champion_dir), load_tokenizer(base), spec, config.eval_batch_size)
            path.write_text(json.dumps([asdict(p) for p in predictor.predict(list(splits[name]["text"]))]))
        answered[name] = [Prediction(**p) for p in json.loads(path.read_text())]
    row_of = {int(row_id): row for row, row_id in enumerate(splits["golden"]["id"])}
    requests = scenario_requests(splits["golden"], plan, "prior-shift", sizes["traffic"], seed=101)
    answered["traffic"] = [answered["golden"][row_of[r.source_id]] for r in requests]
    golds = {name: list(splits[name]["label"]) for name in ("validation", "golden")} | {"traffic": [r.gold for r in requests]}
    confidences, answers, corrects = {}, {}, {}
    for name, predictions in answered.items():
        confidences[name] = np.array([p.confidence for p in predictions])
        answers[name] = [p.answer if p.valid else None for p in predictions]
        corrects[name] = np.array([p.valid and p.answer == g for p, g in zip(predictions, golds[name])])
    confidence, slm_correct = confidences["traffic"], corrects["traffic"]

    # The SIMULATED frontier answers every request (5% wrong, plausibly).
    ids = [f"r{i}" for i in range(len(requests))]
    frontier = SimulatedTeacher(spec, dict(zip(ids, (r.gold for r in requests))), error_rate=FRONTIER_ERROR, budget_usd=1e9, seed=0)
    run = frontier.label([TeacherItem(i, r.text) for i, r in zip(ids, requests)])
    frontier_correct = np.array([label.label == r.gold for label, r in zip(run.labels, requests)])
    agreed = np.array([a is not None and label.label == a for label, a in zip(run.labels, answers["traffic"])])
    valid = np.array([p.valid for p in answered["traffic"]])
    setup_s = time.perf_counter() - started

    slm_accuracy, frontier_accuracy = float(slm_correct.mean()), float(frontier_correct.mean())
    rows = []
    orders = {"probability": np.argsort(confidence, kind="stable"), "oracle": oracle_order(slm_correct, frontier_correct)}
    calibrations = {}
    for target in TARGETS:
        calibration = calibrations[target] = calibrate(
            confidences["validation"], corrects["validation"], target, config.router.calibration, answers["validation"],
            bound_confidence=config.router.threshold_confidence,
        )
        calibrated = calibration.calibrator.apply(confidence, answers["traffic"])
        orders["calibrated"] = np.lexsort((confidence, calibrated))  # least calibrated first; ties by the raw probability
        to_frontier = np.array([not calibration.serves(c) for c in calibrated])
        row: dict[str, float | None] = {"target": target, "random": random_share(slm_accuracy, frontier_accuracy, target)}
        for policy, order in orders.items():
            share = share_needed(order, slm_correct, frontier_correct, target)
            row[policy] = share
            served = accuracy_by_share(order, slm_correct, frontier_correct)
            row[f"{policy}_served_accuracy"] = None if share is None else float(served[round(share * len(order))])
        # The live threshold depends on which answers were audited: the mean over AUDIT_DRAWS draws.
        lives = [live_routing(calibrated, valid, agreed, calibration.threshold, target, config.router, seed) for seed in range(AUDIT_DRAWS)]
        live_shares = [float(live.mean()) for live in lives]
        live_served = [float(np.where(live, frontier_correct, slm_correct).mean()) for live in lives]
        row.update({
            "threshold": calibration.threshold,
            "threshold_share": float(to_frontier.mean()),
            "threshold_served_accuracy": float(np.where(to_frontier, frontier_correct, slm_correct).mean()),
            "validation_coverage": calibration.coverage,
            "live_share": float(np.mean(live_shares)),
            "live_served_accuracy": float(np.mean(live_served)),
            "live_share_range": [min(live_shares), max(live_shares)],
            "live_served_accuracy_range": [min(live_served), max(live_served)],
        })
        rows.append(row)
    headline = next(row for row in rows if row["target"] == HEADLINE_TARGET)
    # The headline is what a deployment gets: with `router.live_threshold` (the default) the live
    # threshold's share, else the version's own threshold's (fitted on validation), on this traffic
    # over the oracle's; the ranking's share is in the table.
    deployed = "live" if config.router.live_threshold else "threshold"
    ratio = headline[f"{deployed}_share"] / headline["oracle"] if headline["oracle"] else float("inf")
    calibration = calibrations[HEADLINE_TARGET]
    ece = {"validation": (calibration.ece_before, calibration.ece_after)}  # "after" cross-fitted
    for name in ("golden", "traffic"):
        after = calibration.calibrator.apply(confidences[name], answers[name])
        ece[name] = (expected_calibration_error(confidences[name], corrects[name]), expected_calibration_error(after, corrects[name]))

    title = (
        f"frontier share to hold served accuracy: banking-intent {'slice ' if args.quick else ''}({len(spec.labels)} intents, "
        f"{len(plan.late_labels)} late), {len(requests)} prior-shift requests; small model {slm_accuracy:.3f}, SIMULATED frontier {frontier_accuracy:.3f}"
    )
    table = Table(title=title)
    for column in (
        "target", "calibrated (served acc)", "answer prob. (served acc)", "random", "oracle", "calibrated / oracle",
        "version threshold", "its share", "its served acc", "live threshold: share (served acc)", f"over {AUDIT_DRAWS} audit draws",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        over = f"{row['calibrated'] / row['oracle']:.2f}" if row["calibrated"] is not None and row["oracle"] else "-"
        threshold = "none" if row["threshold"] is None else f"{row['threshold']:.3f}"
        table.add_row(
            f"{row['target']:.2f}", _with_accuracy(row, "calibrated"), _with_accuracy(row, "probability"),
            _fmt(row["random"]), _fmt(row["oracle"]), over,
            threshold, f"{row['threshold_share']:.3f}", f"{row['threshold_served_accuracy']:.3f}",
            f"{row['live_share']:.3f} ({row['live_served_accuracy']:.3f})",
            "{:.3f}-{:.3f} ({:.3f}-{:.3f})".format(*row["live_share_range"], *row["live_served_accuracy_range"]),
        )
    Console(width=max(Console().width, 140)).print(table)
    offsets = len(calibration.calibrator.answer_offsets)
    strength = "" if calibration.prior_strength is None else f", prior strength {calibration.prior_strength:g}"
    print(f"calibration ({config.router.calibration}, {offsets} per-answer offsets{strength}) on {calibration.examples} validation items; ECE before -> after:")
    print("; ".join(f"{name} {before:.3f} -> {after:.3f}" for name, (before, after) in ece.items()) + " (validation cross-fitted)")
    load = os.getloadavg()
    print(f"total {time.perf_counter() - started:.0f} s (setup {setup_s:.0f} s, champion training {champion_s:.0f} s); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    args.json.write_text(json.dumps({
        "quick": args.quick, "slice": SLICE if args.quick else None, "traffic": len(requests), "late_intents": sorted(plan.late_labels),
        "slm_accuracy": slm_accuracy, "frontier_accuracy": frontier_accuracy, "frontier_error_rate": FRONTIER_ERROR, "rows": rows,
        "prior_strength": calibration.prior_strength, **{f"{name}_ece": list(pair) for name, pair in ece.items()},
        "frontier_share_vs_oracle": ratio, "seconds": time.perf_counter() - started, "champion_train_s": champion_s,
        "load_average": list(load), "cpus": os.cpu_count(),
    }, indent=1))
    print(
        f"at target {HEADLINE_TARGET:.2f} the version's threshold served {headline['threshold_served_accuracy']:.3f} with a frontier share of "
        f"{headline['threshold_share']:.3f} (oracle {_fmt(headline['oracle'])}, random {_fmt(headline['random'])}; "
        f"threshold from the {config.router.threshold_confidence:.0%} lower bound on validation); raised by live labels "
        f"(audit share {config.router.audit_share:g}, frontier taken at {config.router.frontier_accuracy:g}; mean of {AUDIT_DRAWS} audit draws): served "
        f"{headline['live_served_accuracy']:.3f} with a share of {headline['live_share']:.3f}"
        + ("" if config.router.live_threshold else " (router.live_threshold is off: the headline is the version's threshold)")
    )
    print(f"frontier_share_vs_oracle={ratio:.2f}")


if __name__ == "__main__":
    main()
