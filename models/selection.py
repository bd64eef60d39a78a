"""Which production samples to buy teacher labels for, under a budget.

A sample scores high when the champion was unsure of it (low confidence) and when it is far from
anything the champion was trained on (low similarity to the nearest reference embedding). The
budget goes to the more informative half of the window (exact duplicates dropped) and is spread
over it: that half is clustered into one cluster per label, each cluster gets a share of the
budget in proportion to its informative mass (the sum of its members' scores: how much traffic
it carries times how unsure and novel that traffic is), and inside a cluster the most typical
samples (the densest neighbourhoods) come first, near duplicates of a pick skipped. Typical
rather than extreme: with a few labels per new intent, a representative request teaches the
model more than an outlier does (the low-budget regime of TypiClust, Hacohen et al., 2022), and
spreading by mass keeps every new intent covered instead of fifty rewordings of one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEAR_DUPLICATE_COSINE = 0.95  # all-MiniLM-L6-v2: above this, two banking queries say the same thing
DENSITY_NEIGHBOURS = 10  # a sample's typicality: mean cosine similarity to its 10 nearest neighbours
MAX_FIT = 2000  # k-means and the density are fitted on at most this many candidates (a seeded sample)


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


def _density(embeddings: np.ndarray, sample: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Mean cosine similarity of each row to its nearest neighbours among `sample` (itself excluded)."""
    k = min(DENSITY_NEIGHBOURS, len(sample) - 1)
    if k < 1:
        return np.zeros(len(embeddings))
    out = np.empty(len(embeddings))
    for start in range(0, len(embeddings), chunk):
        sims = embeddings[start : start + chunk] @ sample.T
        # The k+1 largest include the row itself when it is in the sample (similarity 1): drop the top one.
        top = np.sort(np.partition(sims, -(k + 1), axis=1)[:, -(k + 1) :], axis=1)[:, :-1]
        out[start : start + chunk] = top.mean(axis=1)
    return out


def proportional_quotas(mass: np.ndarray, budget: int) -> np.ndarray:
    """`budget` split in proportion to `mass` (largest remainders round up; ties in `mass`'s order).
    Also `models/drift` `label_mix_sample`'s per-label counts."""
    share = budget * mass / mass.sum() if mass.sum() > 0 else np.full(len(mass), budget / len(mass))
    quota = np.floor(share).astype(int)
    quota[np.argsort(-(share - quota), kind="stable")[: budget - quota.sum()]] += 1
    return quota


def select_informative(
    texts: list[str], embeddings: np.ndarray, confidences: np.ndarray, reference: np.ndarray, budget: int, *, seed: int = 0, region_share: float = 0.5
) -> Selection:
    """Up to `budget` window positions to relabel, most informative clusters first (see module doc).

    Args:
        region_share: the share of the (distinct) window the budget is spread over, best-scoring
            first; at least three candidates per label are kept whatever the share.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

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
    uncertainty = 1.0 - np.asarray(confidences, dtype=np.float64)[idx]
    novelty = 1.0 - _nearest_similarity(embeddings[idx], reference)
    score_all = 0.5 * _rank01(uncertainty) + 0.5 * _rank01(novelty)
    # The drifted region: the more informative part of the window.
    region = np.argsort(-score_all, kind="stable")[: max(budget * 3, int(np.ceil(len(idx) * region_share)))]
    emb, score = embeddings[idx[region]], score_all[region]
    rng = np.random.default_rng(seed)
    fit = np.sort(rng.choice(len(region), MAX_FIT, replace=False)) if len(region) > MAX_FIT else np.arange(len(region))
    n_clusters = int(min(budget, len(region)))
    if n_clusters > 1:
        # One thread: at most 2,000 x 384 points, where OpenMP's threads cost more than they save
        # (on a busy 2-core machine 40x more: 35 s instead of 0.8 s for 300 clusters).
        with threadpool_limits(1):
            labels = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit(emb[fit]).predict(emb)
    else:
        labels = np.zeros(len(region), dtype=int)
    mass = np.bincount(labels, weights=score, minlength=n_clusters)
    quota = proportional_quotas(mass, budget)
    density = _density(emb, emb[fit])
    queues = {c: [int(p) for p in np.flatnonzero(labels == c)[np.argsort(-density[labels == c], kind="stable")]] for c in range(n_clusters)}
    order = [int(c) for c in np.argsort(-mass, kind="stable")]
    picked: list[int] = []
    picked_clusters: list[int] = []
    taken = np.zeros(n_clusters, dtype=int)

    def take(cluster: int) -> bool:
        while queues[cluster]:
            candidate = queues[cluster].pop(0)
            if picked and float((emb[picked] @ emb[candidate]).max()) >= NEAR_DUPLICATE_COSINE:
                continue  # a near duplicate of a pick: skip it, try the next in this cluster
            picked.append(candidate)
            picked_clusters.append(cluster)
            taken[cluster] += 1
            return True
        return False

    # Rounds over the clusters, heaviest first, each up to its quota; what a cluster cannot fill
    # (too few distinct candidates) goes to the others in the same order.
    for limit in (quota, None):
        progressed = True
        while len(picked) < budget and progressed:
            progressed = False
            for cluster in order:
                if len(picked) < budget and (limit is None or taken[cluster] < limit[cluster]):
                    progressed |= take(cluster)
    return Selection(
        indices=[int(idx[region[p]]) for p in picked],
        scores=[float(score[p]) for p in picked],
        clusters=picked_clusters,
        candidates=len(idx),
    )


def select_random(n: int, budget: int, *, seed: int = 0) -> list[int]:
    """The baseline: `budget` positions uniformly at random."""
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.permutation(n)[:budget]]
