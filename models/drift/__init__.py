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

The package by job: `records` (reference, window, test outcomes, report and its plot),
`embedding` (the embedder and its cache), `stat_tests` (the four tests and Holm–Bonferroni),
`decision` (`detect_drift`). Import from here.
"""

from slm_flywheel.models.drift.decision import detect_drift
from slm_flywheel.models.drift.embedding import Embedder, embed_window, embedding_cache_key
from slm_flywheel.models.drift.records import (
    EMBEDDING_DIM,
    INVALID,
    DriftReference,
    DriftReport,
    DriftTest,
    DriftWindow,
    WindowEmbeddings,
    label_mix_sample,
)
from slm_flywheel.models.drift.stat_tests import (
    confidence_ks_test,
    holm_bonferroni,
    label_drift_test,
    low_confidence_share_test,
    mmd_test,
    slot_fill_test,
)

__all__ = [
    "EMBEDDING_DIM",
    "INVALID",
    "DriftReference",
    "DriftReport",
    "DriftTest",
    "DriftWindow",
    "Embedder",
    "WindowEmbeddings",
    "confidence_ks_test",
    "detect_drift",
    "embed_window",
    "embedding_cache_key",
    "holm_bonferroni",
    "label_drift_test",
    "label_mix_sample",
    "low_confidence_share_test",
    "mmd_test",
    "slot_fill_test",
]
