"""Constrained decoding: answers are produced inside the workload's schema, never coerced after.

Two constraints share one batched greedy decoder (`models/inference.py`):

* `LabelConstraint` walks a token trie of the label set (each label tokenized exactly as in
  training, followed by EOS), so every finished answer is a member of the label set. It stops
  as soon as one label is left: the rest of its tokens are forced.
* `SlotJsonConstraint` checks each candidate token against a character-level grammar for
  ` {"slot": "value", ...}`: keys from the slot schema, each at most once, values spans of the
  input text. Candidates are tried in the model's order of preference among the top `k`.

A step returns the chosen token and its probability renormalized over the valid candidates; the
answer's confidence is the product of those, i.e. its probability under the constraint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class Constraint(Protocol):
    def start(self) -> Any: ...

    def step(self, state: Any, logprobs: torch.Tensor) -> tuple[int | None, float, Any, bool]:
        """Choose the next token: (token id or None when nothing valid, prob, new state, finished)."""
        ...


@dataclass
class TrieNode:
    children: dict[int, TrieNode] = field(default_factory=dict)
    label: str | None = None  # set on the node reached by the final (EOS) token
    below: set[str] = field(default_factory=set)  # every label whose path passes through here

    @property
    def decided(self) -> str | None:
        """The label once only one remains reachable: its remaining tokens are forced (p = 1
        under the constraint), so decoding can stop without running the model for them."""
        return next(iter(self.below)) if len(self.below) == 1 else None


class LabelConstraint:
    """Greedy decoding restricted to the token sequences of a fixed label set."""

    def __init__(self, label_token_ids: dict[str, list[int]]):
        self.root = TrieNode()
        for label, ids in label_token_ids.items():
            node = self.root
            node.below.add(label)
            for token in ids:
                node = node.children.setdefault(token, TrieNode())
                node.below.add(label)
            if node.label is not None and node.label != label:
                raise ValueError(f"labels {node.label!r} and {label!r} tokenize identically")
            node.label = label

    def start(self) -> TrieNode:
        return self.root

    def step(self, state: TrieNode, logprobs: torch.Tensor) -> tuple[int | None, float, Any, bool]:
        allowed = list(state.children)
        if not allowed:
            return None, 0.0, state, True
        token, prob, child = self.choose(state, logprobs[allowed])
        return token, prob, child, child.decided is not None

    @staticmethod
    def choose(state: TrieNode, scores: torch.Tensor) -> tuple[int, float, TrieNode]:
        """The greedy child of `state` given its children's scores (logits or log-probabilities,
        in `state.children`'s order): its token, its probability renormalized over the children
        (the probability under the constraint) and its node."""
        probs = torch.softmax(scores, dim=-1)
        best = int(torch.argmax(scores))
        token = list(state.children)[best]
        return token, float(probs[best]), state.children[token]


# Grammar states for the slot JSON: what may come next.
_EXPECT_SPACE, _EXPECT_OPEN, _AFTER_OPEN, _IN_KEY, _EXPECT_COLON, _EXPECT_VSPACE = range(6)
_EXPECT_VQUOTE, _IN_VALUE, _AFTER_VALUE, _EXPECT_KSPACE, _EXPECT_KQUOTE, _DONE = range(6, 12)
# The modes where exactly one character may come: that character and the mode after it.
_LITERALS = {
    _EXPECT_SPACE: (" ", _EXPECT_OPEN),
    _EXPECT_OPEN: ("{", _AFTER_OPEN),
    _EXPECT_COLON: (":", _EXPECT_VSPACE),
    _EXPECT_VSPACE: (" ", _EXPECT_VQUOTE),
    _EXPECT_VQUOTE: ('"', _IN_VALUE),
    _EXPECT_KSPACE: (" ", _EXPECT_KQUOTE),
}


@dataclass(frozen=True)
class SlotState:
    mode: int = _EXPECT_SPACE
    buffer: str = ""  # the key or value being written
    used: frozenset[str] = frozenset()
    text: str = ""  # the whole completion so far


class SlotJsonConstraint:
    """Character-level grammar for the extraction answer, checked token by token."""

    def __init__(self, slots: tuple[str, ...], input_text: str, token_strings: list[str], eos_id: int, top_k: int = 64):
        self.slots = slots
        self.input_text = input_text
        self.token_strings = token_strings
        self.eos_id = eos_id
        self.top_k = top_k

    def start(self) -> SlotState:
        return SlotState()

    def _advance(self, state: SlotState, chars: str) -> SlotState | None:
        mode, buffer, used = state.mode, state.buffer, state.used
        for char in chars:
            if mode in _LITERALS:  # one fixed character, then the next mode
                expected, after = _LITERALS[mode]
                if char != expected:
                    return None
                mode = after
                if mode == _IN_VALUE:
                    buffer = ""
            elif mode in (_AFTER_OPEN, _EXPECT_KQUOTE):
                if char == '"':
                    mode, buffer = _IN_KEY, ""
                elif char == "}" and mode == _AFTER_OPEN:
                    mode = _DONE
                else:
                    return None
            elif mode == _IN_KEY:
                if char == '"':
                    if buffer not in self.slots or buffer in used:
                        return None
                    used, mode = used | {buffer}, _EXPECT_COLON
                else:
                    buffer += char
                    if not any(slot.startswith(buffer) and slot not in used for slot in self.slots):
                        return None
            elif mode == _IN_VALUE:
                if char == '"':
                    if not buffer:
                        return None
                    mode = _AFTER_VALUE
                elif char == "\\":
                    return None  # values are verbatim spans; no escapes
                else:
                    buffer += char
                    if buffer not in self.input_text:
                        return None
            elif mode == _AFTER_VALUE:
                if char == ",":
                    mode = _EXPECT_KSPACE
                elif char == "}":
                    mode = _DONE
                else:
                    return None
            else:  # _DONE: nothing may follow the closing brace
                return None
        return SlotState(mode, buffer, used, state.text + chars)

    def step(self, state: SlotState, logprobs: torch.Tensor) -> tuple[int | None, float, Any, bool]:
        if state.mode == _DONE:  # only EOS may follow the closing brace
            return self.eos_id, 1.0, state, True
        top = torch.topk(logprobs, self.top_k)
        valid: list[tuple[int, float, SlotState]] = []
        for score, token in zip(top.values.tolist(), top.indices.tolist()):
            chars = self.token_strings[token]
            if not chars:
                continue
            advanced = self._advance(state, chars)
            if advanced is not None:
                valid.append((token, score, advanced))
        if not valid:
            return None, 0.0, state, True
        norm = math.log(sum(math.exp(score) for _, score, _ in valid))
        token, score, advanced = valid[0]  # top-k is sorted: the first valid is the greedy choice
        return token, math.exp(score - norm), advanced, False


def is_valid_extraction(answer: dict[str, str], slots: tuple[str, ...], text: str) -> bool:
    """The schema the constraint enforces, as a plain check (used in tests and contracts)."""
    return all(name in slots and isinstance(value, str) and value and value in text for name, value in answer.items())
