"""Request models validate themselves and convert to the engine's sampling parameters."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from frontend.errors import APIError
from frontend.protocol.chat import ChatCompletionRequest
from frontend.protocol.completions import CompletionRequest
from frontend.protocol.tokenize import TokenizeRequest
from frontend.serving.engine_params import engine_parameters, max_tokens_or_default

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **fields})


def test_every_role_and_text_parts_are_accepted() -> None:
    request = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ]
    )
    assert request.messages[1].text() == "ab"
    assert request.messages[3].text() == ""


@pytest.mark.parametrize(
    "fields, location",
    [
        ({"messages": []}, ("messages",)),
        ({"messages": [{"role": "robot", "content": "x"}]}, ("messages", 0, "role")),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
            ("messages", 0, "content"),
        ),
        ({"temperature": -1}, ("temperature",)),
        ({"top_p": 0}, ("top_p",)),
        ({"max_tokens": 0}, ("max_tokens",)),
        ({"frobnicate": True}, ("frobnicate",)),
        ({"stream_options": {"include_usage": True, "bogus": 1}}, ("stream_options", "bogus")),
        # A body request_id goes back as the X-Request-Id header: only what a header value may hold.
        ({"request_id": "请求-1"}, ("request_id",)),
        ({"request_id": "a\r\nSet-Cookie: x"}, ("request_id",)),
        ({"request_id": "x" * 257}, ("request_id",)),
    ],
)
def test_invalid_fields_are_located(fields: dict, location: tuple) -> None:
    with pytest.raises(ValidationError) as caught:
        chat(**fields)
    assert caught.value.errors()[0]["loc"] == location


def test_continue_final_message_needs_a_trailing_assistant_message() -> None:
    with pytest.raises(ValidationError, match="assistant message last"):
        chat(continue_final_message=True, add_generation_prompt=False)
    with pytest.raises(ValidationError, match="cannot both be true"):
        chat(continue_final_message=True)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=5, max_completion_tokens=7).output_token_limit() == 7
    assert chat(max_tokens=5).output_token_limit() == 5
    assert chat().output_token_limit() is None


def test_sampling_parameters_use_vllm_names() -> None:
    request = chat(temperature=0.0, top_k=5, min_p=0.1, seed=3, stop="END", stop_token_ids=[2], min_tokens=2, n=1)
    params = engine_parameters(request, {})
    assert params.sampling == {
        "temperature": 0.0,
        "top_k": 5,
        "min_p": 0.1,
        "seed": 3,
        "stop_token_ids": [2],
        "stop": ["END"],
        "ignore_eos": False,
        "min_tokens": 2,
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
        "spaces_between_special_tokens": True,
    }
    kept = engine_parameters(chat(skip_special_tokens=False, spaces_between_special_tokens=False), {}).sampling
    assert (kept["skip_special_tokens"], kept["spaces_between_special_tokens"]) == (False, False)


def test_beam_search_is_marked_and_other_structured_output_backends_are_refused_by_name() -> None:
    beams = engine_parameters(chat(use_beam_search=True, length_penalty=0.8, n=3), {})
    assert beams.beam_search is not None and beams.beam_search.length_penalty == 0.8
    assert beams.sampling["n"] == 3
    with pytest.raises(APIError) as refused:
        engine_parameters(chat(guided_decoding_backend="outlines"), {})
    assert refused.value.param == "guided_decoding_backend"
    # Their neutral values, and xgrammar by name, change nothing.
    neutral_request = chat(use_beam_search=False, length_penalty=1.0, guided_decoding_backend="xgrammar")
    neutral = engine_parameters(neutral_request, {})
    assert neutral.sampling == engine_parameters(chat(), {}).sampling and neutral.beam_search is None


def test_unsupported_parameters_are_forwarded_not_dropped() -> None:
    params = engine_parameters(chat(frequency_penalty=0.5, logit_bias={"1": 2.0}, n=3), {})
    assert params.sampling["frequency_penalty"] == 0.5
    assert params.sampling["logit_bias"] == {"1": 2.0}
    assert params.sampling["n"] == 3


@pytest.mark.parametrize("prompt", ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_completion_prompt_forms(prompt: object) -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": prompt}).prompt == prompt


@pytest.mark.parametrize("prompt", [[], [[]], None])
def test_empty_completion_prompts_are_refused(prompt: object) -> None:
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": prompt})


def test_tokenize_takes_exactly_one_input() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        TokenizeRequest.model_validate({"prompt": "a", "messages": USER})
    with pytest.raises(ValidationError, match="exactly one"):
        TokenizeRequest.model_validate({})


def test_stream_options_take_what_the_sdk_sends() -> None:
    options = chat(stream=True, stream_options={"include_usage": True, "include_obfuscation": False}).stream_options
    assert options is not None and options.include_usage and options.include_obfuscation is False
    with pytest.raises(ValidationError):
        chat(stream=True, stream_options={"include_usage": True, "unknown": 1})


def test_generation_config_defaults_fill_only_what_the_request_leaves_unset() -> None:
    defaults = {"temperature": 0.6, "top_k": 20, "top_p": 0.95, "repetition_penalty": 1.1, "max_tokens": 64}
    filled = engine_parameters(chat(temperature=0.0, presence_penalty=0.5), defaults).sampling
    assert (filled["temperature"], filled["top_k"], filled["top_p"]) == (0.0, 20, 0.95)
    assert (filled["repetition_penalty"], filled["presence_penalty"]) == (1.1, 0.5)
    assert "max_tokens" not in filled  # the handlers' max_tokens_or_default, not a sampling field
    # A beam search takes none of them (vLLM's ignores them too; top_p would be refused).
    beams = engine_parameters(chat(use_beam_search=True, n=2), defaults).sampling
    assert not {"temperature", "top_k", "top_p", "repetition_penalty"} & beams.keys()


def test_default_max_tokens_keeps_within_the_context() -> None:
    assert max_tokens_or_default(None, {}, None, 10, None, 100) is None
    assert max_tokens_or_default(None, {"max_tokens": 50}, None, 10, None, None) == 50
    assert max_tokens_or_default(None, {"max_tokens": 50}, None, 10, None, 100) == 50
    assert max_tokens_or_default(None, {"max_tokens": 50}, None, 80, None, 100) == 20
    # A cap bounds what a request sent too, and serves as the value where nothing else sets one.
    assert max_tokens_or_default(500, {"max_tokens": 50}, 64, 10, None, 1000) == 64
    assert max_tokens_or_default(30, {}, 64, 10, None, 1000) == 30
    assert max_tokens_or_default(None, {}, 64, 10, None, 1000) == 64
    assert max_tokens_or_default(None, {}, 64, 80, None, 100) == 20
