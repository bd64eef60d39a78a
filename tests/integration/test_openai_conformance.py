"""The serving tier through the official `openai` SDK and LangChain's `ChatOpenAI`, unchanged,
on loopback with the tiny model: what a classifier/extractor can honour follows OpenAI's
contract, the rest is refused with a 400 naming the parameter."""

import asyncio
import math

import openai
import pytest

from slm_flywheel.models.workload import build_task_spec
from slm_flywheel.serving.app import create_app
from slm_flywheel.serving.server import BackgroundServer, build_state
from tests.integration.conftest import write_serving_settings
from tests.integration.test_serving import _adapter

TEXT = "my card has not arrived yet"
SLOT_TEXT = "a table for 2 people at 7pm please"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, data_dir):
    """One server for the module: banking-intent@v1 and restaurant-slots@v1 loaded and routed."""
    folder = tmp_path_factory.mktemp("openai")
    settings = write_serving_settings(folder, tiny_model_dir, data_dir, f"sqlite:///{folder / 'mlflow.db'}")
    state = build_state(settings, "replica-a", load_champions=False, bf16=False)
    for workload, folder_name, seed in (("banking-intent", "b1", 1), ("restaurant-slots", "r1", 3)):
        state.engine.load_adapter(f"{workload}@v1", _adapter(settings, workload, folder_name, seed)).result()
    specs = {name: build_task_spec(name, settings.workload(name), settings.data_dir) for name in ("banking-intent", "restaurant-slots")}
    with BackgroundServer(create_app(state)) as server:
        yield server, state, specs
    state.engine.close()
    state.writer.close()


@pytest.fixture(scope="module")
def client(served):
    with openai.OpenAI(base_url=f"{served[0].url}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def _count(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def test_models_list_and_retrieve(client, served):
    ids = {model.id for model in client.models.list()}
    assert {"banking-intent", "banking-intent@v1", "restaurant-slots", "restaurant-slots@v1"} <= ids
    card = client.models.retrieve("banking-intent")
    assert (card.id, card.object, card.owned_by) == ("banking-intent", "model", "slm-flywheel")
    assert client.models.retrieve("banking-intent@v1").id == "banking-intent@v1"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("ghost@v1")
    assert missing.value.code == "model_not_found" and missing.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as no_route:
        client.embeddings.create(model="banking-intent", input="hi")  # not served: a 404 in OpenAI's shape
    assert "/v1/embeddings" in no_route.value.message and no_route.value.type == "invalid_request_error"


def test_chat_completion_usage_equals_the_tokenizer_counts(client, served):
    _, state, specs = served
    spec, tokenizer = specs["banking-intent"], state.engine.tokenizer
    reply = client.chat.completions.create(model="banking-intent", messages=[{"role": "system", "content": "Classify."}, {"role": "user", "content": TEXT}])
    choice = reply.choices[0]
    assert choice.message.content in spec.labels and choice.finish_reason == "stop"
    assert reply.model == "banking-intent@v1" and reply.object == "chat.completion"
    assert reply.usage.prompt_tokens == _count(tokenizer, spec.prompt(TEXT))
    assert reply.usage.completion_tokens == _count(tokenizer, spec.completion(choice.message.content))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    # Text content parts, as many clients send them, are the same input.
    parts = [{"type": "text", "text": TEXT}]
    assert client.chat.completions.create(model="banking-intent", messages=[{"role": "user", "content": parts}]).choices[0].message.content == choice.message.content


def test_logprobs_are_the_answer_tokens_under_the_constraint(client, served):
    reply = client.chat.completions.create(model="banking-intent@v1", messages=[{"role": "user", "content": TEXT}], logprobs=True)
    tokens = reply.choices[0].logprobs.content
    assert len(tokens) == reply.usage.completion_tokens
    assert "".join(t.token for t in tokens) == " " + reply.choices[0].message.content  # the space after the prompt's colon
    assert all(t.logprob <= 0 for t in tokens)
    # Their sum is the log of the answer's probability under the constraint: the confidence.
    assert math.exp(sum(t.logprob for t in tokens)) == pytest.approx(reply.model_extra["flywheel"]["confidence"], rel=1e-4)

    slots = client.chat.completions.create(model="restaurant-slots", messages=[{"role": "user", "content": SLOT_TEXT}], logprobs=True)
    assert slots.usage.prompt_tokens == _count(served[1].engine.tokenizer, served[2]["restaurant-slots"].prompt(SLOT_TEXT))
    choice = slots.choices[0]
    if slots.model_extra["flywheel"]["valid"]:
        assert choice.finish_reason == "stop" and "".join(t.token for t in choice.logprobs.content) == " " + choice.message.content
    else:  # the untrained tiny model may find no schema-valid JSON: no answer, said so
        assert (choice.message.content, choice.finish_reason, choice.logprobs.content) == ("", "length", [])


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client):
    full = client.chat.completions.create(model="banking-intent", messages=[{"role": "user", "content": TEXT}], logprobs=True)
    assert full.usage.completion_tokens > 1, "the test needs a label longer than one token"
    for cap in ({"max_tokens": 1}, {"max_completion_tokens": 1}):
        cut = client.chat.completions.create(model="banking-intent", messages=[{"role": "user", "content": TEXT}], logprobs=True, **cap)
        assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 1
        assert cut.choices[0].logprobs.content[0] == full.choices[0].logprobs.content[0]
        assert full.choices[0].message.content.startswith(cut.choices[0].message.content)
    roomy = client.chat.completions.create(model="banking-intent", messages=[{"role": "user", "content": TEXT}], max_tokens=64)
    assert (roomy.choices[0].message.content, roomy.choices[0].finish_reason) == (full.choices[0].message.content, "stop")


def test_streaming_sends_role_content_finish_usage_and_done(client):
    messages = [{"role": "user", "content": TEXT}]
    whole = client.chat.completions.create(model="banking-intent", messages=messages)
    chunks = list(client.chat.completions.create(model="banking-intent", messages=messages, stream=True, stream_options={"include_usage": True}))
    assert all(chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(chunk.usage is None for chunk in chunks[:-1])
    plain = list(client.chat.completions.create(model="banking-intent", messages=messages, stream=True))
    assert plain[-1].choices[0].finish_reason == "stop" and all(chunk.usage is None for chunk in plain)


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}]}]}, "messages[0].content[0]"),
        ({"logprobs": True, "top_logprobs": 3}, "top_logprobs"),
        ({"stop": ["\n"]}, "stop"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"extra_body": {"best_of": 2}}, "best_of"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_parameter(client, arguments, param):
    request = {"model": "banking-intent", "messages": [{"role": "user", "content": TEXT}], **arguments}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**request)
    assert refused.value.param == param and refused.value.type == "invalid_request_error"
    assert param in refused.value.message


def test_async_client_plain_and_streaming(served):
    async def run():
        async with openai.AsyncOpenAI(base_url=f"{served[0].url}/v1", api_key="unused", max_retries=0) as sdk:
            messages = [{"role": "user", "content": TEXT}]
            replies = await asyncio.gather(*(sdk.chat.completions.create(model="banking-intent", messages=messages) for _ in range(3)))
            stream = await sdk.chat.completions.create(model="banking-intent", messages=messages, stream=True)
            streamed = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
            return replies, streamed

    replies, streamed = asyncio.run(run())
    assert len({reply.choices[0].message.content for reply in replies}) == 1
    assert streamed == replies[0].choices[0].message.content


def test_langchain_chat_openai_invoke_stream_batch(served):
    from langchain_openai import ChatOpenAI

    _, state, specs = served
    spec = specs["banking-intent"]
    chat = ChatOpenAI(model="banking-intent", base_url=f"{served[0].url}/v1", api_key="unused", max_retries=0, stream_usage=True)
    message = chat.invoke(TEXT)
    assert message.content in spec.labels
    assert message.usage_metadata["input_tokens"] == _count(state.engine.tokenizer, spec.prompt(TEXT))
    assert message.usage_metadata["output_tokens"] == _count(state.engine.tokenizer, spec.completion(message.content))
    chunks = list(chat.stream(TEXT))
    assert "".join(chunk.content for chunk in chunks) == message.content
    assert sum(chunk.usage_metadata["output_tokens"] for chunk in chunks if chunk.usage_metadata) == message.usage_metadata["output_tokens"]
    answers = chat.batch([TEXT, "how do I top up by card", "I want a refund"])
    assert all(answer.content in spec.labels for answer in answers)


def test_legacy_completions_answer_one_choice_per_prompt(client, served):
    _, state, specs = served
    spec, tokenizer = specs["banking-intent"], state.engine.tokenizer
    prompts = [TEXT, "how do I top up by card"]
    reply = client.completions.create(model="banking-intent", prompt=prompts, logprobs=0)
    assert [choice.index for choice in reply.choices] == [0, 1] and reply.object == "text_completion"
    assert all(choice.text in spec.labels and choice.finish_reason == "stop" for choice in reply.choices)
    assert reply.usage.prompt_tokens == sum(_count(tokenizer, spec.prompt(p)) for p in prompts)
    assert reply.usage.completion_tokens == sum(_count(tokenizer, spec.completion(c.text)) for c in reply.choices)
    assert "".join(reply.choices[0].logprobs.tokens) == " " + reply.choices[0].text
    chat = client.chat.completions.create(model="banking-intent", messages=[{"role": "user", "content": TEXT}])
    assert reply.choices[0].text == chat.choices[0].message.content

    chunks = list(client.completions.create(model="banking-intent", prompt=TEXT, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reply.choices[0].text
    assert chunks[-1].usage.prompt_tokens == _count(tokenizer, spec.prompt(TEXT))
    for arguments, param in (({"logprobs": 2}, "logprobs"), ({"echo": True}, "echo"), ({"best_of": 3}, "best_of"), ({"prompt": [1, 2, 3]}, "prompt")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.completions.create(**{"model": "banking-intent", "prompt": TEXT, **arguments})
        assert refused.value.param == param, refused.value.message
