"""OpenAI's chat-completions protocol as pure functions: parsing, refusals, answers, chunks."""

import json
import math

import pytest

from slm_flywheel.models.inference import Prediction
from slm_flywheel.serving.openai_api import ApiError, reply_to, chat_chunks, last_user_text, parse_chat_request, sse

# A slot answer as the decoder produced it: ' {"people": "2"}' in five tokens.
PIECES = {1: " {", 2: '"people', 3: '":', 4: ' "2', 5: '"}'}
SLOTS = Prediction({"people": "2"}, 0.5, True, prompt_tokens=19, tokens=(1, 2, 3, 4, 5), token_logprobs=(-0.1, -0.2, 0.0, -0.4, 0.0))


def decode(ids):
    return "".join(PIECES[i] for i in ids)


def request(**arguments):
    return parse_chat_request({"model": "restaurant-slots", "messages": [{"role": "user", "content": "a table for 2"}], **arguments})


def test_a_full_answer_counts_its_tokens_and_they_spell_it():
    answer = reply_to(SLOTS, decode, None)
    assert (answer.content, answer.finish_reason) == ('{"people": "2"}', "stop")
    assert answer.usage == {"prompt_tokens": 19, "completion_tokens": 5, "total_tokens": 24}
    assert "".join(answer.tokens) == " " + answer.content
    assert math.exp(sum(answer.logprobs)) == pytest.approx(math.exp(-0.7))


def test_a_token_cap_cuts_the_answer_like_capped_decoding():
    answer = reply_to(SLOTS, decode, 2)
    assert (answer.content, answer.finish_reason, answer.completion_tokens) == ('{"people', "length", 2)
    assert answer.logprobs == [-0.1, -0.2]
    assert reply_to(SLOTS, decode, 5).finish_reason == "stop"


def test_no_valid_answer_is_empty_but_counts_the_tokens_spent():
    spent = Prediction(None, 0.0, False, prompt_tokens=19, tokens=(1, 2), token_logprobs=(-0.1, -0.2))
    answer = reply_to(spent, decode, None)
    assert (answer.content, answer.finish_reason, answer.tokens, answer.completion_tokens) == ("", "length", [], 2)
    assert reply_to(spent, decode, 1).content == "{"  # a capped prefix was schema-valid


def test_stream_chunks_follow_openai_and_end_with_done():
    answer = reply_to(SLOTS, decode, None)
    chunks = chat_chunks("chatcmpl-1", "restaurant-slots@v1", request(stream=True, logprobs=True, stream_options={"include_usage": True}), answer)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": answer.content}
    assert [t["token"] for t in chunks[1]["choices"][0]["logprobs"]["content"]] == answer.tokens
    assert chunks[2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[3]["choices"] == [] and chunks[3]["usage"] == answer.usage
    assert all(chunk["usage"] is None for chunk in chunks[:3])
    wire = b"".join(sse(chunks)).decode()
    events = wire.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert [json.loads(event.removeprefix("data: ")) for event in events[:-2]] == chunks
    assert all("usage" not in chunk for chunk in chat_chunks("c", "m", request(stream=True), answer))


@pytest.mark.parametrize(
    ("arguments", "param", "message"),
    [
        ({"n": 3}, "n", "every choice would be the same"),
        ({"best_of": 2}, "best_of", "Unrecognized request argument supplied: best_of"),
        ({"stream_options": {"include_usage": True, "chunk_size": 2}}, "stream_options.chunk_size", "Unrecognized"),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "greater than or equal to 1"),
        ({"top_logprobs": 0}, "top_logprobs", "requires logprobs=true"),
        ({"functions": [{"name": "f"}]}, "functions", "tool calling"),
        ({"function_call": {"name": "f"}}, "function_call", "tool calling"),
        ({"modalities": ["text", "audio"]}, "modalities", "audio"),
        ({"logit_bias": {"42": 5}}, "logit_bias", "not supported"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "Input should be"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "valid string; or Input should be a valid list"),
        ({"messages": [{"role": "user", "content": " "}]}, "messages[0].content", "is empty"),
    ],
)
def test_refusals_name_the_parameter(arguments, param, message):
    with pytest.raises(ApiError) as refused:
        last_user_text(request(**arguments).messages)
    assert (refused.value.status, refused.value.param) == (400, param)
    assert message in refused.value.message


def test_accepted_arguments_that_cannot_change_a_greedy_answer():
    parsed = request(temperature=0.7, top_p=0.9, seed=3, user="u", metadata={"k": "v"}, tool_choice="none", response_format={"type": "text"}, max_tokens=8, max_completion_tokens=4)
    assert parsed.limit == 4  # max_completion_tokens supersedes the older max_tokens


def test_the_input_is_the_last_user_message_with_text_parts_joined():
    parsed = request(messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "a table"}, {"type": "text", "text": "for 2"}]},
    ])
    assert last_user_text(parsed.messages) == "a table\nfor 2"
    with pytest.raises(ApiError) as no_user:
        last_user_text(request(messages=[{"role": "system", "content": "x"}]).messages)
    assert no_user.value.param == "messages"
    with pytest.raises(ApiError) as image:
        last_user_text(request(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}]).messages)
    assert image.value.param == "messages[0].content[1]" and "'image_url'" in image.value.message


def test_completions_default_to_16_tokens_and_refuse_what_they_cannot_honour():
    from slm_flywheel.serving.openai_api import completion, parse_completion_request

    parsed = parse_completion_request({"model": "m", "prompt": ["a", "b"]})
    assert parsed.max_tokens == 16 and parsed.prompts == ["a", "b"]  # OpenAI's default cap
    answers = [reply_to(SLOTS, decode, parsed.max_tokens), reply_to(SLOTS, decode, 2)]
    body = completion("cmpl-1", "m", parsed, answers)
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length"]
    assert body["usage"] == {"prompt_tokens": 38, "completion_tokens": 7, "total_tokens": 45}
    with pytest.raises(ApiError) as empty:
        parse_completion_request({"model": "m", "prompt": ["a", " "]})
    assert empty.value.param == "prompt[1]"
