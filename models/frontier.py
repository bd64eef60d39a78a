"""One client for a frontier model behind any OpenAI-compatible chat-completions endpoint.

Built on the official `openai` SDK, which does the transport: its retries (408, 409, 429, 5xx,
timeouts and dropped connections, exponential backoff with jitter), its `Retry-After` /
`Retry-After-Ms` handling and its per-request timeout. What this module adds is what every
caller of a frontier model in the flywheel needs the same way:

* JSON-schema structured outputs constrained to the workload's label set or slot schema
  (`answers_format`), several numbered texts per call;
* reasoning models, which reject `temperature` and `max_tokens`: with `reasoning` set (or once
  the endpoint has answered 400 naming either parameter) calls send `max_completion_tokens`,
  raised by `reasoning_tokens` for the hidden reasoning, and no temperature;
* the model's price (`costs.frontier_prices`), so callers turn reported usage into dollars.

The key is passed in or read from an environment variable; a Prefect Secret block is resolved by
the task that builds the client (`tasks/relabel.py`), never here.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slm_flywheel.config import FrontierPrice

if TYPE_CHECKING:
    import openai

    from slm_flywheel.models.workload import TaskSpec

logger = logging.getLogger("flywheel.frontier")

API_KEY_ENV = "FLYWHEEL_TEACHER_API_KEY"
# Parameters reasoning models refuse; a 400 naming one of them switches the client to reasoning mode.
_SAMPLING_PARAMETERS = ("max_tokens", "temperature")


class FrontierCallFailed(Exception):
    """A call that got no usable response after the SDK's retries; the message says why."""


@dataclass(frozen=True)
class FrontierReply:
    """One chat completion.

    `content` is None when the model refused or sent no text; `usage` is (prompt, completion)
    tokens, None when the endpoint did not report it; `output_limit` is the completion-token cap
    the call was sent with (what a reply without usage is charged); `latency_s` includes retries.
    """

    content: str | None
    usage: tuple[int, int] | None
    output_limit: int
    latency_s: float


class FrontierClient:
    """A frontier model: one OpenAI SDK client, its price and how it wants to be asked.

    Thread-safe: one client serves every concurrent call of a teacher run or of the router.
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        price: FrontierPrice,
        api_key: str | None = None,
        api_key_env: str = API_KEY_ENV,
        max_retries: int = 4,
        timeout_s: float = 30.0,
        reasoning: bool = False,
        reasoning_tokens: int = 1024,
    ):
        """Args:
        api_key: the bearer key; None reads the environment variable `api_key_env`.
        max_retries: retries after the first attempt, by the SDK (0 disables them).
        timeout_s: per attempt.
        reasoning: the model rejects `temperature` and `max_tokens` (o-series, gpt-5); detected
            on the first 400 that names either parameter when not set.
        reasoning_tokens: completion tokens allowed for hidden reasoning on top of the answer's
            own bound, in reasoning mode (they are billed as completion tokens).
        """
        from openai import OpenAI

        key = api_key if api_key is not None else os.environ.get(api_key_env)
        if not key:
            raise ValueError(f"the frontier model needs an API key: pass api_key or set {api_key_env}")
        if max_retries < 0:
            raise ValueError(f"max_retries must not be negative, got {max_retries}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if reasoning_tokens < 0:
            raise ValueError(f"reasoning_tokens must not be negative, got {reasoning_tokens}")
        self.model = model
        self.price = price
        self.max_retries = max_retries
        self.reasoning_tokens = reasoning_tokens
        self._reasoning = reasoning
        self._switch = threading.Lock()
        self._client = OpenAI(base_url=base_url, api_key=key, max_retries=max_retries, timeout=timeout_s)

    @property
    def reasoning(self) -> bool:
        """Whether calls are sent the way reasoning models want them."""
        return self._reasoning

    def output_limit(self, answer_tokens: int) -> int:
        """The completion-token cap of a call whose visible answer takes at most `answer_tokens`."""
        return answer_tokens + (self.reasoning_tokens if self._reasoning else 0)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.price.usd(prompt_tokens, completion_tokens)

    def complete(self, messages: list[dict[str, str]], response_format: dict[str, Any], answer_tokens: int) -> FrontierReply:
        """One chat completion under `response_format`, retried by the SDK.

        Raises:
            FrontierCallFailed: no usable response (a non-retryable status, or retries exhausted).
        """
        import openai

        started = time.perf_counter()
        reasoning = self._reasoning
        try:
            try:
                response, limit = self._create(messages, response_format, answer_tokens, reasoning=reasoning)
            except openai.BadRequestError as error:
                if reasoning or not _rejects_sampling_parameters(error):
                    raise
                self._become_reasoning(error)
                response, limit = self._create(messages, response_format, answer_tokens, reasoning=True)
        except openai.OpenAIError as error:
            raise FrontierCallFailed(_describe(error)) from error
        content, usage = _read_completion(response)
        return FrontierReply(content, usage, limit, time.perf_counter() - started)

    def close(self) -> None:
        self._client.close()

    def _create(
        self, messages: list[dict[str, str]], response_format: dict[str, Any], answer_tokens: int, *, reasoning: bool
    ) -> tuple[Any, int]:
        limit = answer_tokens + (self.reasoning_tokens if reasoning else 0)
        sampling: dict[str, Any] = {"max_completion_tokens": limit} if reasoning else {"max_tokens": limit, "temperature": 0}
        response = self._client.chat.completions.create(
            model=self.model, messages=messages, response_format=response_format, **sampling  # type: ignore[arg-type]
        )
        return response, limit

    def _become_reasoning(self, error: openai.BadRequestError) -> None:
        with self._switch:
            if not self._reasoning:
                logger.warning(
                    "%s refused temperature / max_tokens (%s): asking it as a reasoning model from now on "
                    "(set `reasoning: true` to skip the refused call)", self.model, error.message[:160],
                )
                self._reasoning = True


def answers_format(spec: TaskSpec) -> dict[str, Any]:
    """A strict json_schema response format admitting only answers of the workload's schema:
    `{"answers": [{"id": ..., "label": <one of the labels>}]}` or `... "slots": {<slot>: str|null}`."""
    answer: dict[str, Any]
    if spec.task == "classification":
        answer = {"id": {"type": "string"}, "label": {"type": "string", "enum": list(spec.labels)}}
    else:
        # Strict mode wants every property listed as required, so a slot the text does not mention
        # is null rather than absent.
        slots = {name: {"type": ["string", "null"]} for name in spec.slots}
        answer = {
            "id": {"type": "string"},
            "slots": {"type": "object", "properties": slots, "required": list(spec.slots), "additionalProperties": False},
        }
    entry = {"type": "object", "properties": answer, "required": list(answer), "additionalProperties": False}
    schema = {
        "type": "object",
        "properties": {"answers": {"type": "array", "items": entry}},
        "required": ["answers"],
        "additionalProperties": False,
    }
    name = re.sub(r"[^A-Za-z0-9_-]", "_", spec.name)[:48] + "_answers"  # the API's name pattern
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


def _rejects_sampling_parameters(error: openai.BadRequestError) -> bool:
    """A 400 saying the model does not take temperature or max_tokens (OpenAI names the `param`)."""
    if error.param in _SAMPLING_PARAMETERS:
        return True
    message = error.message.lower()
    return any(name in message for name in _SAMPLING_PARAMETERS) and "support" in message


def _describe(error: openai.OpenAIError) -> str:
    """What went wrong and after how many attempts (the SDK numbers each retry in a header)."""
    import openai

    if not isinstance(error, openai.APIError):
        return f"{type(error).__name__}: {error}"
    attempts = int(error.request.headers.get("x-stainless-retry-count", "0")) + 1
    if isinstance(error, openai.APIStatusError):
        what = f"HTTP {error.status_code}: {error.message[:200]}"
    else:
        what = f"{type(error).__name__}: {error.message}"
    return f"{what} (after {attempts} attempt{'s' if attempts > 1 else ''})"


def _read_completion(response: Any) -> tuple[str | None, tuple[int, int] | None]:
    """The message content and token usage; the SDK builds responses without validating them."""
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError, KeyError) as error:
        raise FrontierCallFailed(f"HTTP 200 without a chat completion in the body: {str(response)[:120]!r}") from error
    usage = getattr(response, "usage", None)
    prompt_tokens, completion_tokens = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
    tokens = (prompt_tokens, completion_tokens) if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int) else None
    return (content if isinstance(content, str) else None), tokens
