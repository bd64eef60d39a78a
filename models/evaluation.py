"""Evaluation of predictions against references with the `evaluate` library (local metric modules)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple

from slm_flywheel.files import atomic_write
from slm_flywheel.models.inference import Prediction
from slm_flywheel.models.workload import TaskSpec

_METRICS_DIR = Path(__file__).parent / "metrics"


@lru_cache(maxsize=None)
def load_metric(task: str) -> Any:
    """The project's metric for a task kind, loaded by path so nothing is fetched from a hub."""
    import evaluate

    name = "classification_metrics" if task == "classification" else "extraction_metrics"
    return evaluate.load(str(_METRICS_DIR / f"{name}.py"))


@dataclass(frozen=True)
class EvalResult:
    """Headline metrics (flat, loggable), a per-label or per-slot breakdown, and the raw pairs."""

    metrics: dict[str, float]
    breakdown: dict[str, dict[str, float]]
    predictions: list[str] = field(repr=False)
    references: list[str] = field(repr=False)
    confidences: list[float] = field(default_factory=list, repr=False)  # each answer's probability

    @property
    def correct(self) -> list[bool]:
        """Per item: the answer equals the reference exactly (label, or whole slot object)."""
        return [pred == ref for pred, ref in zip(self.predictions, self.references)]

    @property
    def headline(self) -> float:
        """The one number a workload is judged by: accuracy, or slot F1."""
        return self.metrics.get("accuracy", self.metrics.get("slot_f1", 0.0))

    def table(self) -> list[dict[str, Any]]:
        return [{"name": name, **values} for name, values in self.breakdown.items()]


def _as_string(spec: TaskSpec, prediction: Prediction) -> str:
    if not prediction.valid or prediction.answer is None:
        return ""
    return spec.answer_to_label(prediction.answer)


def evaluate_predictions(spec: TaskSpec, predictions: list[Prediction], references: list[str]) -> EvalResult:
    """Score predictions for `spec` (references are labels / canonical slot JSON strings)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    pred_strings = [_as_string(spec, prediction) for prediction in predictions]
    result = load_metric(spec.task).compute(predictions=pred_strings, references=references)
    breakdown = result.pop("per_label", None) or result.pop("per_slot", None) or {}
    latencies = sorted(prediction.latency_ms for prediction in predictions)
    metrics = {key: float(value) for key, value in result.items()}
    if latencies:
        metrics["latency_p95_ms"] = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        metrics["mean_confidence"] = sum(p.confidence for p in predictions) / len(predictions)
    confidences = [float(prediction.confidence) for prediction in predictions]
    return EvalResult(metrics=metrics, breakdown=breakdown, predictions=pred_strings, references=list(references), confidences=confidences)


def evaluate_model(
    spec: TaskSpec,
    base_path: str,
    adapter_dir: Path | None,
    texts: list[str],
    references: list[str],
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
    cache_dir: Path | None = None,
) -> EvalResult:
    """Predict `texts` with base + adapter (None: the base model alone) and score them."""
    return evaluate_sets(spec, base_path, adapter_dir, {"items": (texts, references)}, batch_size, progress, cache_dir)["items"]


class EvalSet(NamedTuple):
    """Items to score; a plain `(texts, references)` pair means the defaults."""

    texts: list[str]
    references: list[str]
    batch_size: int | None = None  # None: the call's batch size
    cached: bool = True  # False: always measured now (what a latency comparison needs)


def evaluate_sets(
    spec: TaskSpec,
    base_path: str,
    adapter_dir: Path | None,
    sets: dict[str, tuple[list[str], list[str]] | EvalSet],
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
    cache_dir: Path | None = None,
) -> dict[str, EvalResult]:
    """Score one model on several named sets of (texts, references), loading it once.

    With `cache_dir`, a result is stored under a key of everything that decides it (the task's
    prompt and answer space, the base checkpoint, the adapter's bytes, the items) and reused
    when the same model meets the same items again: the gate re-reads the candidate's golden
    result from its training run and the champion's from the night it was trained. Predictions
    are deterministic (greedy, constrained); a reused result keeps the latency first measured.
    `progress` follows the first set.
    """
    items = {name: EvalSet(*value) for name, value in sets.items()}
    results: dict[str, EvalResult] = {}
    keys = {name: _cache_key(spec, base_path, adapter_dir, item.texts, item.references) for name, item in items.items() if item.cached} if cache_dir else {}
    for name, key in keys.items():
        stored = Path(cache_dir, f"{key}.json")  # type: ignore[arg-type]
        if stored.exists():
            results[name] = EvalResult(**json.loads(stored.read_text()))
    first = next(iter(items), None)
    if first in results and progress is not None:
        progress(len(items[first].texts), len(items[first].texts))
    missing = [name for name in items if name not in results]
    if not missing:
        return results
    from slm_flywheel.models.inference import Predictor, load_model, load_tokenizer

    predictor = Predictor(load_model(base_path, adapter_dir), load_tokenizer(base_path), spec, batch_size)
    for name in missing:
        texts, references, size, _ = items[name]
        size = size or batch_size
        report = progress if name == first else None
        predictions: list[Prediction] = []
        for start in range(0, len(texts), size):
            predictions.extend(predictor.predict(texts[start : start + size]))
            if report is not None:
                report(min(start + size, len(texts)), len(texts))
        results[name] = evaluate_predictions(spec, predictions, references)
        if name in keys:
            atomic_write(Path(cache_dir, f"{keys[name]}.json"), json.dumps(asdict(results[name])))  # type: ignore[arg-type]
    return results


EVAL_CACHE_VERSION = 2  # raise when decoding or scoring changes what a stored result would be (2: answer confidences stored)

# The files that decide a model's answers; anything else in a folder (a README, a trainer's
# state) is left out of the key.
_BASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def _cache_key(spec: TaskSpec, base_path: str, adapter_dir: Path | None, texts: list[str], references: list[str]) -> str:
    digest = hashlib.sha256(f"eval-v{EVAL_CACHE_VERSION}".encode())
    for part in (spec.name, spec.task, spec.prompt("{input}"), json.dumps(list(spec.labels)), json.dumps(list(spec.slots))):
        digest.update(part.encode() + b"\0")
    base = Path(base_path)
    if base.is_dir():
        for path in sorted(base.iterdir()):
            if path.name in _BASE_FILES:
                digest.update(path.name.encode() + path.read_bytes())
            elif path.suffix in (".safetensors", ".bin"):  # weights: identified by size and mtime, not read
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        digest.update(base_path.encode())  # a hub id
    digest.update(b"adapter:")
    if adapter_dir is not None:
        for name in _ADAPTER_FILES:
            if (Path(adapter_dir) / name).exists():
                digest.update(name.encode() + (Path(adapter_dir) / name).read_bytes())
    digest.update(json.dumps([texts, references]).encode())
    return digest.hexdigest()[:32]


def plot_breakdown(spec: TaskSpec, result: EvalResult, path: Path) -> Path:
    """A confusion matrix (classification) or per-slot P/R/F1 bars (extraction) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if spec.task == "classification":
        labels = list(spec.labels)
        index = {label: i for i, label in enumerate(labels)}
        matrix = np.zeros((len(labels), len(labels) + 1))  # last column: invalid answers
        for pred, ref in zip(result.predictions, result.references):
            matrix[index[ref], index.get(pred, len(labels))] += 1
        matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(12, 11))
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
        ax.set_xlabel("predicted (last column: invalid)")
        ax.set_ylabel("reference")
        ax.set_yticks(range(len(labels)), labels, fontsize=4)
        ax.set_title(f"{spec.name}: confusion matrix (row-normalized), accuracy {result.headline:.3f}")
    else:
        slots = list(result.breakdown)
        x = np.arange(len(slots))
        fig, ax = plt.subplots(figsize=(8, 4))
        for offset, key in zip((-0.25, 0, 0.25), ("precision", "recall", "f1")):
            ax.bar(x + offset, [result.breakdown[s][key] for s in slots], width=0.25, label=key)
        ax.set_xticks(x, slots)
        ax.set_ylim(0, 1)
        ax.legend()
        ax.set_title(f"{spec.name}: per-slot scores, slot F1 {result.headline:.3f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
