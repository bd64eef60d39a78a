"""Slot precision/recall/F1 (micro over slot-value pairs), exact match and a per-slot breakdown,
as a local `evaluate` metric (no hub fetch).

Predictions and references are JSON objects as strings; an invalid answer is passed as ''.
"""

import json
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = "Slot-filling precision, recall, F1 and exact match, overall and per slot."


def _prf(tp, n_pred, n_ref):
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


class ExtractionMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description="predictions, references: JSON objects of slot -> value ('' = invalid answer)",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        true_pos, pred_count, ref_count = Counter(), Counter(), Counter()
        exact = invalid = 0
        for pred_text, ref_text in zip(predictions, references):
            ref = json.loads(ref_text)
            pred = json.loads(pred_text) if pred_text else {}
            invalid += not pred_text
            exact += bool(pred_text) and pred == ref
            for slot, value in pred.items():
                pred_count[slot] += 1
                true_pos[slot] += ref.get(slot) == value
            for slot in ref:
                ref_count[slot] += 1
        precision, recall, f1 = _prf(sum(true_pos.values()), sum(pred_count.values()), sum(ref_count.values()))
        per_slot = {}
        for slot in sorted(set(ref_count) | set(pred_count)):
            p, r, f = _prf(true_pos[slot], pred_count[slot], ref_count[slot])
            per_slot[slot] = {"precision": p, "recall": r, "f1": f, "support": ref_count[slot]}
        total = len(references)
        return {
            "slot_precision": precision,
            "slot_recall": recall,
            "slot_f1": f1,
            "exact_match": exact / total if total else 0.0,
            "invalid_rate": invalid / total if total else 0.0,
            "per_slot": per_slot,
        }
