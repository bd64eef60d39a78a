"""The decision: run the tests that fit the workload on a window, correct them as one family and say whether, and why, it drifted."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from slm_flywheel.config import DriftConfig
from slm_flywheel.models.drift.records import DriftReference, DriftReport, DriftTest, DriftWindow
from slm_flywheel.models.drift.stat_tests import (
    _judge,
    confidence_ks_test,
    holm_bonferroni,
    label_drift_test,
    low_confidence_share_test,
    mmd_test,
    slot_fill_test,
)


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
    answers = (*reference.answers, *window.answers)
    if task == "classification":  # the label mix, or (extraction) how often each slot is filled
        answer_test, names, threshold = label_drift_test, sorted({a for a in answers if isinstance(a, str)}), config.label_js_threshold
    else:
        answer_test, names, threshold = slot_fill_test, sorted({k for a in answers if isinstance(a, dict) for k in a}), config.slot_fill_threshold
    tests.append(
        answer_test(
            list(reference.answers),  # type: ignore[arg-type]
            list(window.answers),  # type: ignore[arg-type]
            names,
            threshold=threshold,
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
