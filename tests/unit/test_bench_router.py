"""The router benchmark's shares: the oracle is the floor, random is linear, a perfect ranking meets the oracle."""

import numpy as np
import pytest

from bench import router as bench_router


def test_shares_of_the_three_policies_on_known_answers():
    # 10 requests: the small model is wrong on 3 of them; the frontier is wrong on one other.
    slm = np.array([True] * 7 + [False] * 3)
    frontier = np.array([False] + [True] * 9)
    # The oracle sends the 3 the small model misses: 1.0 served accuracy at share 0.3.
    oracle = bench_router.oracle_order(slm, frontier)
    assert bench_router.share_needed(oracle, slm, frontier, 0.9) == pytest.approx(0.2)
    assert bench_router.share_needed(oracle, slm, frontier, 1.0) == pytest.approx(0.3)
    # A ranking that puts the misses last needs everything but still gets there.
    worst = np.arange(10)
    assert bench_router.accuracy_by_share(worst, slm, frontier)[[0, 10]] == pytest.approx([0.7, 0.9])
    assert bench_router.share_needed(worst, slm, frontier, 0.9) == pytest.approx(1.0)
    assert bench_router.share_needed(worst, slm, frontier, 0.95) is None
    # Random routing: 0.7 + s * (0.9 - 0.7) reaches 0.8 at s = 0.5; 0.95 is beyond the frontier.
    assert bench_router.random_share(0.7, 0.9, 0.8) == pytest.approx(0.5)
    assert bench_router.random_share(0.7, 0.9, 0.95) is None
    assert bench_router.random_share(0.95, 0.9, 0.9) == 0.0
