"""The qwen3_coder tool-call parser: parameter values typed by the request's schema (as vLLM types them),
arguments streamed a parameter at a time that add up to the non-streamed ones under any chunking, and
what is left of a generation cut off anywhere."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontend.protocol.chat import ChatCompletionRequest
from frontend.protocol.responses import FunctionTool
from frontend.serving.responses_tools import tool_mode
from frontend.templating import ChatTemplater
from frontend.tool_parsers import extract
from frontend.tool_parsers.base import FunctionSchemas
from frontend.tool_parsers.qwen3_coder import Qwen3CoderToolParser
from tests.frontend.test_tool_parsers import CHAT_REQUEST, chat_handler, split, streamed

TOOLS: FunctionSchemas = {
    "get_weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "metric": {"type": "boolean"},
        },
    },
    "write_file": {
        "type": "object",
        "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
    },
}


def block(name: str, **parameters: str) -> str:
    """One call as Qwen3-Coder writes it."""
    body = "".join(f"<parameter={key}>\n{value}\n</parameter>\n" for key, value in parameters.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def parse(text: str, tools: FunctionSchemas = TOOLS) -> tuple[str, list[tuple[str, str]]]:
    content, calls = extract(Qwen3CoderToolParser(tools), text)
    return content, [(call.function.name, call.function.arguments) for call in calls]


WEATHER = block("get_weather", city="Paris", days="3", metric="true")
WEATHER_ARGUMENTS = '{"city": "Paris", "days": 3, "metric": true}'
CODE = 'if a </parameter> b:\n    print("</function>")\n'
TEXTS = [
    "Let me check.\n\n" + WEATHER,
    WEATHER + "\n" + block("write_file", path="a.py", content=CODE) + "\n",
    WEATHER + "\nDone: " + block("get_weather", city="Rome") + " Bye.",
    "No call here, only <tool and <function=x> talk.",
    '<tool_call>{"name": "get_weather"}</tool_call> is JSON, not this syntax.',
    # The model left out closing tags.
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</tool_call>",
    "<tool_call>\n<function=get_weather>\n</function>\n<tool_call>\n<function=write_file>\n</function>\n",
    # Cut off by max_tokens.
    "Hm. <tool_call>\n<function=get_weather>\n<parameter=city>\nPar",
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=da",
    "<tool_call>\n<function=get_wea",
]


def test_parameters_become_the_arguments_object() -> None:
    assert parse("Let me check.\n\n" + WEATHER) == ("Let me check.\n\n", [("get_weather", WEATHER_ARGUMENTS)])


@pytest.mark.parametrize(
    ("schema", "text", "value"),
    [
        ({"type": "string"}, "3", "3"),
        ({"type": "string"}, "null", "null"),
        ({"type": "string"}, "two\n\nlines\n", "two\n\nlines\n"),
        ({"type": ["string", "null"]}, "null", None),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, "None", None),
        ({"type": "integer"}, "42", 42),
        ({"type": "integer"}, "4.5", "4.5"),
        ({"type": "integer"}, "null", None),
        ({"type": "number"}, "2.5", 2.5),
        ({"type": "number"}, "3.0", 3),
        ({"type": "number"}, "inf", "inf"),
        ({"type": "number"}, "many", "many"),
        ({"type": "boolean"}, "true", True),
        ({"type": "boolean"}, "False", False),
        ({"type": "boolean"}, "yes", False),
        ({"type": "object"}, '{"a": [1, null]}', {"a": [1, None]}),
        ({"type": "object"}, "{'a': True}", {"a": True}),
        ({"type": "object"}, "\"{'a': 1}\"", {"a": 1}),
        ({"type": "object"}, "{'a': 1", "{'a': 1"),
        ({"type": "object"}, "{1, 2}", "{1, 2}"),
        ({"type": "object"}, '{"a": NaN}', '{"a": NaN}'),
        ({"type": "array"}, "[1, 2]", [1, 2]),
        ({"type": "array"}, "(1, 'b')", [1, "b"]),
        ({"type": "array"}, "[" * 5000, "[" * 5000),
        ({"type": "dict"}, '{"k": "v"}', {"k": "v"}),
        ({"enum": ["a", "b"]}, "a", "a"),
        ({"description": "no type"}, "7", "7"),
        ({"type": "any"}, "[7]", [7]),
        (None, "7", "7"),
    ],
)
def test_values_take_the_declared_type(schema: dict[str, Any] | None, text: str, value: object) -> None:
    properties = {"p": schema} if schema is not None else {}
    _, calls = parse(block("f", p=text), {"f": {"type": "object", "properties": properties}})
    assert calls == [("f", json.dumps({"p": value}, ensure_ascii=False))]


def test_an_unknown_function_keeps_its_values_as_text() -> None:
    assert parse(block("lookup", id="7", flag="true"))[1] == [("lookup", '{"id": "7", "flag": "true"}')]


def test_a_value_keeps_a_closing_tag_that_no_tag_follows() -> None:
    _, [(name, arguments)] = parse(block("write_file", path="a.py", content=CODE))
    assert name == "write_file" and json.loads(arguments) == {"path": "a.py", "content": CODE}


def test_calls_in_order_with_text_between_them_as_content() -> None:
    content, calls = parse(WEATHER + "\n\nDone: " + block("get_weather", city="Rome") + "\n Bye.\n")
    assert content == "\n\nDone: \n Bye.\n"
    assert calls == [
        ("get_weather", WEATHER_ARGUMENTS),
        ("get_weather", '{"city": "Rome"}'),
    ]
    # Whitespace alone between and after calls is layout.
    assert parse(WEATHER + "\n" + WEATHER + "\n\n")[0] == ""


def test_missing_closing_tags_still_end_the_call() -> None:
    assert parse(TEXTS[5])[1] == [("get_weather", '{"city": "Paris"}')]
    assert parse(TEXTS[6])[1] == [("get_weather", "{}"), ("write_file", "{}")]


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        # Inside a value: what was generated is kept (vLLM's non-streamed answer); the object is closed.
        (TEXTS[7], "Hm. ", [("get_weather", '{"city": "Par"}')]),
        (TEXTS[7] + "is\n</param", "Hm. ", [("get_weather", '{"city": "Paris"}')]),
        (TEXTS[8], "", [("get_weather", '{"city": "Paris"}')]),
        (TEXTS[8] + "ys>\n2\n</parameter>\n</func", "", [("get_weather", '{"city": "Paris", "days": 2}')]),
        # Before the function's name is complete there is no call, and the tags are not content.
        (TEXTS[9], "", []),
        ("Hm. <tool_call>\n", "Hm. ", []),
        ("Hm. <tool_ca", "Hm. <tool_ca", []),
    ],
)
def test_a_generation_cut_off_anywhere(text: str, content: str, calls: list[tuple[str, str]]) -> None:
    assert parse(text) == (content, calls)


def test_text_that_only_looks_like_a_call_stays_content() -> None:
    for text in (TEXTS[3], TEXTS[4], "<tool_call>\n<function=a b>\n</function>\n</tool_call>"):
        assert parse(text) == (text, [])


def test_arguments_stream_one_parameter_at_a_time() -> None:
    parser = Qwen3CoderToolParser(TOOLS)
    first = parser.feed("Sure.<tool_call>\n<function=get_weather>\n<parameter=city>\nPar")
    assert first.content == "Sure."
    assert [(call.name, call.arguments) for call in first.calls] == [("get_weather", ""), (None, "{")]
    assert not parser.feed("is\n</parameter>\n").calls, "the value is certain only when a tag follows"
    assert [call.arguments for call in parser.feed("<parameter=days>\n3").calls] == ['"city": "Paris"']
    rest = parser.feed("\n</parameter>\n</function>\n</tool_call>")
    assert [call.arguments for call in rest.calls] == [', "days": 3', "}"]
    assert not parser.finish().calls


@pytest.mark.parametrize("text", TEXTS)
def test_character_by_character_stream_equals_whole_text(text: str) -> None:
    assert streamed(Qwen3CoderToolParser(TOOLS), list(text)) == parse(text)


@settings(max_examples=200, deadline=None)
@given(text=st.sampled_from(TEXTS), cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=20))
def test_any_chunking_gives_the_same_result(text: str, cuts: list[int]) -> None:
    assert streamed(Qwen3CoderToolParser(TOOLS), split(text, cuts)) == parse(text)


# Tags and text in any order: malformed, nested, cut off.
PIECES = [
    "<tool_call>",
    "</tool_call>",
    "<function=get_weather>",
    "<function=a b>",
    "<parameter=days>",
    "<parameter=city>",
    "</parameter>",
    "</function>",
    "\n",
    " ",
    "3",
    "null",
    "Paris",
    "<",
    ">",
    "{'a': 1}",
]


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), max_size=40), cuts=st.lists(st.integers(0, 400), max_size=12))
def test_any_text_gives_json_arguments_under_any_chunking(pieces: list[str], cuts: list[int]) -> None:
    text = "".join(pieces)
    content, calls = parse(text)
    assert all(isinstance(json.loads(arguments), dict) for _, arguments in calls)
    assert streamed(Qwen3CoderToolParser(TOOLS), split(text, cuts)) == (content, calls)


def test_chat_builds_the_configured_parser_for_the_request_tools(
    model_path: Path, templater: ChatTemplater
) -> None:
    tools = [
        {"type": "function", "function": {"name": name, "parameters": schema}}
        for name, schema in TOOLS.items()
    ]
    request = ChatCompletionRequest.model_validate({**CHAT_REQUEST, "tools": tools})
    prepared = asyncio.run(chat_handler(model_path, templater, "qwen3_coder")._prepare(request, "id"))
    assert prepared.tool_parser is not None
    assert extract(prepared.tool_parser(), WEATHER)[1][0].function.arguments == WEATHER_ARGUMENTS


def test_responses_build_the_configured_parser_for_the_request_tools() -> None:
    tools = [
        FunctionTool(type="function", name=name, parameters=dict(schema)) for name, schema in TOOLS.items()
    ]
    factory, forced = tool_mode(tools, "auto", None, "qwen3_coder", True)
    assert forced is None and factory is not None
    assert extract(factory(), WEATHER)[1][0].function.arguments == WEATHER_ARGUMENTS
