"""Drift detection: quiet on steady traffic, loud on real shifts, held back by effect size."""

from __future__ import annotations

import csv
import json
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from slm_flywheel.config import DriftConfig
from slm_flywheel.models.drift import (
    DriftReference,
    DriftReport,
    DriftWindow,
    Embedder,
    detect_drift,
    embed_window,
    holm_bonferroni,
    label_mix_sample,
)

DIM = 384


# ---------------------------------------------------------------------------------------------
# A synthetic world: one fixed distribution of (embedding, label, confidence) to draw from


@dataclass(frozen=True)
class World:
    """77 intents with uneven traffic; an input's embedding sits near its intent's centre."""

    centers: np.ndarray
    label_probs: np.ndarray
    labels: tuple[str, ...]

    @classmethod
    def make(cls, seed: int = 0, n_labels: int = 77) -> World:
        rng = np.random.default_rng(seed)
        centers = _normalize(rng.standard_normal((n_labels, DIM)))
        return cls(centers, rng.dirichlet(np.full(n_labels, 20.0)), tuple(f"intent_{i}" for i in range(n_labels)))

    def draw(
        self, rng: np.random.Generator, n: int, label_probs: np.ndarray | None = None, conf_shift: float = 0.0
    ) -> tuple[np.ndarray, list[str], np.ndarray]:
        index = rng.choice(len(self.labels), size=n, p=self.label_probs if label_probs is None else label_probs)
        embeddings = _normalize(self.centers[index] + rng.standard_normal((n, DIM)).astype(np.float32) * 0.06)
        # Beta(5, 2): mean 0.71 and about 11% of answers under 0.5, like a decent small-model champion.
        confidences = np.clip(rng.beta(5.0, 2.0, size=n) + conf_shift, 0.0, 1.0)
        return embeddings.astype(np.float32), [self.labels[i] for i in index], confidences

    def reference(self, rng: np.random.Generator, n_inputs: int, n_answers: int) -> DriftReference:
        embeddings, _, _ = self.draw(rng, n_inputs)
        _, answers, confidences = self.draw(rng, n_answers)
        return DriftReference(embeddings=embeddings, answers=answers, confidences=confidences)

    def window(self, rng: np.random.Generator, n: int, **shift: object) -> DriftWindow:
        embeddings, answers, confidences = self.draw(rng, n, **shift)  # type: ignore[arg-type]
        return DriftWindow(embeddings=embeddings, answers=answers, confidences=confidences)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Calibration


def test_false_alarm_rate_on_same_distribution_windows_is_at_most_alpha() -> None:
    config = DriftConfig()
    world = World.make()
    rng = np.random.default_rng(1)
    windows = 100
    alarms = significant = 0
    for _ in range(windows):
        # A fresh reference per window: Holm's guarantee is over draws of both sides.
        reference = world.reference(rng, n_inputs=1000, n_answers=500)
        report = detect_drift(reference, world.window(rng, config.min_window), config, "classification")
        assert not report.insufficient and len(report.tests) == 4
        alarms += report.drifted
        significant += any(test.significant for test in report.tests)
    assert alarms / windows <= config.alpha
    # Significance alone (no effect thresholds) is what Holm controls at alpha; 100 windows
    # estimate that rate to ±0.022, so allow two standard errors.
    assert significant / windows <= config.alpha + 0.044


def test_config_rejects_settings_that_cannot_work() -> None:
    # 4 tests under Holm need the best permutation p (1/(n+1)) below alpha/4.
    with pytest.raises(ValueError, match="n_permutations"):
        DriftConfig(n_permutations=50)
    assert DriftConfig(n_permutations=80).n_permutations == 80
    with pytest.raises(ValueError, match="extra"):
        DriftConfig(window=500)


def test_config_keeps_every_row_the_input_test_reads_embedded() -> None:
    with pytest.raises(ValueError, match="max_embedded=1000 is below max_test_samples=2000"):
        DriftConfig(max_embedded=1000)
    assert DriftConfig(max_embedded=500, max_test_samples=500).max_embedded == 500


def test_importing_the_config_stays_cheap() -> None:
    # Every layer imports the settings: loading them must not pull in torch or scipy.
    heavy = "{'torch', 'scipy', 'sentence_transformers', 'matplotlib'}"
    code = f"import sys, slm_flywheel.config; print(sorted({heavy} & set(sys.modules)))"
    repo = Path(__file__).parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.strip() == "[]"


def test_answers_of_the_wrong_kind_are_rejected() -> None:
    world = World.make()
    rng = np.random.default_rng(8)
    reference = world.reference(rng, 300, 300)
    with pytest.raises(ValueError, match="extraction answers must be dict"):
        detect_drift(reference, world.window(rng, 300), DriftConfig(), "extraction")


def test_holm_bonferroni_step_down() -> None:
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, then 0.04·1 is lifted to the running 0.06.
    assert holm_bonferroni([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_bonferroni([0.9, 0.8]) == pytest.approx([1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# Large windows: the effect threshold, not the p-value, keeps a hair-thin shift quiet


@pytest.fixture(scope="module")
def large_window_case() -> tuple[World, DriftReference, np.random.Generator]:
    world = World.make()
    rng = np.random.default_rng(2)
    reference_inputs, _, _ = world.draw(rng, 5000)
    _, answers, confidences = world.draw(rng, 100_000)
    return world, DriftReference(reference_inputs, answers, confidences), rng


def _moved(world: World, share: float) -> np.ndarray:
    """The label distribution with `share` of all traffic moved onto intent 0."""
    probs = world.label_probs * (1 - share)
    probs[0] += share
    return probs


def test_negligible_shift_in_a_100k_window_is_significant_but_not_drift(large_window_case) -> None:
    world, reference, rng = large_window_case
    config = DriftConfig()
    window = world.window(rng, 100_000, label_probs=_moved(world, 0.01), conf_shift=0.002)
    report = detect_drift(reference, window, config, "classification")

    tests = {test.name: test for test in report.tests}
    assert not report.drifted, report.reason
    # 1% of 100k requests moving onto one intent is unmistakable statistically (no permutation
    # comes near it, so p is the smallest 200 permutations can give)...
    label = tests["label_js"]
    assert label.significant and label.detail["p_value_uncorrected"] == pytest.approx(1 / 201)
    assert label.statistic > 2 * label.detail["null_q95"]
    # ...and small in effect: the threshold is what holds it back.
    assert 0 < label.effect < config.label_js_threshold
    assert tests["confidence_ks"].effect < 0.01
    assert all(not test.drifted for test in report.tests)
    assert "below threshold" in report.reason
    # How fast a 100k window is tested: bench/drift.py.


def test_real_shift_in_a_100k_window_is_drift(large_window_case) -> None:
    world, reference, rng = large_window_case
    window = world.window(rng, 100_000, label_probs=_moved(world, 0.1), conf_shift=-0.15)
    report = detect_drift(reference, window, DriftConfig(), "classification")
    tests = {test.name: test for test in report.tests}
    assert report.drifted
    assert tests["label_js"].drifted and tests["confidence_ks"].drifted and tests["low_confidence_share"].drifted
    # The input test ran on a capped subsample, which is what keeps it fast.
    assert tests["input_mmd"].detail["n_tested_current"] == DriftConfig().max_test_samples


def test_window_below_min_window_is_insufficient_not_drifted() -> None:
    world = World.make()
    rng = np.random.default_rng(3)
    config = DriftConfig()
    reference = world.reference(rng, 500, 500)
    # Even a window that is nothing but one intent is not judged below min_window.
    only_one = np.eye(len(world.labels))[0]
    below = world.window(rng, config.min_window - 1, label_probs=only_one)
    small = detect_drift(reference, below, config, "classification")
    assert small.insufficient and not small.drifted and small.tests == []
    assert "insufficient samples" in small.reason
    at_min = world.window(rng, config.min_window, label_probs=only_one)
    enough = detect_drift(reference, at_min, config, "classification")
    assert not enough.insufficient and enough.drifted


def test_label_mix_sample_takes_the_training_sets_mix_from_validations_own_items() -> None:
    validation = ["a"] * 50 + ["b"] * 30 + ["late"] * 20
    training = ["a"] * 600 + ["b"] * 380 + ["late"] * 20 + ["unseen"] * 100  # "unseen": none in validation
    keep = label_mix_sample(validation, training, seed=1)
    picked = [validation[i] for i in keep]
    assert len(keep) == len(validation) and list(keep) == sorted(keep)
    # 600 : 380 : 20 of 100 items ("unseen" drops out): a has 50 items, so 10 of them come twice.
    assert (picked.count("a"), picked.count("b"), picked.count("late")) == (60, 38, 2)
    assert sorted(set(keep[np.asarray(picked) == "a"])) == list(range(50))  # every a item before any repeat
    assert list(label_mix_sample(validation, [], seed=1)) == list(range(100))  # no target: as it is
    assert np.array_equal(label_mix_sample(validation, training, seed=1), keep)  # seeded


def test_steady_traffic_is_quiet_against_validation_at_the_training_mix() -> None:
    # A champion trained with 12 late intents as 2% of its rows, validated on a split holding them
    # at 25%, where its answers are unsure. Steady traffic follows the training mix: against the
    # raw validation answers it reads as a confidence shift; at the training mix it is quiet.
    world, config = World.make(), DriftConfig()
    late = np.arange(12)
    def mix(late_share: float) -> np.ndarray:
        probs = world.label_probs.copy()
        probs[late] *= late_share / probs[late].sum()
        rest = np.setdiff1d(np.arange(len(probs)), late)
        probs[rest] *= (1 - late_share) / probs[rest].sum()
        return probs
    def draw(rng: np.random.Generator, n: int, late_share: float) -> tuple[np.ndarray, list[str], np.ndarray]:
        embeddings, labels, _ = world.draw(rng, n, label_probs=mix(late_share))
        unsure = np.isin(labels, [world.labels[i] for i in late])
        return embeddings, labels, np.where(unsure, rng.beta(1.5, 6.0, n), rng.beta(5.0, 2.0, n))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        training_inputs, training_labels, _ = draw(rng, 1500, 0.02)
        _, validation_labels, validation_confidence = draw(rng, 600, 0.25)  # the answers are the gold labels here
        steady = DriftWindow(*draw(rng, 400, 0.02))
        raw = DriftReference(training_inputs, validation_labels, validation_confidence)
        keep = label_mix_sample(validation_labels, training_labels, seed=seed)
        matched = DriftReference(training_inputs, [validation_labels[i] for i in keep], validation_confidence[keep])
        assert detect_drift(raw, steady, config, "classification").drifted
        assert not detect_drift(matched, steady, config, "classification").drifted


def test_window_embedded_on_a_subsample_is_tested_on_it() -> None:
    world = World.make()
    rng = np.random.default_rng(9)
    reference = world.reference(rng, 1000, 500)
    full = world.window(rng, 3000, label_probs=_moved(world, 0.3))
    embedded = np.sort(rng.choice(3000, size=2500, replace=False))
    window = DriftWindow(full.embeddings[embedded], full.answers, full.confidences, embedded=embedded)
    report = detect_drift(reference, window, DriftConfig(), "classification")
    tests = {test.name: test for test in report.tests}
    assert report.window_size == 3000 and tests["input_mmd"].detail["n_current"] == 2500
    assert tests["label_js"].drifted  # answers and confidences still count every row
    with pytest.raises(ValueError, match="embedded positions"):
        detect_drift(reference, DriftWindow(full.embeddings[embedded], full.answers, full.confidences, embedded=embedded[::-1]), DriftConfig(), "classification")
    with pytest.raises(ValueError, match="must be aligned"):
        detect_drift(reference, DriftWindow(full.embeddings, full.answers, full.confidences, embedded=embedded), DriftConfig(), "classification")


# ---------------------------------------------------------------------------------------------
# Extraction: slot fill rates


def _slot_answers(rng: np.random.Generator, n: int, name_rate: float, invalid_rate: float = 0.02) -> list[dict | None]:
    answers: list[dict | None] = []
    for _ in range(n):
        if rng.random() < invalid_rate:
            answers.append(None)
            continue
        answer = {"people": "2"} if rng.random() < 0.8 else {}
        if rng.random() < 0.6:
            answer["time"] = "7pm"
        if rng.random() < name_rate:  # first and last names come together, as in Restaurant-8k
            answer |= {"first_name": "Ada", "last_name": "Lovelace"}
        answers.append(answer)
    return answers


def _extraction_case(rng: np.random.Generator, n: int, name_rate: float, invalid_rate: float = 0.02):
    embeddings = _normalize(rng.standard_normal((n, DIM))).astype(np.float32)
    return embeddings, _slot_answers(rng, n, name_rate, invalid_rate), rng.beta(5.0, 2.0, size=n)


def test_slot_fill_drift_for_extraction() -> None:
    rng = np.random.default_rng(4)
    config = DriftConfig()
    reference = DriftReference(*_extraction_case(rng, 600, name_rate=0.05))
    steady = detect_drift(reference, DriftWindow(*_extraction_case(rng, 300, 0.05)), config, "extraction")
    names = detect_drift(reference, DriftWindow(*_extraction_case(rng, 300, 0.4)), config, "extraction")
    invalid = DriftWindow(*_extraction_case(rng, 300, 0.05, invalid_rate=0.25))
    broken = detect_drift(reference, invalid, config, "extraction")

    assert [test.name for test in steady.tests][1] == "slot_fill"
    assert not steady.drifted, steady.reason
    slot_fill = {test.name: test for test in names.tests}["slot_fill"]
    assert names.drifted and slot_fill.drifted
    rates = slot_fill.detail["fill_rates"]
    assert rates["first_name"]["current"] - rates["first_name"]["reference"] > 0.25
    # A surge of invalid answers is drift of its own, through the invalid share.
    broken_fill = {test.name: test for test in broken.tests}["slot_fill"]
    assert broken_fill.drifted
    assert broken_fill.detail["fill_rates"]["<invalid>"]["current"] > 0.15


# ---------------------------------------------------------------------------------------------
# Real Banking77 texts through the real embedding model


_ABBREVIATIONS = {"you": "u", "your": "ur", "are": "r", "please": "pls", "account": "acct", "to": "2", "for": "4"}
_FILLERS = ("hey so ", "ok um ", "hi, quick q: ", "so basically ")
FEW_INTENTS = {"card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"}


def rewrite(text: str, rng: random.Random) -> str:
    """The same request in chat-speak: lowercase, abbreviations, a typo or two, filler words."""
    words = [_ABBREVIATIONS.get(w, w) for w in re.sub(r"[?.!,]", "", text.lower()).split()]
    chars = list(" ".join(words))
    for _ in range(max(1, len(chars) // 20)):  # swap two neighbouring letters
        i = rng.randrange(0, max(len(chars) - 1, 1))
        chars[i : i + 2] = chars[i : i + 2][::-1]
    return rng.choice(_FILLERS) + "".join(chars) + rng.choice(("", " lol", " thx", " asap"))


@dataclass(frozen=True)
class RealCase:
    reference: DriftReference
    steady: DriftWindow  # held-out ordinary traffic
    rewritten: DriftWindow  # the steady window's texts, rewritten
    few_intents: DriftWindow  # traffic concentrated on four intents


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def real_case(data_dir: Path, embedder: Embedder) -> RealCase:
    with (data_dir / "banking77" / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = [(row["text"].strip(), row["category"]) for row in csv.DictReader(handle)]
    random.Random(5).shuffle(rows)
    ordinary = [row for row in rows if row[1] not in FEW_INTENTS]
    focused = [row for row in rows if row[1] in FEW_INTENTS][:200]
    reference_rows, steady_rows = ordinary[:600], ordinary[600:800]
    rng = random.Random(6)
    rewritten_texts = [rewrite(text, rng) for text, _ in steady_rows]

    # 1,200 texts in one call: about 15 s on 2 cores.
    texts = [t for t, _ in reference_rows] + [t for t, _ in steady_rows] + rewritten_texts + [t for t, _ in focused]
    vectors = embedder.encode(texts)
    parts = np.split(vectors, [600, 800, 1000])
    conf_rng = np.random.default_rng(7)

    # Gold labels stand in for the champion's answers (a perfect champion), and the confidences
    # come from one distribution on both sides, so only the inputs and the answer mix can move.
    def window(embeddings: np.ndarray, labels: list[str]) -> DriftWindow:
        return DriftWindow(embeddings, labels, conf_rng.beta(5.0, 2.0, size=len(labels)))

    return RealCase(
        reference=DriftReference(parts[0], [label for _, label in reference_rows], conf_rng.beta(5.0, 2.0, size=600)),
        steady=window(parts[1], [label for _, label in steady_rows]),
        rewritten=window(parts[2], [label for _, label in steady_rows]),
        few_intents=window(parts[3], [label for _, label in focused]),
    )


def _by_name(report: DriftReport) -> dict:
    return {test.name: test for test in report.tests}


def test_held_out_ordinary_traffic_is_not_drift(real_case: RealCase) -> None:
    report = detect_drift(real_case.reference, real_case.steady, DriftConfig(), "classification")
    assert not report.drifted, report.reason
    assert _by_name(report)["input_mmd"].effect < DriftConfig().mmd_threshold


def test_traffic_concentrated_on_few_intents_is_input_and_label_drift(real_case: RealCase) -> None:
    report = detect_drift(real_case.reference, real_case.few_intents, DriftConfig(), "classification")
    tests = _by_name(report)
    assert report.drifted
    assert tests["input_mmd"].drifted and tests["label_js"].drifted
    assert set(tests["label_js"].detail["largest_moves"]) >= FEW_INTENTS


def test_rewritten_traffic_is_input_drift_at_the_minimum_window(real_case: RealCase) -> None:
    assert len(real_case.rewritten.answers) == DriftConfig().min_window
    report = detect_drift(real_case.reference, real_case.rewritten, DriftConfig(), "classification")
    tests = _by_name(report)
    assert report.drifted and tests["input_mmd"].drifted
    assert not tests["label_js"].drifted  # same requests, same answers: only the wording moved


def test_report_renders_as_markdown_json_and_png(real_case: RealCase, tmp_path: Path) -> None:
    report = detect_drift(real_case.reference, real_case.few_intents, DriftConfig(), "classification")
    markdown = report.to_markdown()
    for test in report.tests:
        assert f"| {test.name} |" in markdown
    assert "p (corrected)" in markdown and "DRIFT" in markdown
    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert payload["drifted"] is True and len(payload["tests"]) == 4
    assert all("p_value_uncorrected" in test["detail"] for test in payload["tests"])
    png = report.plot(tmp_path / "plots" / "drift.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# Embedder


def test_embedder_returns_normalized_float32_offline(embedder: Embedder) -> None:
    vectors = embedder.encode(["I lost my card", "i lost my card!!", "What is the exchange rate?"])
    assert vectors.shape == (3, DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Paraphrases sit closer than different requests: the real model, not random weights.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert embedder.encode([]).shape == (0, DIM)


def test_encode_cached_computes_once(embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["where is my card", "how do I top up"]
    first = embedder.encode_cached(texts, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def refuse(_: object) -> np.ndarray:
        raise AssertionError("encode called on a cache hit")

    monkeypatch.setattr(embedder, "encode", refuse)
    second = embedder.encode_cached(texts, tmp_path)
    assert np.array_equal(first, second) and second.dtype == np.float32
    with pytest.raises(AssertionError, match="cache hit"):  # other texts are another key
        embedder.encode_cached(texts[::-1], tmp_path)


class _RecordingEmbedder:
    """Stands in for MiniLM: row i of text "t<i>" is the vector [i], and every text embedded is kept."""

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.embedded += texts
        return np.array([[float(text[1:])] for text in texts], dtype=np.float32).reshape(-1, 1)


def test_embed_window_embeds_at_most_the_cap_deterministically() -> None:
    texts = [f"t{i}" for i in range(5000)]
    small = _RecordingEmbedder()
    every = embed_window(small, texts[:300], max_embedded=1000, seed=0)  # type: ignore[arg-type]
    assert every.positions.tolist() == list(range(300)) and len(small.embedded) == 300

    capped = _RecordingEmbedder()
    first = embed_window(capped, texts, max_embedded=1000, seed=0)  # type: ignore[arg-type]
    assert len(capped.embedded) == 1000 and len(set(first.positions.tolist())) == 1000
    assert np.all(np.diff(first.positions) > 0)
    # Each vector embeds the text at its position.
    assert first.vectors[:, 0].tolist() == first.positions.astype(float).tolist()
    again = embed_window(_RecordingEmbedder(), texts, max_embedded=1000, seed=0)  # type: ignore[arg-type]
    other = embed_window(_RecordingEmbedder(), texts, max_embedded=1000, seed=1)  # type: ignore[arg-type]
    assert np.array_equal(first.positions, again.positions) and not np.array_equal(first.positions, other.positions)
    # A uniform subsample: no stretch of the window is left out.
    assert np.histogram(first.positions, bins=5, range=(0, 5000))[0].min() > 150


def test_bf16_embeddings_stay_within_cosine_0_999_of_fp32(data_dir: Path) -> None:
    with (data_dir / "banking77" / "train.csv").open(newline="", encoding="utf-8") as handle:
        texts = [row["text"].strip() for row, _ in zip(csv.DictReader(handle), range(40))]
    rng = random.Random(3)
    texts += [rewrite(text, rng) for text in texts] + [" ".join(texts[:12])]  # and one past max_seq_length
    fp32, bf16 = Embedder(bf16=False), Embedder(bf16=True)
    exact, fast = fp32.encode(texts), bf16.encode(texts)
    assert fast.dtype == np.float32 and np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    cosine = (exact * fast).sum(axis=1)
    assert cosine.min() >= 0.999, f"bf16 embedding {int(cosine.argmin())} at cosine {cosine.min():.5f} of fp32"
    # The precision is part of the cache key: a cached fp32 array never stands in for bf16.
    assert fp32.fingerprint != bf16.fingerprint


def test_embedder_sets_its_threads_for_its_own_calls_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    embedder = Embedder(torch_threads=1 if before > 1 else 2)
    model = embedder._load()
    seen: list[int] = []
    real = model.encode

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "encode", spy)
    embedder.encode(["where is my card"])
    assert seen == [embedder.torch_threads] and torch.get_num_threads() == before


def test_report_metrics_name_each_test_by_its_effect_and_corrected_p() -> None:
    from slm_flywheel.models.drift import DriftReport, DriftTest

    tests = [DriftTest("input mmd", 0.2, 0.01, 0.3, 0.1, True, True), DriftTest("label_js", 0.0, 0.9, 0.01, 0.1, False, False)]
    report = DriftReport(True, tests, 500, 400, "input drift", False, 0.05)
    assert report.metrics() == {
        "drifted": 1.0, "window_size": 500.0,
        "input_mmd_effect": 0.3, "input_mmd_p": 0.01, "label_js_effect": 0.01, "label_js_p": 0.9,
    }


def test_stored_answers_parse_by_task_and_keep_invalid_ones_as_none() -> None:
    from slm_flywheel.models.workload import TaskSpec

    intents = TaskSpec("banking-intent", "classification", "{text}", labels=("a",))
    slots = TaskSpec("restaurant-slots", "extraction", "{text}", slots=("people",))
    assert intents.parse_stored_answers(["a", None]) == ["a", None]
    assert slots.parse_stored_answers(['{"people": "2"}', None, float("nan")]) == [{"people": "2"}, None, None]
