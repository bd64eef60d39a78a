"""The four drift tests (inputs, answers, confidence distribution, low-confidence share), each a permutation or exact test judged by p-value and effect size, and Holm–Bonferroni across them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from slm_flywheel.models.drift.records import INVALID, DriftTest


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
