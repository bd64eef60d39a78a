"""OpenAI's chat-completions (and legacy completions) protocol for a constrained answer.

What a workload adapter can honour is honoured by OpenAI's contract; what it cannot is refused
with a 400 in OpenAI's error shape naming the parameter, never silently ignored:

* honoured: `stream` (SSE chunks, `data: [DONE]`) with `stream_options.include_usage`;
  `max_tokens` / `max_completion_tokens` (the answer is cut after that many tokens,
  `finish_reason: "length"`, exactly what decoding would have stopped at: decoding is greedy);
  `logprobs` (each answer token's log-probability under the constraint); text content parts.
* accepted, no effect on the answer: `temperature`, `top_p`, `seed` (the answer is the
  constraint's greedy answer, the same for every sampling setting), `user`, `metadata`, `store`,
  `service_tier`, `prompt_cache_*`, `safety_identifier`, `prediction`, `parallel_tool_calls`.
* refused: `n > 1`, `tools`/`tool_choice`/`functions`/`function_call`, image/audio/file parts,
  `audio`/audio `modalities`, `response_format` other than text, `stop`, non-zero penalties,
  `logit_bias`, `top_logprobs > 0`, `reasoning_effort`, `verbosity`, `web_search_options`,
  `moderation`, and any argument OpenAI does not define (as OpenAI does).

The model reads one input: the text of the last user message, inside the workload's own prompt
template (a system prompt or earlier turns do not reach it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slm_flywheel.models.inference import Prediction
from slm_flywheel.serving.capture import answer_to_text


class ApiError(Exception):
    """An error answered in OpenAI's shape; `param` names the offending request field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_body(error: ApiError) -> dict[str, Any]:
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}


class _Request(BaseModel):
    # Unknown arguments are refused, as OpenAI refuses them: one could change the answer.
    model_config = ConfigDict(extra="forbid")


_R = TypeVar("_R", bound=_Request)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, refusal, ... do not reach the model

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Request):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # nothing is padded: chunks hold the answer only


class _Sampling(_Request):
    """The arguments both completion endpoints share: accepted (sampling ones, with no effect on a
    constrained answer) or refused where honouring them is impossible (see `refuse_unsupported`)."""

    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stop: str | list[str] | None = None
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    """Every argument of OpenAI's `POST /v1/chat/completions`."""

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None

    @property
    def limit(self) -> int | None:
        """The completion-token cap (`max_tokens` is the older name of the same cap)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _param(location: tuple[Any, ...]) -> str:
    """OpenAI's spelling of a field path, e.g. `messages[0].content`. Pydantic's union-member
    tags (`str`, `list[str]`, ...) are dropped: a client never wrote them."""
    text = ""
    for part in location:
        if isinstance(part, str) and (part in _UNION_TAGS or "[" in part):
            break
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _validate(kind: type[_R], body: dict[str, Any]) -> _R:
    """Validate a request body; the first problem becomes a 400 naming its parameter."""
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(first["loc"])
        if first["type"] == "extra_forbidden":
            raise ApiError(400, f"Unrecognized request argument supplied: {param}", param, "unrecognized_argument") from exc
        # A union's members each report why they failed: name them all, for the one parameter.
        reasons = dict.fromkeys(error["msg"] for error in exc.errors() if _param(error["loc"]) == param)
        raise ApiError(400, f"{param}: {'; or '.join(reasons)}", param, "invalid_value") from exc


def parse_chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    request = _validate(ChatCompletionRequest, body)
    _refuse_unsupported(request)
    return request


def _refuse(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param, "unsupported_parameter")


_TOOLS = "tool calling is not supported: the model answers inside its workload's schema"
_CHANGES_ANSWER = "not supported: it would change the constrained answer"


def _refuse_sampling_controls(request: ChatCompletionRequest | CompletionRequest) -> None:
    """What both endpoints refuse: several choices, stop sequences, logit penalties and bias."""
    if request.n not in (None, 1):
        raise _refuse("n", f"n={request.n} is not supported: the answer is deterministic, every choice would be the same; send 1")
    if request.stop:
        raise _refuse("stop", "stop sequences are not supported: the answer ends where its schema ends")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(request, name):
            raise _refuse(name, _CHANGES_ANSWER)
    if request.logit_bias:
        raise _refuse("logit_bias", _CHANGES_ANSWER)


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    _refuse_sampling_controls(request)
    for name in ("tools", "functions"):
        if getattr(request, name):
            raise _refuse(name, _TOOLS)
    for name in ("tool_choice", "function_call"):
        if getattr(request, name) not in (None, "none", "auto"):
            raise _refuse(name, _TOOLS)
    if request.response_format and request.response_format.get("type") != "text":
        raise _refuse("response_format", "only {'type': 'text'}: the answer's format is the workload's schema")
    if request.audio is not None:
        raise _refuse("audio", "audio output is not supported; the model answers in text")
    if request.modalities and request.modalities != ["text"]:
        raise _refuse("modalities", "audio output is not supported; the model answers in text")
    if request.top_logprobs:
        raise _refuse("top_logprobs", "only 0: logprobs=true gives each answer token's log-probability under the constraint")
    if request.top_logprobs is not None and not request.logprobs:
        raise ApiError(400, "top_logprobs: requires logprobs=true", "top_logprobs", "invalid_value")
    for name in ("reasoning_effort", "verbosity", "web_search_options", "moderation"):
        if getattr(request, name) is not None:
            raise _refuse(name, "not supported by a workload adapter")


def last_user_text(messages: list[Message]) -> str:
    """The model's input: the text of the last user message (string or text parts)."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role != "user":
            continue
        texts = [message.content] if isinstance(message.content, str) else []
        for part_index, part in enumerate(message.content if isinstance(message.content, list) else []):
            param = f"messages[{index}].content[{part_index}]"
            kind = part.get("type")
            if kind != "text":
                message = f"{param}: {kind!r} content parts are not supported; the model reads text only"
                raise ApiError(400, message, param, "unsupported_content")
            if not isinstance(part.get("text"), str):
                raise ApiError(400, f"{param}.text: must be a string", f"{param}.text", "invalid_value")
            texts.append(part["text"])
        text = "\n".join(texts)
        if not text.strip():
            param = f"messages[{index}].content"
            raise ApiError(400, f"{param}: the last user message is empty", param, "invalid_value")
        return text
    raise ApiError(400, "messages: no user message (the model answers the last one)", "messages", "invalid_value")


@dataclass(frozen=True)
class Reply:
    """What one prediction answers, cut to the request's token cap."""

    content: str
    finish_reason: str
    tokens: list[str]  # each answer token as text (the first carries the space before the answer)
    logprobs: list[float]
    prompt_tokens: int
    completion_tokens: int

    @property
    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}

    def logprobs_body(self) -> dict[str, Any]:
        return {
            "content": [
                {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8")), "top_logprobs": []}
                for token, logprob in zip(self.tokens, self.logprobs)
            ],
            "refusal": None,
        }


def reply_to(prediction: Prediction, decode: Callable[[list[int]], str], limit: int | None) -> Reply:
    """The reply to a prediction, cut after `limit` tokens.

    No valid answer gives empty content and `finish_reason: "length"` (decoding ran out of tokens
    or of schema-valid continuations); its usage still counts the tokens decoding spent.
    """
    ids, logprobs = list(prediction.tokens), list(prediction.token_logprobs)
    if limit is not None and len(ids) > limit:
        # Greedy decoding capped at `limit` would have produced exactly this prefix (every token
        # in it was schema-valid). The completion starts with the space after the prompt's
        # colon; content does not.
        ids, logprobs = ids[:limit], logprobs[:limit]
        content, finish_reason = decode(ids).removeprefix(" "), "length"
    elif not prediction.valid:
        return Reply("", "length", [], [], prediction.prompt_tokens, len(ids))
    else:
        content, finish_reason = answer_to_text(prediction.answer) or "", "stop"
    return Reply(content, finish_reason, [decode([i]) for i in ids], logprobs, prediction.prompt_tokens, len(ids))


def chat_completion(request_id: str, model: str, request: ChatCompletionRequest, answer: Reply) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": answer.content, "refusal": None},
        "logprobs": answer.logprobs_body() if request.logprobs else None,
        "finish_reason": answer.finish_reason,
    }
    return {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [choice], "usage": answer.usage,
    }


def chat_chunks(request_id: str, model: str, request: ChatCompletionRequest, answer: Reply) -> list[dict[str, Any]]:
    """The streamed reply: a role chunk, one content chunk (the answer is decided whole before
    anything is sent), the finish chunk, and the usage chunk when `include_usage` asks for it."""
    base = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    if request.include_usage:
        base["usage"] = None  # OpenAI's shape: null on every chunk but the last

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    if answer.content:
        chunks.append(chunk({"content": answer.content}, logprobs=answer.logprobs_body() if request.logprobs else None))
    chunks.append(chunk({}, answer.finish_reason))
    if request.include_usage:
        chunks.append({**base, "choices": [], "usage": answer.usage})
    return chunks


def sse(chunks: list[dict[str, Any]]) -> Iterator[bytes]:
    """Server-sent events as OpenAI sends them: `data: <json>` per chunk, then `data: [DONE]`."""
    for chunk in chunks:
        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
    yield b"data: [DONE]\n\n"


class CompletionRequest(_Sampling):
    """Every argument of OpenAI's legacy `POST /v1/completions` (what vLLM users call)."""

    model: str
    prompt: str | list[str]  # token-id prompts are refused by validation: the input is text
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's (and vLLM's) default for completions
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1)
    echo: bool | None = None
    suffix: str | None = None

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def parse_completion_request(body: dict[str, Any]) -> CompletionRequest:
    """Each prompt is one input for the workload (one choice per prompt, as OpenAI answers)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and any(isinstance(item, (int, list)) for item in prompt):
        raise _refuse("prompt", "token-id prompts are not supported: the model reads text inside its workload's template")
    request = _validate(CompletionRequest, body)
    _refuse_sampling_controls(request)
    if request.best_of not in (None, 1):
        raise _refuse("best_of", f"best_of={request.best_of} is not supported: the answer is deterministic; send 1")
    if request.echo:
        raise _refuse("echo", "echo is not supported: the model reads the prompt inside its workload's template")
    if request.suffix:
        raise _refuse("suffix", "suffix (insertion) is not supported")
    if request.logprobs:
        raise _refuse("logprobs", "only 0: each answer token's log-probability under the constraint")
    if not request.prompts:
        raise ApiError(400, "prompt: is empty", "prompt", "invalid_value")
    for index, text in enumerate(request.prompts):
        if not text.strip():
            param = "prompt" if isinstance(request.prompt, str) else f"prompt[{index}]"
            raise ApiError(400, f"{param}: is empty", param, "invalid_value")
    return request


def _completion_logprobs(answer: Reply) -> dict[str, Any]:
    # Offsets into `text`, which drops the space the first token carries.
    offsets, position = [], -1
    for token in answer.tokens:
        offsets.append(max(position, 0))
        position += len(token)
    return {"tokens": answer.tokens, "token_logprobs": answer.logprobs, "top_logprobs": None, "text_offset": offsets}


def _usage(answers: list[Reply]) -> dict[str, int]:
    prompt, completion = sum(a.prompt_tokens for a in answers), sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(request_id: str, model: str, request: CompletionRequest, answers: list[Reply]) -> dict[str, Any]:
    choices = [
        {
            "index": index, "text": answer.content, "finish_reason": answer.finish_reason,
            "logprobs": _completion_logprobs(answer) if request.logprobs is not None else None,
        }
        for index, answer in enumerate(answers)
    ]
    return {
        "id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": choices, "usage": _usage(answers),
    }


def completion_chunks(request_id: str, model: str, request: CompletionRequest, answers: list[Reply]) -> list[dict[str, Any]]:
    """Per prompt: a text chunk and a finish chunk; then the usage chunk when asked for."""
    base = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model}
    if request.include_usage:
        base["usage"] = None
    chunks = []
    for index, answer in enumerate(answers):
        logprobs = _completion_logprobs(answer) if request.logprobs is not None else None
        chunks.append({**base, "choices": [{"index": index, "text": answer.content, "logprobs": logprobs, "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": index, "text": "", "logprobs": None, "finish_reason": answer.finish_reason}]})
    if request.include_usage:
        chunks.append({**base, "choices": [], "usage": _usage(answers)})
    return chunks


def model_card(model_id: str, created: int, root: str, parent: str | None) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "slm-flywheel", "root": root, "parent": parent}
