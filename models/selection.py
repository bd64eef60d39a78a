"""Which production samples to buy teacher labels for, under a budget.

Most informative first: a sample scores high when the champion was unsure of it (low confidence)
and when it is far from anything the champion was trained on (low similarity to the nearest
reference embedding). Exact and near duplicates are dropped, and the picks are spread over the
drifted region: the top-scoring candidates are clustered and taken round-robin across clusters,
so a budget is not spent on fifty rewordings of one new intent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEAR_DUPLICATE_COSINE = 0.95  # all-MiniLM-L6-v2: above this, two banking queries say the same thing


@dataclass(frozen=True)
class Selection:
    indices: list[int]  # positions in the window, in pick order
    scores: list[float]  # the score of each pick
    clusters: list[int]  # the cluster of each pick
    candidates: int  # distinct candidates considered


def _nearest_similarity(embeddings: np.ndarray, reference: np.ndarray, chunk: int = 4096) -> np.ndarray:
    best = np.full(len(embeddings), -1.0, dtype=np.float32)
    for start in range(0, len(reference), chunk):
        sims = embeddings @ reference[start : start + chunk].T
        best = np.maximum(best, sims.max(axis=1))
    return best


def _rank01(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable").argsort(kind="stable")
    return order / max(len(values) - 1, 1)


def select_informative(
    texts: list[str], embeddings: np.ndarray, confidences: np.ndarray, reference: np.ndarray, budget: int, *, seed: int = 0
) -> Selection:
    """Up to `budget` window positions to relabel, most informative first (see module doc)."""
    from sklearn.cluster import KMeans

    if budget <= 0 or not texts:
        return Selection([], [], [], 0)
    seen: set[str] = set()
    distinct = []
    for index, text in enumerate(texts):
        key = " ".join(text.lower().split())
        if key not in seen:
            seen.add(key)
            distinct.append(index)
    idx = np.array(distinct)
    emb = embeddings[idx]
    uncertainty = 1.0 - np.asarray(confidences, dtype=np.float64)[idx]
    novelty = 1.0 - _nearest_similarity(emb, reference)
    score = 0.5 * _rank01(uncertainty) + 0.5 * _rank01(novelty)
    # The drifted region: the best-scoring candidates, a few times the budget.
    pool = np.argsort(-score, kind="stable")[: max(budget * 3, budget)]
    n_clusters = int(min(max(budget // 5, 1), 20, len(pool)))
    labels = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit_predict(emb[pool]) if n_clusters > 1 else np.zeros(len(pool), dtype=int)
    queues = {cluster: [int(p) for p in pool[labels == cluster]] for cluster in range(n_clusters)}  # each already best-first
    picked: list[int] = []
    picked_clusters: list[int] = []
    while len(picked) < budget and any(queues.values()):
        for cluster in range(n_clusters):
            while queues[cluster] and len(picked) < budget:
                candidate = queues[cluster].pop(0)
                if picked and float((emb[picked] @ emb[candidate]).max()) >= NEAR_DUPLICATE_COSINE:
                    continue  # a near duplicate of a pick: skip it, try the next in this cluster
                picked.append(candidate)
                picked_clusters.append(cluster)
                break
    return Selection(
        indices=[int(idx[p]) for p in picked],
        scores=[float(score[p]) for p in picked],
        clusters=picked_clusters,
        candidates=len(idx),
    )


def select_random(n: int, budget: int, *, seed: int = 0) -> list[int]:
    """The baseline: `budget` positions uniformly at random."""
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.permutation(n)[:budget]]
