"""Drift tasks: the champion's reference (cached per version) and the drift check itself."""

from __future__ import annotations

import base64
import json
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from slm_flywheel.config import Settings
from slm_flywheel.models.context import WorkloadContext
from slm_flywheel.models.drift import (
    DriftReference,
    DriftReport,
    DriftWindow,
    Embedder,
    WindowEmbeddings,
    detect_drift,
    embed_window,
    label_mix_sample,
)
from slm_flywheel.models.registry import AdapterVersion
from slm_flywheel.tasks.samples import SampleWindow
from slm_flywheel.tasks.training import TRAINING_SET_ARTIFACT
from slm_flywheel.tracking import experiment_id, log_files, log_metrics


@dataclass(frozen=True)
class ChampionReference:
    """The champion a window is compared with, and what it knows."""

    version: AdapterVersion
    adapter_dir: Path
    reference: DriftReference
    training_set: pd.DataFrame  # the exact rows the champion was trained on (id, text, label)


@lru_cache(maxsize=2)
def _embedder(torch_threads: int | None) -> Embedder:
    return Embedder(torch_threads=torch_threads)


def embedder(settings: Settings) -> Embedder:
    """One embedder per process: loading MiniLM takes seconds, and a run embeds twice."""
    return _embedder(settings.torch_threads)


# Embeddings are cached per (model, texts) by `Embedder.encode_cached`, not by a Prefect cache
# policy: measured over 3 nights of drift-check plus nightly (bench/caches.py), that cache makes 2
# passes over the champion's 1,000 training texts against 6 uncached, while Prefect's INPUTS key
# hashes the MLflow client by its URI and returned the old champion's reference in 2 of 6 builds
# after a promotion (a client holding a lock cannot be hashed at all: no cache).
@task(cache_policy=NONE)  # measured: the per-(model, texts) embedding cache above does better
def build_reference(context: WorkloadContext, client: Any, base_path: str) -> ChampionReference:
    """The champion's training-input embeddings and its answers on validation (cached per version;
    for classification, at the training set's label mix)."""
    from slm_flywheel.models.evaluation import evaluate_model
    from slm_flywheel.models.registry import download_adapter, get_version

    settings, spec = context.settings, context.spec
    version = get_version(client, spec.name)
    adapter_dir = download_adapter(client, version, settings.adapters_dir)
    training_set = pd.read_parquet(client.download_artifacts(version.run_id, TRAINING_SET_ARTIFACT, tempfile.mkdtemp()))
    cache = settings.state_dir / "reference" / spec.name
    embeddings = embedder(settings).encode_cached(list(training_set["text"]), cache)
    answers_path = cache / f"v{version.version}-validation.json"
    if answers_path.exists():
        stored = json.loads(answers_path.read_text())
    else:
        # The version's validation answers as train-adapter scored them: read from the evaluation
        # cache when this state dir trained it (the demo's launch night: 28 s of predicting saved).
        validation = context.splits["validation"]
        scored = evaluate_model(
            spec, base_path, adapter_dir, list(validation["text"]), list(validation["label"]), context.config.eval_batch_size,
            cache_dir=settings.eval_cache_dir,
        )
        answers = [spec.parse_label(answer) if answer else None for answer in scored.predictions]  # "" = no valid answer
        stored = {"answers": answers, "confidences": scored.confidences}
        answers_path.parent.mkdir(parents=True, exist_ok=True)
        answers_path.write_text(json.dumps(stored))
    answers, confidences = stored["answers"], np.asarray(stored["confidences"], dtype=np.float64)
    if spec.task == "classification":
        # Validation at the training set's label mix: the priors the champion was trained, and
        # deployed, at (`label_mix_sample`); slot extraction has no label to match.
        keep = label_mix_sample(list(context.splits["validation"]["label"]), list(training_set["label"]))
        answers, confidences = [answers[i] for i in keep], confidences[keep]
    reference = DriftReference(embeddings=embeddings, answers=answers, confidences=confidences)
    get_run_logger().info(
        "%s reference: champion v%d, %d training inputs, %d validation answers (at the training set's label mix for classification)",
        spec.name, version.version, len(embeddings), len(answers),
    )
    return ChampionReference(version, adapter_dir, reference, training_set)


def _plot_markdown(report: DriftReport) -> tuple[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        png = report.plot(Path(tmp) / "drift.png").read_bytes()
    encoded = base64.b64encode(png).decode()
    return f"\n\n![drift tests](data:image/png;base64,{encoded})\n", png


@task(cache_policy=NONE)  # side effect: each check logs its report (MLflow run, artifact); every window is new
def detect_drift_in_window(context: WorkloadContext, client: Any, window: SampleWindow, champion: ChampionReference) -> tuple[DriftReport, WindowEmbeddings]:
    """Compare the window with the champion's reference; log the report to MLflow and as an artifact.

    Returns the report and the input embeddings of the rows it embedded (every row up to
    `drift.max_embedded`, a seeded random subsample beyond): the selection picks among them.
    """
    settings, spec, config = context.settings, context.spec, context.config.drift
    samples = window.samples
    embeddings = embed_window(embedder(settings), list(samples["input"]), config.max_embedded, config.seed)
    current = DriftWindow(
        embeddings=embeddings.vectors,
        answers=spec.parse_stored_answers(list(samples["answer"])),
        confidences=samples["confidence"].to_numpy(dtype=np.float64) if len(samples) else np.zeros(0),
        embedded=embeddings.positions,
    )
    report = detect_drift(champion.reference, current, config, spec.task)
    plot_md, png = _plot_markdown(report)
    markdown = f"# Drift check: {spec.name} vs champion v{champion.version.version}\n\n{report.to_markdown()}{plot_md}"
    create_markdown_artifact(key=f"drift-{spec.name}", markdown=markdown, description=f"drift check of {spec.name}")
    run = client.create_run(experiment_id(client, settings, spec.name), run_name=f"drift-{spec.name}", tags={"kind": "drift-check", "champion_version": str(champion.version.version)})
    run_id = run.info.run_id
    log_metrics(client, run_id, report.metrics() | {"embedded_rows": len(embeddings.positions)})
    log_files(client, run_id, {"drift_report.json": json.dumps(report.to_dict(), indent=1), "drift_report.png": png}, "drift")
    client.set_terminated(run_id, "FINISHED")
    get_run_logger().info("%s drift: %s (%s)", spec.name, "DRIFTED" if report.drifted else "no drift", report.reason)
    return report, embeddings
