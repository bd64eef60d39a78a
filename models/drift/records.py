"""What a drift check compares and what it concludes: the reference, the window, each test's outcome and the report (with its plot)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slm_flywheel.models.selection import proportional_quotas

Answer = str | dict[str, str]
INVALID = "<invalid>"  # the answer bucket for no schema-valid answer (or one outside the schema)
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2


@dataclass(frozen=True)
class DriftTest:
    """One test's outcome; in a `DriftReport` its `p_value` is Holm-corrected (raw in `detail`)."""

    name: str
    statistic: float
    p_value: float
    effect: float
    threshold: float
    significant: bool  # p_value < alpha
    drifted: bool  # significant and effect >= threshold
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftReference:
    """What the champion knows: its training inputs' embeddings, its answers and confidences on
    its validation split (answers: labels or slot dicts; None = no valid answer)."""

    embeddings: np.ndarray
    answers: Sequence[Answer | None]
    confidences: np.ndarray


def label_mix_sample(labels: Sequence[str], target_labels: Sequence[str], seed: int = 0) -> np.ndarray:
    """Indices into `labels` (the validation items' gold labels), as many as there are items, whose
    label mix is `target_labels`' (the champion's training set): each label gets its share of the
    target, by largest remainder, drawn from its own items (each once before any repeats).

    The reference's answers and confidences come from validation, held out so the confidences are
    honest; but the champion was trained, and deployed, on its training set's mix, and a validation
    split drawn at other priors makes steady traffic look drifted. In the demo the launch champion
    saw the 12 late intents as 2.4% of its training rows, validation holds them at 16.6%, and its
    answers there are the least confident: launch traffic read as a confidence shift (KS 0.116, raw
    p 0.012; on the matched reference 0.062, p 0.45). Labels the target has and validation lacks
    drop out (their share goes to the rest); without a target the items are returned as they are.
    """
    if not len(labels):
        return np.arange(0)
    items: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        items.setdefault(label, []).append(index)
    target = {label: count for label, count in Counter(target_labels).items() if label in items}
    if not target:
        return np.arange(len(labels))
    names = sorted(target)
    counts = dict(zip(names, proportional_quotas(np.asarray([target[name] for name in names], dtype=float), len(labels)).tolist(), strict=True))
    rng = np.random.default_rng(seed)
    chosen = []
    for label, count in counts.items():
        pool = np.asarray(items[label])
        repeats, rest = divmod(count, len(pool))
        chosen.extend([*np.tile(pool, repeats), *rng.choice(pool, size=rest, replace=False)])
    return np.sort(np.asarray(chosen, dtype=int))


@dataclass(frozen=True)
class DriftWindow:
    """Recent production traffic: answers and confidences for every request, input embeddings for
    every request or for the rows at `embedded` (a random subsample, see `embed_window`)."""

    embeddings: np.ndarray
    answers: Sequence[Answer | None]
    confidences: np.ndarray
    embedded: np.ndarray | None = None  # window positions of the embedding rows; None = every row, in order


@dataclass(frozen=True)
class WindowEmbeddings:
    """Input embeddings of a window's rows: `vectors[i]` embeds row `positions[i]` (ascending)."""

    positions: np.ndarray
    vectors: np.ndarray


@dataclass(frozen=True)
class DriftReport:
    """The verdict on one window, with every test it rests on."""

    drifted: bool
    tests: list[DriftTest]
    window_size: int
    reference_size: int  # reference answers; the input test's detail has the embedding counts
    reason: str
    insufficient: bool
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "insufficient": self.insufficient,
            "reason": self.reason,
            "window_size": self.window_size,
            "reference_size": self.reference_size,
            "alpha": self.alpha,
            "tests": [asdict(test) for test in self.tests],
        }

    def metrics(self) -> dict[str, float]:
        """The verdict and each test's effect and p-value, as MLflow metrics (`<test>_effect`, `<test>_p`)."""
        values = {"drifted": float(self.drifted), "window_size": float(self.window_size)}
        for test in self.tests:
            key = test.name.replace(" ", "_")
            values[f"{key}_effect"], values[f"{key}_p"] = float(test.effect), float(test.p_value)
        return values

    def to_markdown(self) -> str:
        verdict = "**DRIFT**" if self.drifted else ("insufficient samples" if self.insufficient else "no drift")
        lines = [
            f"Drift: {verdict} (window {self.window_size}, reference {self.reference_size}, alpha {self.alpha:g})",
            "",
            self.reason,
        ]
        if self.tests:
            lines += [
                "",
                "| test | statistic | p (corrected) | effect | threshold | verdict |",
                "|---|---|---|---|---|---|",
            ]
            for test in self.tests:
                lines.append(
                    f"| {test.name} | {test.statistic:.4g} | {test.p_value:.3g} | {test.effect:.4g} "
                    f"| {test.threshold:.4g} | {_verdict(test)} |"
                )
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> Path:
        """Effect ÷ threshold per test (drift needs ≥ 1 and significance) and the confidence histograms."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        histogram = next((t.detail["histogram"] for t in self.tests if "histogram" in t.detail), None)
        fig, axes = plt.subplots(1, 2 if histogram else 1, figsize=(11 if histogram else 6, 4), squeeze=False)
        ax = axes[0][0]
        if self.tests:
            # Effects live on different scales (MMD², JS, KS D, shares): their ratio to the threshold shares one.
            ratios = [t.effect / t.threshold if t.threshold > 0 else float(t.effect > 0) for t in self.tests]
            colors = ["tab:red" if t.drifted else "tab:orange" if t.significant else "tab:gray" for t in self.tests]
            bars = ax.barh([t.name for t in self.tests], ratios, color=colors)
            for bar, test in zip(bars, self.tests):
                y = bar.get_y() + bar.get_height() / 2
                ax.text(bar.get_width(), y, f" p={test.p_value:.2g}", va="center", fontsize=8)
            ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
            ax.set_xlabel("effect / threshold (red: drift, orange: significant but small)")
            ax.invert_yaxis()
        else:
            ax.text(0.5, 0.5, self.reason, ha="center", va="center", wrap=True)
            ax.set_axis_off()
        ax.set_title(f"drift: {'yes' if self.drifted else 'no'} (window {self.window_size})")
        if histogram:
            ax = axes[0][1]
            edges = np.asarray(histogram["edges"])
            widths = np.diff(edges)
            ax.bar(edges[:-1], histogram["reference"], width=widths, align="edge", alpha=0.5, label="reference")
            ax.bar(edges[:-1], histogram["current"], width=widths, align="edge", alpha=0.5, label="window")
            low = next((t.detail["low_threshold"] for t in self.tests if "low_threshold" in t.detail), None)
            if low is not None:
                ax.axvline(low, color="black", linestyle="--", linewidth=1, label="low-confidence cut")
            ax.set_xlabel("confidence")
            ax.set_ylabel("share of answers")
            ax.legend()
            ax.set_title("confidence")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _verdict(test: DriftTest) -> str:
    if test.drifted:
        return "drift"
    return "significant, below threshold" if test.significant else "ok"
