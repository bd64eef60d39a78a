"""The cache benchmark's quick scenarios: the counts each cache promises, measured in-process."""

import pytest

from bench import caches

N = caches.QUICK.relabel


@pytest.fixture(scope="module")
def rows(data_dir) -> dict[str, caches.Row]:
    return {row.scenario: row for row in caches.measure(quick=True)}


def test_identical_rerun_is_free_with_either_cache(rows):
    row = rows["T1"]
    assert (row.none, row.prefect, row.project) == (2 * N, N, N)
    assert row.key_computed


def test_a_new_run_tag_misses_prefects_key_but_not_the_per_text_cache(rows):
    row = rows["T1b"]
    assert (row.none, row.prefect, row.project) == (2 * N, 2 * N, N)


def test_after_an_outage_the_per_item_cache_pays_each_item_once_and_prefect_pays_the_paid_half_again(rows):
    row = rows["T2"]
    assert row.project == N
    assert row.prefect == N + N // 2 > N
    # A teacher that raises returns nothing to cache: every arm pays the half again.
    raised = rows["T2r"]
    assert raised.none == raised.prefect == raised.project == N + N // 2


def test_audit_and_relabel_share_answers_only_through_the_per_text_cache(rows):
    sizes = caches.QUICK
    row = rows["T3"]
    assert row.none == row.prefect == sizes.audit + sizes.relabel
    assert row.project == sizes.audit + sizes.relabel - sizes.overlap


def test_prefect_keys_the_reference_on_the_client_and_serves_a_stale_one(rows):
    row = rows["E1"]
    assert row.key_computed and not row.prefect_correct
    assert (row.none, row.prefect, row.project) == (2 * caches.NIGHTS, 1, 2)  # the project pays once per champion
    locked = rows["E1l"]
    assert not locked.key_computed and locked.prefect == locked.none == 2 * caches.NIGHTS and locked.prefect_correct


def test_the_gate_reuses_golden_results_only_with_the_per_model_cache(rows):
    row = rows["V1"]
    # 1 train eval + 3 models x {golden, drift} a night; cached: golden once per model, drift every night.
    assert row.none == row.prefect == caches.NIGHTS * 7
    assert row.project == 6 + 4 * (caches.NIGHTS - 1) < row.prefect


def test_headline_counts_a_stale_prefect_row_at_its_no_cache_calls(rows):
    saved = caches.headline(list(rows.values()))
    assert saved == {"teacher": N + N // 2 + caches.QUICK.overlap, "embedding": 2 * caches.NIGHTS - 2, "evaluation": 7}
