"""Accuracy, macro-F1 and a per-label breakdown, as a local `evaluate` metric (no hub fetch).

An invalid answer is passed as the empty string: it counts as wrong for every label.
"""

from collections import Counter

import datasets
import evaluate

_DESCRIPTION = "Accuracy, macro-F1 over the reference labels, and per-label precision/recall/F1/support."


class ClassificationMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description="predictions, references: label strings ('' for an invalid answer)",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        true_pos, pred_count, ref_count = Counter(), Counter(), Counter()
        for pred, ref in zip(predictions, references):
            ref_count[ref] += 1
            pred_count[pred] += 1
            if pred == ref:
                true_pos[ref] += 1
        per_label = {}
        for label in sorted(ref_count):
            precision = true_pos[label] / pred_count[label] if pred_count[label] else 0.0
            recall = true_pos[label] / ref_count[label]
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": ref_count[label]}
        total = len(references)
        return {
            "accuracy": sum(true_pos.values()) / total if total else 0.0,
            "macro_f1": sum(item["f1"] for item in per_label.values()) / len(per_label) if per_label else 0.0,
            "invalid_rate": pred_count[""] / total if total else 0.0,
            "per_label": per_label,
        }
