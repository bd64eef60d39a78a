import numpy as np

from slm_flywheel.models.selection import select_informative, select_random


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_selection_prefers_uncertain_novel_samples_dedups_and_spreads():
    rng = np.random.default_rng(0)
    reference = _unit(rng.normal(size=(200, 8)) + np.array([5, 0, 0, 0, 0, 0, 0, 0]))
    familiar = _unit(rng.normal(size=(60, 8)) + np.array([5, 0, 0, 0, 0, 0, 0, 0]))
    new_a = _unit(rng.normal(size=(30, 8)) * 1.5 + np.array([0, 5, 0, 0, 0, 0, 0, 0]))
    new_b = _unit(rng.normal(size=(30, 8)) * 1.5 + np.array([0, 0, 5, 0, 0, 0, 0, 0]))
    embeddings = np.vstack([familiar, new_a, new_b])
    texts = [f"familiar {i}" for i in range(60)] + [f"new a {i}" for i in range(30)] + [f"new b {i}" for i in range(30)]
    texts[61] = texts[60].upper()  # an exact duplicate once normalized
    confidences = np.array([0.95] * 60 + [0.4] * 60)
    selection = select_informative(texts, embeddings, confidences, reference, budget=10, seed=1)
    assert len(selection.indices) == 10 and len(set(selection.indices)) == 10
    assert all(i >= 60 for i in selection.indices)  # nothing familiar and confident
    assert sum(60 <= i < 90 for i in selection.indices) >= 3 and sum(i >= 90 for i in selection.indices) >= 3  # both new regions
    assert selection.candidates == 119
    assert select_informative(texts, embeddings, confidences, reference, budget=10, seed=1) == selection  # deterministic


def test_near_duplicates_are_not_bought_twice():
    reference = _unit([[1, 0, 0]])
    same = _unit([[0, 1, 0.001 * i] for i in range(20)])
    other = _unit([[0, 0, 1]])
    embeddings = np.vstack([same, other])
    texts = [f"t{i}" for i in range(21)]
    selection = select_informative(texts, embeddings, np.full(21, 0.5), reference, budget=5)
    assert sorted(selection.indices) == [0, 20] or len(selection.indices) == 2


def test_random_baseline_and_empty_budget():
    assert len(set(select_random(100, 30, seed=2))) == 30
    assert select_informative(["a"], _unit([[1, 0]]), np.array([0.5]), _unit([[1, 0]]), budget=0).indices == []


def test_select_samples_picks_among_the_embedded_rows_of_the_window():
    import pandas as pd
    from prefect.logging import disable_run_logger

    from slm_flywheel.models.drift import WindowEmbeddings
    from slm_flywheel.tasks.relabel import select_samples

    # 40 requests; the drift check embedded the odd rows. Rows 1, 5, 9, ... are new and unsure;
    # the even rows are the least confident of all but were not embedded, so cannot be picked.
    rng = np.random.default_rng(3)
    reference = _unit(rng.normal(size=(100, 8)) + np.array([5, 0, 0, 0, 0, 0, 0, 0]))
    positions = np.arange(1, 40, 2)
    new = positions % 4 == 1
    vectors = _unit(rng.normal(size=(len(positions), 8)) + np.where(new[:, None], np.eye(8)[1] * 5, np.eye(8)[0] * 5))
    samples = pd.DataFrame({
        "request_id": [f"r{i}" for i in range(40)],
        "input": [f"request {i}" for i in range(40)],
        "confidence": [0.1 if i % 2 == 0 else 0.4 if i % 4 == 1 else 0.95 for i in range(40)],
    })
    with disable_run_logger():
        selected = select_samples.fn(samples, WindowEmbeddings(positions, vectors), reference, budget=4)
    assert len(selected) == 4
    assert all(int(rid[1:]) % 4 == 1 for rid in selected["request_id"])  # embedded, new and unsure
    assert list(selected["input"]) == [f"request {rid[1:]}" for rid in selected["request_id"]]  # whole rows, aligned
