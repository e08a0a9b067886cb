"""Reasoning feeding tool extraction: the streamed deltas rebuild exactly the non-streamed message."""

from __future__ import annotations

from frontend.reasoning import reasoning_parser
from frontend.serving.chat_output import ChatOutputProcessor
from frontend.tool_parsers import TOOL_PARSERS

TEXT = '<think>need weather</think>Checking.<tool_call>{"name": "w", "arguments": {"c": "Oslo"}}</tool_call>'


def processor() -> ChatOutputProcessor:
    return ChatOutputProcessor(reasoning_parser("qwen3"), TOOL_PARSERS["hermes"]())


def test_stream_rebuilds_the_message() -> None:
    message = processor().message("assistant", TEXT)
    assert message.reasoning_content == "need weather"
    assert message.content == "Checking."
    assert message.tool_calls and message.tool_calls[0].function.arguments == '{"c": "Oslo"}'

    stream = processor()
    reasoning, content, name, arguments = "", "", "", ""
    for delta in [*(stream.feed(char) for char in TEXT), stream.finish()]:
        if delta is None:
            continue
        reasoning += delta.reasoning_content or ""
        content += delta.content or ""
        for call in delta.tool_calls or []:
            name += call.function.name or ""
            arguments += call.function.arguments or ""
    assert (reasoning, content, name, arguments) == ("need weather", "Checking.", "w", '{"c": "Oslo"}')
    assert stream.saw_tool_calls


def test_without_parsers_text_is_content() -> None:
    output = ChatOutputProcessor(None, None)
    assert output.message("assistant", "<think>x</think>y").content == "<think>x</think>y"
    delta = output.feed("abc")
    assert delta is not None and delta.content == "abc" and output.finish() is None


def test_parallel_tool_calls_false_keeps_the_first_call_streamed_and_not() -> None:
    two_calls = (
        '<tool_call>{"name": "w", "arguments": {"c": "Oslo"}}</tool_call>'
        '<tool_call>{"name": "w", "arguments": {"c": "Rome"}}</tool_call>'
    )
    message = ChatOutputProcessor(None, TOOL_PARSERS["hermes"](), max_tool_calls=1).message(
        "assistant", two_calls
    )
    assert message.tool_calls and [call.function.arguments for call in message.tool_calls] == [
        '{"c": "Oslo"}'
    ]

    stream = ChatOutputProcessor(None, TOOL_PARSERS["hermes"](), max_tool_calls=1)
    indices, arguments = set(), ""
    for delta in [*(stream.feed(char) for char in two_calls), stream.finish()]:
        for call in (delta.tool_calls if delta else None) or []:
            indices.add(call.index)
            arguments += call.function.arguments or ""
    assert indices == {0} and arguments == '{"c": "Oslo"}'
