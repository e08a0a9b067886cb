"""Structured outputs end to end through the official OpenAI SDK: `chat.completions.parse` with a pydantic
model, tool calls forced by tool_choice (streamed and not), and invalid schemas as 400s."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel, Field

from tests.engine.json_schema_check import validate
from tests.frontend.conftest import MODEL_NAME
from tests.servers import FrontendServer

pytestmark = pytest.mark.slow

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"enum": ["UTC", "CET"]}},
                "required": ["zone"],
            },
        },
    },
]
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population: int = Field(ge=0, le=99_999_999)


@pytest.fixture(scope="module")
def client(frontend_server: FrontendServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=frontend_server.base_url, api_key=frontend_server.api_key, max_retries=0)


def check_calls(calls: list[tuple[str, str]]) -> None:
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
    assert calls
    for name, arguments in calls:
        validate(json.loads(arguments), schemas[name])


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City,
        max_tokens=80,
        temperature=0,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, City) and parsed.name
    assert completion.choices[0].finish_reason == "stop"


# The weather question with a call forced: greedy, room for a few calls.
REQUIRED_CALL = {
    "model": MODEL_NAME,
    "messages": WEATHER_QUESTION,
    "tools": TOOLS,
    "tool_choice": "required",
    "max_tokens": 80,
    "temperature": 0,
}


def test_required_tool_choice_returns_valid_calls(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(**REQUIRED_CALL)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    calls = [(call.function.name, call.function.arguments) for call in choice.message.tool_calls]
    check_calls(calls)
    stream = client.chat.completions.create(**REQUIRED_CALL, stream=True)
    streamed: dict[int, list[str]] = {}
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = streamed.setdefault(delta.index, ["", ""])
            entry[0] += (delta.function.name or "") if delta.function else ""
            entry[1] += (delta.function.arguments or "") if delta.function else ""
    assert [tuple(streamed[index]) for index in sorted(streamed)] == calls


def test_parallel_tool_calls_false_makes_exactly_one_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(**REQUIRED_CALL, parallel_tool_calls=False)
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and calls is not None and len(calls) == 1
    check_calls([(calls[0].function.name, calls[0].function.arguments)])


def test_named_tool_choice_streams_the_arguments(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=WEATHER_QUESTION,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
        temperature=0,
        stream=True,
    )
    names, arguments, finishes = "", "", []
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            assert delta.index == 0
            names += (delta.function.name or "") if delta.function else ""
            arguments += (delta.function.arguments or "") if delta.function else ""
        finishes += [chunk.choices[0].finish_reason] if chunk.choices and chunk.choices[0].finish_reason else []
    check_calls([(names, arguments)])
    # A named call ends with "stop", as OpenAI's and vLLM's do ("required" and "auto" say "tool_calls").
    assert finishes == ["stop"]


def test_named_legacy_function_call_is_forced(client: openai.OpenAI) -> None:
    request = {
        "model": MODEL_NAME,
        "messages": WEATHER_QUESTION,
        "functions": [tool["function"] for tool in TOOLS],
        "function_call": {"name": "get_weather"},
        "max_tokens": 60,
        "temperature": 0,
    }
    choice = client.chat.completions.create(**request).choices[0]  # type: ignore[call-overload]
    call = choice.message.function_call
    # Named, the call is the answer asked for: "stop", as OpenAI answers a forced call.
    assert choice.finish_reason == "stop" and call is not None and not choice.message.tool_calls
    check_calls([(call.name, call.arguments)])
    # The answer goes back as history with the function's result, and the conversation goes on.
    history = [
        *WEATHER_QUESTION,
        choice.message.model_dump(exclude_none=True),
        {"role": "function", "name": call.name, "content": '{"temperature": 21}'},
    ]
    follow_up = client.chat.completions.create(**{**request, "messages": history, "function_call": "none"})  # type: ignore[call-overload]
    assert follow_up.choices[0].finish_reason in ("stop", "length") and follow_up.choices[0].message.content
    # Errors name the legacy fields the client sent.
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**{**request, "function_call": {"name": "unknown"}})  # type: ignore[call-overload]
    assert refused.value.param == "function_call" and "function_call names unknown function" in str(refused.value)


def test_structural_tag_response_format(client: openai.OpenAI) -> None:
    answer = {"type": "json_schema", "json_schema": {"enum": [1, 2, 3]}}
    tag = {"type": "structural_tag", "format": {"type": "tag", "begin": "<answer>", "content": answer, "end": "</answer>"}}
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=WEATHER_QUESTION, max_tokens=20, temperature=0, response_format=tag,  # type: ignore[arg-type]
    )  # fmt: skip
    assert reply.choices[0].message.content in ("<answer>1</answer>", "<answer>2</answer>", "<answer>3</answer>")
    with pytest.raises(openai.BadRequestError, match="structures and triggers"):
        client.chat.completions.create(
            model=MODEL_NAME, messages=WEATHER_QUESTION, max_tokens=4,
            response_format={"type": "structural_tag", "structures": []},  # type: ignore[arg-type,typeddict-item]
        )  # fmt: skip


def test_completions_take_a_response_format(client: openai.OpenAI) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "colour", "schema": {"enum": ["red", "blue"]}}}
    reply = client.completions.create(
        model=MODEL_NAME, prompt="My favourite colour is", max_tokens=10, temperature=0,
        extra_body={"response_format": schema},
    )  # fmt: skip
    assert json.loads(reply.choices[0].text) in ("red", "blue")


def test_invalid_schema_is_a_400_naming_the_parameter(client: openai.OpenAI) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {
            "name": "tags",
            "schema": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        },
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_NAME, messages=WEATHER_QUESTION, max_tokens=8, response_format=response_format
        )
    assert caught.value.param == "response_format" and "uniqueItems" in caught.value.message
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_NAME, messages=WEATHER_QUESTION, max_tokens=8, tools=[tool], tool_choice="required"
        )
    assert caught.value.param == "tool_choice" and "'not'" in caught.value.message


def test_two_constraints_are_a_400_not_one_silently_winning(client: openai.OpenAI) -> None:
    """vLLM refuses more than one output constraint; here each pair once let the later one win."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=WEATHER_QUESTION,
            max_tokens=8,
            response_format={"type": "json_object"},
            extra_body={"structured_outputs": {"regex": "a+"}},
        )
    assert caught.value.param == "response_format" and "structured_outputs" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=WEATHER_QUESTION,
            max_tokens=8,
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="required",
            response_format={"type": "json_object"},
        )
    assert caught.value.param == "response_format" and "tool_choice" in caught.value.message
