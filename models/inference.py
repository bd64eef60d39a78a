"""Batched constrained prediction with a base model plus (optionally) a LoRA adapter."""

from __future__ import annotations

import copy
import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slm_flywheel.models.constrained import Constraint, LabelConstraint, SlotJsonConstraint, TrieNode
from slm_flywheel.models.workload import Answer, TaskSpec

MAX_NEW_TOKENS = 64  # the longest Restaurant-8k answer is ~45 tokens
# Rows per packed label pass: the pass attends over the whole packed sequence (a dense
# block-diagonal mask), so its attention grows with the square of the rows packed. Measured on
# 600 Banking77 golden items, SmolLM2-135M, 2 cores: 64 rows a pass 22-25 s, 16 rows 16-19 s.
PACKED_ROWS = 16


@dataclass(frozen=True)
class PackedPrompts:
    """Prompts packed into one sequence, no padding. The tokens every prompt starts with (the
    template's opening, as "Banking message:") are packed once, first; each prompt's own tokens
    follow as a block that attends to that shared prefix and, causally, to itself only."""

    input_ids: torch.Tensor  # (1, width)
    mask: torch.Tensor  # (width, width) bool: the shared prefix causal, then block-diagonal causal blocks
    positions: torch.Tensor  # (1, width): the prefix from 0, each block from the prefix's length
    starts: torch.Tensor  # (prompts,) where each prompt's own block begins in the packed sequence
    ends: torch.Tensor  # (prompts,) one past where it ends
    shared: int = 0  # the shared prefix's tokens, at the front of the sequence

    @property
    def width(self) -> int:
        return int(self.ends[-1])

    def decoder_inputs(self) -> dict[str, torch.Tensor]:
        """The decoder's keyword arguments for the packed pass (the mask as a 4-D boolean attention mask)."""
        return {"input_ids": self.input_ids, "attention_mask": self.mask[None, None], "position_ids": self.positions}


def pack_prompts(prompts: list[list[int]]) -> PackedPrompts:
    """Pack token-id prompts into one sequence (see `PackedPrompts`). Two or more prompts share
    their longest common token prefix, cut so every prompt keeps at least its last token in its
    own block (that position chooses the prompt's first answer token)."""
    shared = 0
    if len(prompts) > 1:
        limit = min(len(ids) for ids in prompts) - 1
        while shared < limit and all(ids[shared] == prompts[0][shared] for ids in prompts):
            shared += 1
    lengths = torch.tensor([len(ids) - shared for ids in prompts])
    ends = shared + lengths.cumsum(0)
    starts = ends - lengths
    # The block of each packed token: -1 for the shared prefix, else its prompt's index.
    block = torch.cat([torch.full((shared,), -1), torch.repeat_interleave(torch.arange(len(prompts)), lengths)])
    index = torch.arange(int(ends[-1]))
    causal = ((block[:, None] == block[None, :]) | (block[None, :] == -1)) & (index[None, :] <= index[:, None])
    input_ids = torch.tensor([prompts[0][:shared] + [token for ids in prompts for token in ids[shared:]]])
    positions = torch.where(block < 0, index, index - starts[block.clamp(min=0)] + shared)
    return PackedPrompts(input_ids, causal, positions[None], starts, ends, shared)


@dataclass(frozen=True)
class Prediction:
    """One answer: `answer` is None (and `valid` False) when no schema-valid answer was produced."""

    answer: Answer | None
    confidence: float
    valid: bool
    latency_ms: float = 0.0
    prompt_tokens: int = 0  # the length of the tokenized prompt the model read
    # The answer's tokens (the completion after the prompt, end-of-sequence excluded) and each
    # one's log-probability under the constraint; they sum to log(confidence). Without a valid
    # answer: the tokens decoding produced before it gave up.
    tokens: tuple[int, ...] = ()
    token_logprobs: tuple[float, ...] = ()


def cpu_supports_bf16() -> bool:
    """True where matmuls in bf16 are native: a GPU with bf16, or a CPU with AVX-512 BF16 / AMX."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    base_path: str, adapter_path: str | Path | None = None, *, merge: bool = True, bf16: bool | None = None
) -> Any:
    """The base causal LM in eval mode, with the adapter applied (merged for speed by default).

    `bf16=None` picks bf16 where the hardware multiplies it natively (see `cpu_supports_bf16`).
    """
    from transformers import AutoModelForCausalLM

    use_bf16 = cpu_supports_bf16() if bf16 is None else bf16
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path))
        if merge:
            model = model.merge_and_unload()
    model.eval()
    return model


class Predictor:
    """Answers inputs for one workload, in batches, inside the workload's output schema.

    Classification decodes the label trie in two forward passes (`tree=True`, the default): the
    prompt pass, whose last position chooses the first label token, and one pass over every
    still-undecided trie node below that token at once, each attending to the prompt and to its
    own ancestors only (a tree attention mask), so each node sees exactly the context stepwise
    greedy decoding would give it. The greedy walk then reads the logits it needs from that pass.
    Only the allowed tokens' logits are computed, in fp32 (the output projection's rows for the
    node's children), instead of the whole vocabulary in the model's dtype. `tree=False` decodes
    one token per forward pass over the whole vocabulary (the reference path `bench/serve.py`
    checks answers and confidences against; extraction always decodes that way).
    """

    def __init__(self, model: Any, tokenizer: Any, spec: TaskSpec, batch_size: int = 32, *, tree: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.batch_size = batch_size
        self.tree = tree
        self.tokens_run = 0  # tokens this predictor has run through the model (padding included)
        self.tree_tokens_run = 0  # of them, the label trie's nodes in tree passes (`_predict_labels`)
        self.eos_id = tokenizer.eos_token_id
        self._label_constraint: LabelConstraint | None = None
        self._label_ids: dict[str, list[int]] = {}
        self._token_strings: list[str] | None = None

    def with_model(self, model: Any) -> Predictor:
        """The same predictor over another model (a merged copy of the same base): the tables built
        from the tokenizer (the label trie; for extraction the 49k token strings, 0.7 s) are shared."""
        other = copy.copy(self)
        other.model, other.tokens_run, other.tree_tokens_run = model, 0, 0
        return other

    def _constraint(self, text: str) -> Constraint:
        if self.spec.task == "classification":
            if self._label_constraint is None:
                self._label_ids = {
                    label: self.tokenizer(self.spec.completion(label), add_special_tokens=False).input_ids
                    for label in self.spec.labels
                }
                self._label_constraint = LabelConstraint({label: ids + [self.eos_id] for label, ids in self._label_ids.items()})
            return self._label_constraint
        if self._token_strings is None:
            self._token_strings = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        return SlotJsonConstraint(self.spec.slots, text, self._token_strings, self.eos_id)

    def predict(self, texts: list[str]) -> list[Prediction]:
        """Answers in input order. Inputs are batched by length so a batch carries little padding;
        the packed label pass takes at most `PACKED_ROWS` of them at a time."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[Prediction | None] = [None] * len(texts)
        size = min(self.batch_size, PACKED_ROWS) if self._packs_labels() else self.batch_size
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            for index, prediction in zip(chunk, self._predict_batch([texts[i] for i in chunk])):
                results[index] = prediction
        return results  # type: ignore[return-value]

    def _packs_labels(self) -> bool:
        """Whether batches decode by the packed two-pass label trie (`_predict_labels`), not stepwise."""
        return self.tree and self.spec.task == "classification" and _plain_projection(self.model)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each input's prompt, tokenized as in training."""
        return [self.tokenizer(self.spec.prompt(text), add_special_tokens=False).input_ids for text in texts]

    def _prompts(self, texts: list[str]) -> tuple[list[list[int]], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids per prompt, and the left-padded batch: ids, attention mask, positions."""
        prompts = self.token_ids(texts)
        width = max(len(ids) for ids in prompts)
        pad = self.tokenizer.pad_token_id
        # Left padding so every row's next token sits in the last column.
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        return prompts, input_ids, attention, positions

    @torch.inference_mode()
    def _predict_batch(self, texts: list[str]) -> list[Prediction]:
        if self._packs_labels():
            return self._predict_labels(texts)
        started = time.perf_counter()
        prompts, input_ids, attention, positions = self._prompts(texts)
        constraints = [self._constraint(text) for text in texts]
        states = [constraint.start() for constraint in constraints]
        confidence = [1.0] * len(texts)
        finished = [False] * len(texts)
        valid = [True] * len(texts)
        generated: list[list[int]] = [[] for _ in texts]
        generated_logprobs: list[list[float]] = [[] for _ in texts]
        past = None
        step_ids, step_positions = input_ids, positions
        decoder, lm_head = self.model.get_decoder(), self.model.get_output_embeddings()
        for _ in range(MAX_NEW_TOKENS):
            self.tokens_run += step_ids.numel()
            out = decoder(
                input_ids=step_ids,
                attention_mask=attention,
                position_ids=step_positions,
                cache=past,
                use_cache=True,
            )
            past = out.cache
            # Only the next token's logits are read. A contiguous 2-D input keeps the projection a
            # plain matmul (a strided 3-D slice makes torch copy the 49k-row weight per row).
            last_hidden = out.last_hidden_state[:, -1, :].contiguous()
            logprobs = torch.log_softmax(lm_head(last_hidden).float(), dim=-1)
            next_ids = []
            for row, constraint in enumerate(constraints):
                if finished[row]:
                    next_ids.append(self.eos_id)
                    continue
                token, prob, states[row], done = constraint.step(states[row], logprobs[row])
                if token is None:
                    valid[row], finished[row] = False, True
                    next_ids.append(self.eos_id)
                    continue
                confidence[row] *= prob
                generated[row].append(token)
                generated_logprobs[row].append(math.log(prob) if prob > 0 else -math.inf)
                finished[row] = done
                next_ids.append(token)
            if all(finished):
                break
            step_ids = torch.tensor(next_ids).unsqueeze(-1)
            step_positions = step_positions[:, -1:] + 1
            attention = torch.cat([attention, torch.ones(len(texts), 1, dtype=attention.dtype)], dim=-1)
        latency_ms = (time.perf_counter() - started) * 1000 / len(texts)
        return [
            self._finish(
                states[row], finished[row] and valid[row], confidence[row], latency_ms,
                len(prompts[row]), generated[row], generated_logprobs[row],
            )
            for row in range(len(texts))
        ]

    def _predict_labels(self, texts: list[str]) -> list[Prediction]:
        """Classification in two forward passes over the label trie (see the class docstring).

        Both passes are packed: the batch's prompts are one sequence with a block-diagonal causal
        mask (no padding; the template's opening, which every prompt shares, runs once), and the
        tree pass is one sequence of every row's undecided nodes, each seeing its own prompt and
        its own ancestors. Compute follows the tokens there are.
        """
        started = time.perf_counter()
        prompts = self.token_ids(texts)
        trie = self._constraint(texts[0])
        assert isinstance(trie, LabelConstraint)
        decoder, weight = self.model.get_decoder(), self.model.get_output_embeddings().weight
        packed_prompts = pack_prompts(prompts)
        ends, width = packed_prompts.ends, packed_prompts.width
        self.tokens_run += width
        out = decoder(**packed_prompts.decoder_inputs(), use_cache=True)
        # Step one for every row at once: the root's children, from each prompt's last position.
        root_tokens = list(trie.root.children)
        root_logits = out.last_hidden_state[0, ends - 1].float() @ weight[root_tokens].float().T
        walks: list[_Walk] = []
        for row in range(len(texts)):
            walk = _Walk(trie.root)
            walk.take(root_logits[row])
            walks.append(walk)
        pending = [row for row, walk in enumerate(walks) if walk.node.decided is None]
        if pending:
            # One pass over every undecided node below each row's first token, breadth first.
            slots: list[tuple[int, _Slot]] = []  # (row, slot), packed
            first_slot: dict[int, int] = {}
            for row in pending:
                first_slot[row] = len(slots)
                slots.extend((row, found) for found in _undecided_below(walks[row].node, walks[row].tokens[-1]))
            mask = torch.zeros((len(slots), width + len(slots)), dtype=torch.bool)
            for packed, (row, found) in enumerate(slots):
                # The row's whole prompt (the shared opening and its block): what its last token sees.
                mask[packed, :width] = packed_prompts.mask[int(ends[row]) - 1]
                mask[packed, [width + first_slot[row] + seen for seen in found.sees]] = True
            self.tokens_run += len(slots)
            self.tree_tokens_run += len(slots)
            hidden = decoder(
                input_ids=torch.tensor([[found.token for _, found in slots]]),
                attention_mask=mask[None, None],
                position_ids=torch.tensor([[len(prompts[row]) + found.depth - 1 for row, found in slots]]),
                cache=out.cache, use_cache=True,
            ).last_hidden_state[0].float()
            slot_of = {(row, id(found.node)): packed for packed, (row, found) in enumerate(slots)}
            for row in pending:
                walk = walks[row]
                while walk.node.decided is None:
                    walk.take(hidden[slot_of[row, id(walk.node)]] @ weight[list(walk.node.children)].float().T)
        latency_ms = (time.perf_counter() - started) * 1000 / len(texts)
        return [
            self._finish(walk.node, True, walk.confidence, latency_ms, len(prompts[row]), walk.tokens, walk.logprobs)
            for row, walk in enumerate(walks)
        ]

    def _finish(
        self, state: Any, ok: bool, confidence: float, latency_ms: float,
        prompt_tokens: int, generated: list[int], logprobs: list[float],
    ) -> Prediction:
        if generated and generated[-1] == self.eos_id:
            generated, logprobs = generated[:-1], logprobs[:-1]
        if not ok:  # no answer, but the tokens decoding spent are kept (usage counts them)
            return Prediction(None, 0.0, False, latency_ms, prompt_tokens, tuple(generated), tuple(logprobs))
        if self.spec.task == "classification":
            # Decoding stops once one label is left; its remaining tokens are forced (p = 1).
            tokens = self._label_ids[state.decided]
            logprobs = logprobs + [0.0] * (len(tokens) - len(generated))
            return Prediction(state.decided, confidence, True, latency_ms, prompt_tokens, tuple(tokens), tuple(logprobs))
        return Prediction(json.loads(state.text), confidence, True, latency_ms, prompt_tokens, tuple(generated), tuple(logprobs))


def _plain_projection(model: Any) -> bool:
    """Whether the output projection is a plain linear layer (no adapter on it), so its rows for
    the allowed tokens give exactly their logits."""
    head = model.get_output_embeddings()
    return type(head) is torch.nn.Linear and head.bias is None


@dataclass
class _Walk:
    """One row's greedy walk down the label trie."""

    node: TrieNode
    confidence: float = 1.0
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def take(self, logits: torch.Tensor) -> None:
        """Step to the greedy child given the logits of the node's children (in their order)."""
        token, prob, self.node = LabelConstraint.choose(self.node, logits)
        self.confidence *= prob
        self.tokens.append(token)
        self.logprobs.append(math.log(prob) if prob > 0 else -math.inf)


@dataclass(frozen=True)
class _Slot:
    """One undecided trie node in the tree pass: the token that leads to it, its depth below the
    prompt (the first answer token is depth 1) and the slots of its ancestors and itself."""

    node: TrieNode
    token: int
    depth: int
    sees: tuple[int, ...]


def _undecided_below(start: TrieNode, token: int) -> list[_Slot]:
    """The undecided nodes at and below `start` (reached by `token`, the row's first answer
    token), breadth first: the nodes whose logits the greedy walk may need."""
    slots: list[_Slot] = []
    queue: deque[tuple[TrieNode, int, int, tuple[int, ...]]] = deque([(start, token, 1, ())])
    while queue:
        node, token, depth, above = queue.popleft()
        if node.decided is not None:
            continue
        sees = (*above, len(slots))
        slots.append(_Slot(node, token, depth, sees))
        queue.extend((child, child_token, depth + 1, sees) for child_token, child in node.children.items())
    return slots
