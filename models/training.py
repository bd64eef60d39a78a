"""LoRA SFT of a workload adapter with peft + trl (loss on the completion only)."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from datasets import Dataset

from slm_flywheel.config import TrainingConfig
from slm_flywheel.models.inference import cpu_supports_bf16, load_tokenizer
from slm_flywheel.models.workload import TaskSpec

log = logging.getLogger("flywheel.training")


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced and how fast."""

    adapter_dir: Path
    examples: int
    tokens: int
    seconds: float
    final_loss: float
    bf16: bool
    batch_size: int  # per device, after `step_batch_size`

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def tokenize_examples(spec: TaskSpec, tokenizer: Any, dataset: Dataset, max_length: int) -> Dataset:
    """Prompt + completion + EOS token ids with a completion mask (prompt tokens carry no loss).

    Prompt and completion are tokenized separately, exactly as inference feeds them.
    """
    eos = tokenizer.eos_token_id

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "completion_mask": []}
        for text, label in zip(batch["text"], batch["label"]):
            prompt = tokenizer(spec.prompt(text), add_special_tokens=False).input_ids
            completion = tokenizer(spec.completion(label), add_special_tokens=False).input_ids + [eos]
            # Truncate the prompt, never the answer.
            prompt = prompt[: max(max_length - len(completion), 8)]
            out["input_ids"].append(prompt + completion)
            out["completion_mask"].append([0] * len(prompt) + [1] * len(completion))
        return out

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # numpy is always there with datasets, but seeding must not depend on it
        pass


LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config(config: TrainingConfig, num_layers: int) -> Any:
    """The peft LoraConfig for a TrainingConfig.

    `lora_layers: N` puts the adapter on the top N decoder layers only: the backward pass then
    stops at the lowest adapted layer, which is most of the saving on a CPU.
    """
    from peft import LoraConfig

    layers = None
    targets = config.target_modules
    if config.lora_layers is not None and config.lora_layers < num_layers:
        layers = list(range(num_layers - config.lora_layers, num_layers))
        if targets == "all-linear":
            targets = LINEAR_MODULES
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


SMALLEST_SHRUNK_BATCH = 8


def step_batch_size(examples: int, config: TrainingConfig) -> int:
    """The per-device batch a run of `examples` trains on: `config.batch_size`, or smaller for `config.min_steps` steps.

    A short run at the full batch takes too few optimizer steps to learn (15 steps for 240 examples
    at 16); it then takes the largest batch that gives `min_steps` steps, never under 8 (nor over
    `batch_size`).
    """
    per_step = config.batch_size * config.gradient_accumulation_steps
    seen = examples * config.epochs
    if not config.min_steps or seen >= config.min_steps * per_step:
        return config.batch_size
    fitting = int(seen // (config.min_steps * config.gradient_accumulation_steps))
    return min(config.batch_size, max(SMALLEST_SHRUNK_BATCH, fitting))


def length_grouped_order(lengths: list[int], batch_size: int, generator: torch.Generator, window: int = 64) -> list[int]:
    """A random order of the indices of `lengths` in which each run of `batch_size` has similar lengths.

    Shuffle, sort each window of `window` batches by length, cut it into batches, then shuffle the
    batches (a short last batch stays last). Random batches of short prompts are ~40% padding;
    these carry almost none, and still come in random order.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    span = window * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [index for batch in shuffled + tail for index in batch]


class SimilarLengthSampler(torch.utils.data.Sampler[int]):
    """Yields `length_grouped_order`, a new one each epoch (seeded once)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths = lengths
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):  # noqa: ANN204
        return iter(length_grouped_order(self.lengths, self.batch_size, self.generator))


def grouping_lengths(tokenized: Dataset, group_by_length: str) -> list[int] | None:
    """The length each example is batched by: the whole sequence's ("whole"), the prompt's ("prompt"), or None ("off").

    The whole length pads least, but where answers vary in length (extraction: a JSON object of 0
    to 5 slots) it puts answers of one length in the same batch, and each step learns one answer
    shape; the prompt's length says nothing about the answer.
    """
    if group_by_length == "off":
        return None
    if group_by_length == "whole":
        return [len(ids) for ids in tokenized["input_ids"]]
    return [len(mask) - sum(mask) for mask in tokenized["completion_mask"]]


def _completion_loss_trainer(base: type, lengths: list[int] | None = None) -> type:
    """An SFTTrainer whose loss runs the LM head on the labelled positions only, in batches of similar `lengths`.

    With completion-only loss, the prompt positions' logits are thrown away; projecting them onto
    the 49k-token vocabulary anyway is ~20% of a small model's FLOPs. Same loss, less work.
    Calling the decoder directly skips the autocast that accelerate wraps around `model.forward`,
    so it is entered here: without it the LoRA matmuls run in fp32 (several times slower than bf16 with AVX-512 BF16).
    """

    class CompletionLossTrainer(base):  # type: ignore[misc, valid-type]
        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202
            if lengths is None:
                return super()._get_train_sampler(train_dataset)
            dataset = self.train_dataset if train_dataset is None else train_dataset
            if len(dataset) != len(lengths):
                raise ValueError(f"{len(lengths)} grouping lengths for a training set of {len(dataset)} rows")
            return SimilarLengthSampler(lengths, self.args.train_batch_size, self.args.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            labels = inputs["labels"]
            causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
            with self.accelerator.autocast():
                hidden = causal_lm.model(
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs.get("attention_mask"),
                    position_ids=inputs.get("position_ids"),
                    use_cache=False,
                ).last_hidden_state
                targets = labels[:, 1:]
                keep = targets != -100
                logits = causal_lm.lm_head(hidden[:, :-1][keep])
            total = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
            loss = total / torch.as_tensor(count).clamp(min=1)
            return (loss, {"logits": logits}) if return_outputs else loss

    return CompletionLossTrainer


def train_lora(
    spec: TaskSpec,
    base_path: str,
    train_set: Dataset,
    output_dir: Path,
    config: TrainingConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
    warm_start_adapter: str | Path | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter for `spec` on `train_set` (columns text, label); save it to `output_dir`.

    Args:
        config: a `TrainingConfig` (hyper-parameters, LoRA settings, seed, bf16).
        progress: called with (step, total_steps) after each optimizer step.
        warm_start_adapter: continue from this adapter instead of a fresh LoRA init.
    """
    from peft import PeftModel, get_peft_model
    from peft.helpers import disable_input_dtype_casting
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    seed_everything(config.seed)
    tokenizer = load_tokenizer(base_path)
    tokenized = tokenize_examples(spec, tokenizer, train_set, config.max_length)
    n_tokens = int(sum(len(ids) for ids in tokenized["input_ids"]) * config.epochs)
    use_bf16 = cpu_supports_bf16() if config.bf16 == "auto" else bool(config.bf16)
    batch_size = step_batch_size(len(tokenized), config)
    if batch_size != config.batch_size:
        log.info("batches of %d, not %d: %d examples at %d a step is under min_steps=%d", batch_size, config.batch_size, len(tokenized), config.batch_size, config.min_steps)

    # Frozen base weights in bf16 where the hardware multiplies bf16 natively (AVX-512 BF16 here: 2-6x fp32 in the measured peaks);
    # peft keeps the adapter weights in fp32. Eager attention: for sequences this short, CPU SDPA's
    # backward costs more than the plain matmuls.
    bf16_weights = use_bf16 and config.base_weights == "bf16"
    model = AutoModelForCausalLM.from_pretrained(
        base_path, dtype=torch.bfloat16 if bf16_weights else torch.float32, attn_implementation="eager"
    )
    if warm_start_adapter is not None:
        model = PeftModel.from_pretrained(model, str(warm_start_adapter), is_trainable=True)
    else:
        model = get_peft_model(model, lora_config(config, model.config.num_hidden_layers))

    class _Progress(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if progress is not None:
                progress(state.global_step, state.max_steps)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                log.info("step %d/%d loss %.4f", state.global_step, state.max_steps, float(logs["loss"]))

    args = SFTConfig(
        output_dir=str(output_dir / "trainer"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=config.weight_decay,
        bf16=use_bf16,
        use_cpu=not torch.cuda.is_available(),
        completion_only_loss=config.completion_only_loss,
        activation_checkpointing=False,  # trl turns it on by default; a 135M model fits easily, recompute costs ~30%
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = _completion_loss_trainer(SFTTrainer, grouping_lengths(tokenized, config.group_by_length))(
        model=model,
        args=args,
        train_dataset=tokenized,
        processing_class=tokenizer,
        callbacks=[_Progress()],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through `progress`; no raw dicts on stdout
    started = time.perf_counter()
    # peft casts each LoRA input up to the fp32 adapter weights, and autocast casts it straight back
    # to bf16: two copies of every activation for nothing. Under autocast the matmuls run in bf16 either way.
    with disable_input_dtype_casting(trainer.model, active=use_bf16):
        result = trainer.train()
    seconds = time.perf_counter() - started
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    return TrainResult(
        adapter_dir=output_dir,
        examples=len(train_set),
        tokens=n_tokens,
        seconds=seconds,
        final_loss=float(result.training_loss),
        bf16=use_bf16,
        batch_size=batch_size,
    )
