"""Tool-call and reasoning parsing on real generations. A greedy small model continues a repeated pattern
faithfully, so a prompt of repeated `<think>...</think><tool_call>...</tool_call>` blocks (rendered raw by a
request-level chat template) makes it generate one more block, which the parsers must take apart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.frontend.conftest import MODEL_NAME
from tests.servers import TritonServer, start_frontend

pytestmark = pytest.mark.slow

BLOCK = '<think>look it up</think><tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
REQUEST = {
    "model": MODEL_NAME,
    "messages": [{"role": "user", "content": BLOCK * 4}],
    "tools": TOOLS,
    "tool_choice": "auto",
    "max_tokens": 48,
    "temperature": 0,
    "stop": ["</tool_call>"],
    "extra_body": {"chat_template": "{{ messages[0]['content'] }}", "include_stop_str_in_output": True},
}


@pytest.fixture(scope="module")
def client(parsing_frontend_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=parsing_frontend_url, api_key="none", max_retries=0)


def test_generated_tool_call_is_parsed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(**REQUEST)  # type: ignore[call-overload]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert choice.message.reasoning_content == "look it up"  # type: ignore[attr-defined]
    assert not choice.message.content
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_streamed_tool_call_equals_non_streamed(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(**REQUEST).choices[0]  # type: ignore[call-overload]
    reasoning, name, arguments = "", "", ""
    finishes: list[str] = []
    ids: set[str] = set()
    for chunk in client.chat.completions.create(**REQUEST, stream=True):  # type: ignore[call-overload]
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        for call in delta.tool_calls or []:
            assert call.index == 0 and call.function is not None
            if call.id:
                ids.add(call.id)
            name += call.function.name or ""
            arguments += call.function.arguments or ""
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    assert finishes == ["tool_calls"] and len(ids) == 1
    assert reasoning == whole.message.reasoning_content  # type: ignore[attr-defined]
    [call] = whole.message.tool_calls or []
    assert (name, arguments) == (call.function.name, call.function.arguments)


def test_include_reasoning_false_leaves_the_reasoning_out(client: openai.OpenAI) -> None:
    request = {**REQUEST, "extra_body": {**REQUEST["extra_body"], "include_reasoning": False}}  # type: ignore[dict-item]
    whole = client.chat.completions.create(**request).choices[0]  # type: ignore[call-overload]
    assert getattr(whole.message, "reasoning_content", None) is None
    assert whole.finish_reason == "tool_calls" and whole.message.tool_calls
    streamed = [
        chunk.choices[0].delta
        for chunk in client.chat.completions.create(**request, stream=True)  # type: ignore[call-overload]
        if chunk.choices
    ]
    assert all(getattr(delta, "reasoning_content", None) is None for delta in streamed)
    assert any(delta.tool_calls for delta in streamed)


def test_tool_choice_none_leaves_the_text_alone(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(**{**REQUEST, "tool_choice": "none"})  # type: ignore[call-overload]
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "stop" and not message.tool_calls
    assert message.content and message.content.startswith("<tool_call>")
    assert message.reasoning_content == "look it up"  # type: ignore[attr-defined]


def test_legacy_functions_answer_with_a_function_call(client: openai.OpenAI) -> None:
    legacy = {key: value for key, value in REQUEST.items() if key not in ("tools", "tool_choice")}
    legacy["functions"] = [tool["function"] for tool in TOOLS]
    whole = client.chat.completions.create(**legacy, function_call="auto").choices[0]  # type: ignore[call-overload]
    assert whole.finish_reason == "function_call" and not whole.message.tool_calls
    call = whole.message.function_call
    assert call is not None and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    name, arguments, finishes = "", "", []
    for chunk in client.chat.completions.create(**legacy, stream=True):  # type: ignore[call-overload]
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        assert not delta.tool_calls
        if delta.function_call is not None:
            name += delta.function_call.name or ""
            arguments += delta.function_call.arguments or ""
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    assert finishes == ["function_call"] and (name, arguments) == (call.name, call.arguments)
    # "none" leaves the text alone, as tool_choice "none" does.
    untouched = client.chat.completions.create(**legacy, function_call="none").choices[0]  # type: ignore[call-overload]
    assert untouched.finish_reason == "stop" and untouched.message.function_call is None
    # Tools and functions together are refused.
    with pytest.raises(openai.BadRequestError, match="not both"):
        client.chat.completions.create(**REQUEST, functions=legacy["functions"])  # type: ignore[call-overload]


@pytest.mark.parametrize(("effort", "thinking"), [("none", False), ("minimal", False), ("low", True), ("high", True)])
def test_reasoning_effort_switches_thinking_under_a_reasoning_parser(
    client: openai.OpenAI, effort: str, thinking: bool
) -> None:
    """Qwen3's chat template reads `enable_thinking`: the effort sets it, chat_template_kwargs still win."""
    template = "{% if enable_thinking != expected %}{{ raise_exception('enable_thinking is ' ~ enable_thinking) }}{% endif %}Hi"
    request = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    reply = client.chat.completions.create(
        **request, reasoning_effort=effort,  # type: ignore[arg-type]
        extra_body={"chat_template": template, "chat_template_kwargs": {"expected": thinking}},
    )  # fmt: skip
    assert reply.usage and reply.usage.completion_tokens == 1
    reply = client.chat.completions.create(
        **request, reasoning_effort=effort,  # type: ignore[arg-type]
        extra_body={"chat_template": template, "chat_template_kwargs": {"expected": True, "enable_thinking": True}},
    )  # fmt: skip
    assert reply.usage and reply.usage.completion_tokens == 1


QWEN3_CODER_BLOCK = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n"
)
QWEN3_CODER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    }
]


@pytest.fixture(scope="module")
def qwen3_coder_client(
    model_path: Path, triton_server: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    """A frontend on the session's Triton parsing Qwen3-Coder's XML tool calls."""
    log_dir = tmp_path_factory.mktemp("frontend-qwen3-coder")
    args = ("--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder")
    frontend = start_frontend(model_path, triton_server, log_dir, api_key=None, extra_args=args)
    try:
        yield openai.OpenAI(base_url=frontend.base_url, api_key="none", max_retries=0)
    finally:
        frontend.process.stop()


def test_qwen3_coder_call_is_typed_by_the_tool_schema(qwen3_coder_client: openai.OpenAI) -> None:
    """`days` is text in the XML; the tool declares it an integer, so the arguments hold the number 3."""
    request = {
        **REQUEST,
        "messages": [{"role": "user", "content": "Weather?\n" + QWEN3_CODER_BLOCK * 4}],
        "tools": QWEN3_CODER_TOOLS,
        "max_tokens": 64,
    }
    whole = qwen3_coder_client.chat.completions.create(**request).choices[0]  # type: ignore[call-overload]
    assert whole.finish_reason == "tool_calls", whole.message
    assert not whole.message.content
    [call] = whole.message.tool_calls or []
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris", "days": 3}')
    name, arguments = "", ""
    for chunk in qwen3_coder_client.chat.completions.create(**request, stream=True):  # type: ignore[call-overload]
        if not chunk.choices:
            continue
        for piece in chunk.choices[0].delta.tool_calls or []:
            assert piece.function is not None
            name += piece.function.name or ""
            arguments += piece.function.arguments or ""
    assert (name, arguments) == (call.function.name, call.function.arguments)
