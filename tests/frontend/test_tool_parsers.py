"""Tool-call parsers: exact extraction, and streamed extraction (any chunking) equal to non-streamed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontend.config import TOOL_CALL_PARSERS
from frontend.protocol.chat import ChatCompletionRequest
from frontend.serving.chat import ChatHandler
from frontend.templating import ChatTemplater
from frontend.tool_parsers import TOOL_PARSERS, ToolParser, extract
from tests.frontend.conftest import MODEL_NAME, offline_config, offline_serving_context

HERMES = (
    'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>\n'
    '<tool_call>\n{"arguments": {"tz": "Europe/Paris"}, "name": "get_time"}\n</tool_call>'
)
LLAMA3 = (
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}; '
    '{"name": "get_time", "parameters": {"tz": "Europe/Paris"}}'
)
MISTRAL = (
    'Let me check.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}, '
    '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}]'
)
PYTHONIC = '[get_weather(city="Paris", unit="C"), get_time(tz="Europe/Paris")]'
QWEN3_CODER = (
    "Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=unit>\nC\n</parameter>\n</function>\n</tool_call>\n"
    "<tool_call>\n<function=get_time>\n<parameter=tz>\nEurope/Paris\n</parameter>\n</function>\n</tool_call>"
)
EXPECTED_CALLS = [("get_weather", {"city": "Paris", "unit": "C"}), ("get_time", {"tz": "Europe/Paris"})]
CASES = {
    "hermes": (HERMES, "Let me check."),
    "llama3_json": (LLAMA3, ""),
    "mistral": (MISTRAL, "Let me check."),
    "pythonic": (PYTHONIC, ""),
    "qwen3_coder": (QWEN3_CODER, "Let me check.\n"),
}
# Texts each parser must leave as plain content.
PLAIN = {
    "hermes": "No tools needed: 1 < 2 and <tool is not a tag.",
    "llama3_json": "The answer is {not json} here.",
    "mistral": "Plain [TOOL answer] text.",
    "pythonic": "Sure, here is the list [1, 2].",
    "qwen3_coder": 'A <tool_call> block needs <function=f>: <tool_call>{"name": "f"}</tool_call> is none.',
}

CHAT_REQUEST: dict[str, Any] = {
    "model": MODEL_NAME,
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
}


def streamed(parser: ToolParser, pieces: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """Feed pieces one by one and rebuild (content, [(name, arguments)]) from the deltas."""
    content = ""
    calls: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for piece in [*pieces, None]:
        delta = parser.feed(piece) if piece is not None else parser.finish()
        content += delta.content
        for call in delta.calls:
            if call.name is not None:
                assert call.index not in names, "a call's name is sent once"
                assert call.id and call.id.startswith("call_")
                names[call.index] = call.name
            assert call.index in names, "arguments never precede the name"
            calls.setdefault(call.index, []).append(call.arguments)
    return content, [(names[index], "".join(calls[index])) for index in sorted(calls)]


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({cut % (len(text) + 1) for cut in cuts})
    return [text[start:end] for start, end in zip([0, *points], [*points, len(text)], strict=True)]


def chat_handler(model_path: Path, templater: ChatTemplater, tool_call_parser: str) -> ChatHandler:
    """Chat requests prepared as a frontend with `--enable-auto-tool-choice --tool-call-parser ...` would."""
    config = offline_config(
        model_path, max_model_len=512, enable_auto_tool_choice=True, tool_call_parser=tool_call_parser
    )
    return ChatHandler(offline_serving_context(config, templater))


def test_every_parser_is_a_command_line_choice() -> None:
    assert sorted(TOOL_CALL_PARSERS) == sorted(TOOL_PARSERS) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_whole_text_extraction(name: str) -> None:
    text, content = CASES[name]
    got_content, calls = extract(TOOL_PARSERS[name](), text)
    assert got_content == content
    assert [(call.function.name, json.loads(call.function.arguments)) for call in calls] == EXPECTED_CALLS
    assert len({call.id for call in calls}) == 2


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_text_stays_content(name: str) -> None:
    content, calls = extract(TOOL_PARSERS[name](), PLAIN[name])
    assert (content, calls) == (PLAIN[name], [])


@pytest.mark.parametrize("name", sorted(CASES))
def test_character_by_character_stream_equals_whole_text(name: str) -> None:
    text, _ = CASES[name]
    whole_content, whole_calls = extract(TOOL_PARSERS[name](), text)
    content, calls = streamed(TOOL_PARSERS[name](), list(text))
    assert content == whole_content
    assert calls == [(call.function.name, call.function.arguments) for call in whole_calls]


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(CASES)),
    plain=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_chunking_gives_the_same_result(name: str, plain: bool, cuts: list[int]) -> None:
    text = PLAIN[name] if plain else CASES[name][0]
    whole_content, whole_calls = extract(TOOL_PARSERS[name](), text)
    assert streamed(TOOL_PARSERS[name](), split(text, cuts)) == (
        whole_content,
        [(call.function.name, call.function.arguments) for call in whole_calls],
    )


def test_hermes_arguments_stream_before_the_call_closes() -> None:
    parser = TOOL_PARSERS["hermes"]()
    first = parser.feed('<tool_call>{"name": "f", "arguments": {"query": "long te')
    assert [call.name for call in first.calls if call.name] == ["f"]
    assert "".join(call.arguments for call in first.calls) == '{"query": "long te'
    rest = parser.feed('xt"}}</tool_call>')
    assert "".join(call.arguments for call in rest.calls) == 'xt"}'


def test_call_without_arguments_gets_an_empty_object() -> None:
    _, calls = extract(TOOL_PARSERS["hermes"](), '<tool_call>{"name": "now"}</tool_call>')
    assert calls[0].function.arguments == "{}"


def test_truncated_call_keeps_what_was_generated() -> None:
    text = '<tool_call>{"name": "f", "arguments": {"a": [1, 2'
    whole = extract(TOOL_PARSERS["hermes"](), text)
    assert whole[1][0].function.arguments == '{"a": [1, 2'
    assert streamed(TOOL_PARSERS["hermes"](), list(text))[1] == [("f", '{"a": [1, 2')]


@pytest.mark.parametrize(("choice", "keeps"), [("auto", True), ("required", False)])
def test_mistral_calls_keep_special_tokens_in_the_text(
    model_path: Path, templater: ChatTemplater, choice: str, keeps: bool
) -> None:
    """[TOOL_CALLS] is a special token: the text the mistral parser reads must keep it (a forced call is
    read by another parser)."""
    request = ChatCompletionRequest.model_validate({**CHAT_REQUEST, "tool_choice": choice})
    prepared = asyncio.run(chat_handler(model_path, templater, "mistral")._prepare(request, "id"))
    assert prepared.params.sampling.get("skip_special_tokens", True) is not keeps
