"""One base model, several LoRA adapters, one inference thread.

A workload's routed adapter also answers from a merged copy of the base weights (`merge_routed`):
peft's unmerged LoRA adds two small matmuls to every adapted linear layer, a third of a
135M model's forward time at batch 1 (bench/RESULTS.md). The unmerged, named adapters stay for
calls that name a version (a push's smoke test, `model: <workload>@v<N>`).

Every model operation (load, unload, predict) runs on a single worker thread, in order (a merged
copy is built on a helper thread before its load is queued, so answering does not pause for it). That is
what makes switching atomic: a workload's route is read when its batch *runs*, an adapter is
only routable once fully loaded, and an unload queued after a switch runs after every batch that
was admitted before it. Requests for one workload that wait together are predicted as one batch.

Threads and torch's OpenMP runtime (libgomp): every thread that runs a parallel torch op keeps a
pool of OpenMP workers until it exits, and once the pools hold more threads than the machine has
cores, libgomp's workers stop spinning between ops and sleep at once (its "throttled" spin), so
each op pays a wake-up. Measured on 2 cores: small ops in one thread 1.8x slower while another
thread that had run ops sat idle; LoRA training in a process whose serving tier had answered
traffic, 1.4x slower. So the base model is loaded on a short-lived thread (the thread that builds
the engine keeps no pool for it), and the worker thread exits after `IDLE_EXIT_S` without work (a
new one starts with the next job), so an idle serving tier leaves the rest of its process (the
demo's trainings, a test's) the machine's full speed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slm_flywheel.models.inference import Prediction, Predictor, load_tokenizer
from slm_flywheel.models.workload import TaskSpec


class EngineError(Exception):
    """A request the engine cannot serve; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServedPrediction:
    prediction: Prediction
    adapter: str  # the versioned adapter name that answered, e.g. banking-intent@v3


@dataclass
class _Job:
    kind: str  # "predict" | "call"
    future: Future
    workload: str = ""
    adapter: str | None = None  # a loaded adapter addressed by name (vLLM style); None = the route
    texts: list[str] = field(default_factory=list)
    fn: Callable[[], Any] | None = None


def _chain(done: Future, future: Future) -> None:
    """Settle `future` as `done` settled."""
    error = done.exception()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(done.result())


def _closed_error() -> EngineError:
    return EngineError("the serving engine is shut down", 503)


IDLE_EXIT_S = 2.0  # the worker thread exits after this long without a job (see the module docstring)


def workload_of(adapter_name: str) -> str:
    """`banking-intent@v3` -> `banking-intent`."""
    return adapter_name.split("@", 1)[0]


class AdapterEngine:
    """Hosts the base model and its adapters; answers predictions in micro-batches."""

    def __init__(
        self, base_path: str, specs: dict[str, TaskSpec], *, max_batch: int = 32, batch_wait_s: float = 0.005, bf16: bool | None = None,
        tree: bool = True, merge_routed: bool = True,
    ):
        from slm_flywheel.models.inference import load_model

        self.base_path = base_path
        self.bf16 = bf16
        # Each loaded adapter merged into its own copy of the base weights, which answers the
        # workload's routed traffic: one more copy of the base per loaded adapter (two during a swap).
        self.merge_routed = merge_routed
        self.specs = specs
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.tree = tree  # classification's two-pass trie decoding (models/inference.py)
        self.tokenizer = load_tokenizer(base_path)
        with ThreadPoolExecutor(1, thread_name_prefix="engine-load") as loader:  # its OpenMP pool goes with it
            self.model: Any = loader.submit(load_model, base_path, None, bf16=bf16).result()
        self.adapters: dict[str, str] = {}  # name -> path
        self.routes: dict[str, str] = {}  # workload -> adapter name
        self._merged: dict[str, Any] = {}  # adapter name -> the base with that adapter merged in
        self._predictors: dict[tuple[str, str | None], Predictor] = {}  # (workload, merged adapter or None)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()  # guards adapters/routes for readers on other threads, and _closed
        self._closed = False  # after close(), a new request or call fails at once instead of waiting forever
        self._thread: threading.Thread | None = None  # the worker, while there is work (started by _submit)

    # -- public API (any thread) -------------------------------------------------------------

    def predict(self, workload: str, texts: list[str], adapter: str | None = None) -> Future:
        """Answer `texts` with the workload's routed adapter, or with the loaded `adapter` by name
        (how a push smoke-tests a version before it takes traffic)."""
        if workload not in self.specs:
            raise EngineError(f"unknown workload {workload!r} (configured: {', '.join(sorted(self.specs))})", 404)
        return self._submit(_Job("predict", Future(), workload=workload, texts=texts, adapter=adapter))

    def load_adapter(self, name: str, path: Path) -> Future:
        """Load adapter `name` from `path`; wait for the future before switching to it.

        With `merge_routed`, its merged copy is built first on a helper thread (a second or more: a
        base read and a merge) while the engine keeps answering; the load itself then runs in order
        on the engine thread, as every model operation does.
        """
        if not self.merge_routed:
            return self._call(lambda: self._load(name, path, None))
        future: Future = Future()

        def build() -> None:
            from slm_flywheel.models.inference import load_model

            try:
                self._check_loadable(name, path)
                merged = load_model(self.base_path, path, bf16=self.bf16)
            except BaseException as exc:  # nothing has changed: the caller gets the error
                future.set_exception(exc)
                return
            self._call(lambda: self._load(name, path, merged)).add_done_callback(lambda done: _chain(done, future))

        threading.Thread(target=build, name=f"merge-{name}", daemon=True).start()
        return future

    def unload_adapter(self, name: str) -> Future:
        return self._call(lambda: self._unload(name))

    def switch(self, workload: str, name: str, unload_previous: bool = True) -> Future:
        """Route `workload` to the loaded adapter `name`; the previous one is unloaded after."""
        return self._call(lambda: self._switch(workload, name, unload_previous))

    def snapshot(self) -> tuple[dict[str, str], dict[str, str]]:
        with self._lock:
            return dict(self.adapters), dict(self.routes)

    def close(self) -> None:
        """Stop the engine thread; whatever is still queued, or asked for later (a merge finishing
        its load, a late request), fails with a 503 rather than leaving its caller waiting."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
            worker = self._thread
        if worker is not None:
            worker.join(timeout=30)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None and not job.future.done():
                job.future.set_exception(_closed_error())

    # -- worker thread -----------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Future:
        return self._submit(_Job("call", Future(), fn=fn))

    def _submit(self, job: _Job) -> Future:
        with self._lock:
            if not self._closed:
                self._jobs.put(job)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="adapter-engine", daemon=True)
                    self._thread.start()
                return job.future
        job.future.set_exception(_closed_error())
        return job.future

    def _next_job(self) -> _Job | None:
        """The next job; None when the engine closes or has been idle `IDLE_EXIT_S` (the thread then exits)."""
        while True:
            try:
                return self._jobs.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:  # _submit starts a new worker under the same lock once this one is gone
                    if self._jobs.empty():
                        self._thread = None
                        return None

    def _run(self) -> None:
        pending: list[_Job] = []
        # Whether requests are arriving together (the last batch had batch-mates, or work queued
        # behind it): only then is a batch held `batch_wait_s` for more. A lone request goes at once.
        together = False
        while True:
            job = pending.pop(0) if pending else self._next_job()
            if job is None:
                return
            if job.kind == "call":
                self._resolve(job.future, job.fn)
                continue
            batch = [job]
            size = len(job.texts)
            deadline = time.monotonic() + (self.batch_wait_s if together else 0.0)
            # Gather more requests for the same workload, up to the batch size: those queued, and
            # while requests arrive together, those arriving within the window.
            while size < self.max_batch:
                try:
                    nxt = self._jobs.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if nxt is not None and nxt.kind == "predict" and (nxt.workload, nxt.adapter) == (job.workload, job.adapter) and size + len(nxt.texts) <= self.max_batch:
                    batch.append(nxt)
                    size += len(nxt.texts)
                else:
                    pending.append(nxt)  # keep order: it runs right after this batch
                    break
            self._predict_batch(job.workload, job.adapter, batch)
            together = len(batch) > 1 or bool(pending) or not self._jobs.empty()

    @staticmethod
    def _resolve(future: Future, fn: Callable[[], Any] | None) -> None:
        try:
            future.set_result(fn() if fn else None)
        except BaseException as exc:  # the caller gets the error; the engine keeps serving
            future.set_exception(exc)

    def _predict_batch(self, workload: str, requested: str | None, batch: list[_Job]) -> None:
        adapter = requested or self.routes.get(workload)
        error = None
        if requested is not None and requested not in self.adapters:
            error = EngineError(f"adapter {requested!r} is not loaded", 404)
        elif adapter is None:
            error = EngineError(f"workload {workload!r} has no adapter loaded", 503)
        if error is not None:
            for job in batch:
                job.future.set_exception(error)
            return
        try:
            merged = adapter if requested is None and adapter in self._merged else None
            if merged is None and self.model.active_adapter != adapter:
                # peft's set_adapter walks every module (18% of the engine's time under load when
                # called per batch, py-spy in bench/RESULTS.md): only when the adapter changes.
                self.model.set_adapter(adapter)
            predictor = self._predictor(workload, merged)
            texts = [text for job in batch for text in job.texts]
            predictions = predictor.predict(texts)
        except BaseException as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            # One bad request must not fail its batch-mates: retry each alone, so only it errs.
            for job in batch:
                self._predict_batch(workload, requested, [job])
            return
        start = 0
        for job in batch:
            chunk = predictions[start : start + len(job.texts)]
            start += len(job.texts)
            job.future.set_result([ServedPrediction(p, adapter) for p in chunk])

    def _predictor(self, workload: str, merged: str | None = None) -> Predictor:
        """The workload's predictor over the peft model (`merged` None) or over a merged copy."""
        key = (workload, merged)
        if key not in self._predictors:
            model = self.model if merged is None else self._merged[merged]
            # A new version's predictor shares the tables another one of the workload built (a
            # push's smoke test builds them on the named adapter's), not 0.7 s on the engine thread.
            donor = next((p for (name, _), p in self._predictors.items() if name == workload), None)
            self._predictors[key] = donor.with_model(model) if donor else Predictor(model, self.tokenizer, self.specs[workload], self.max_batch, tree=self.tree)
        return self._predictors[key]

    def _check_loadable(self, name: str, path: Path) -> None:
        if workload_of(name) not in self.specs:
            raise EngineError(f"adapter {name!r} names no configured workload (expected <workload>@v<N>)", 400)
        with self._lock:
            loaded = name in self.adapters
        if loaded:
            raise EngineError(f"adapter {name!r} is already loaded", 400)
        if not (path / "adapter_config.json").exists():
            raise EngineError(f"{path} holds no adapter (adapter_config.json missing)", 400)

    def _load(self, name: str, path: Path, merged: Any | None) -> None:
        """Add the adapter to the peft model, and its merged copy (built by `load_adapter`) if any."""
        from peft import PeftModel

        self._check_loadable(name, path)
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            self._predictors = {key: p for key, p in self._predictors.items() if key[1] is not None}  # they held the bare model
        self.model.eval()
        if merged is not None:
            self._merged[name] = merged
        with self._lock:
            self.adapters[name] = str(path)
            # The first adapter of a workload starts serving it at once; later ones wait for a switch.
            self.routes.setdefault(workload_of(name), name)

    def _unload(self, name: str) -> None:
        if name not in self.adapters:
            raise EngineError(f"adapter {name!r} is not loaded", 404)
        if name in self.routes.values():
            raise EngineError(f"adapter {name!r} is serving its workload; switch first", 409)
        other = next((adapter for adapter in self.adapters if adapter != name), None)
        if self.model.active_adapter == name and other is not None:
            self.model.set_adapter(other)  # peft would too, warning on every swap
        self.model.delete_adapter(name)
        self._merged.pop(name, None)
        self._predictors = {key: p for key, p in self._predictors.items() if key[1] != name}
        with self._lock:
            del self.adapters[name]

    def _switch(self, workload: str, name: str, unload_previous: bool) -> str | None:
        if name not in self.adapters:
            raise EngineError(f"adapter {name!r} is not loaded", 404)
        if workload_of(name) != workload:
            raise EngineError(f"adapter {name!r} does not belong to workload {workload!r}", 400)
        with self._lock:
            previous = self.routes.get(workload)
            self.routes[workload] = name
        if unload_previous and previous and previous != name:
            self._unload(previous)
        return previous
