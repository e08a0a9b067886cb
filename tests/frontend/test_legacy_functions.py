"""OpenAI's legacy function calling as tools: the request, the history, and the answer's shape."""

from __future__ import annotations

import pytest

from frontend.errors import APIError
from frontend.legacy_functions import (
    as_tool_messages,
    as_tools,
    in_legacy_terms,
    legacy_delta,
    legacy_message,
)
from frontend.protocol.chat import (
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    ChatResponseMessage,
    DeltaFunctionCall,
    DeltaToolCall,
    FunctionCall,
    NamedToolChoice,
    ToolCall,
)

WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "Hi"}], **fields})


def test_functions_become_tools_with_one_call_per_answer() -> None:
    converted = as_tools(request(functions=[WEATHER], function_call={"name": "get_weather"}))
    assert [tool.function.name for tool in converted.tools or []] == ["get_weather"]
    assert converted.tool_choice == NamedToolChoice.model_validate({"function": {"name": "get_weather"}})
    assert converted.parallel_tool_calls is False and converted.functions is None and converted.function_call is None
    assert as_tools(request(functions=[WEATHER])).tool_choice is None
    assert as_tools(request(functions=[WEATHER], function_call="none")).tool_choice == "none"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"functions": [WEATHER], "tools": [{"type": "function", "function": WEATHER}]}, "functions"),
        ({"functions": [WEATHER], "tool_choice": "none"}, "functions"),
        ({"function_call": "auto", "tools": [{"type": "function", "function": WEATHER}]}, "function_call"),
        ({"function_call": "auto"}, "function_call"),
    ],
)
def test_mixed_or_incomplete_requests_are_refused(fields: dict, param: str) -> None:
    with pytest.raises(APIError) as refused:
        as_tools(request(**fields))
    assert refused.value.status == 400 and refused.value.param == param


def test_errors_about_the_tools_name_the_legacy_fields() -> None:
    error = in_legacy_terms(APIError(400, "tool_choice names unknown function 'x'", param="tool_choice"))
    assert (error.status, error.message, error.param) == (400, "function_call names unknown function 'x'", "function_call")
    assert in_legacy_terms(APIError(400, "bad", param="messages")).param == "messages"


def test_history_pairs_each_result_with_the_latest_call_of_its_name() -> None:
    messages = [
        ChatMessage.model_validate(item)
        for item in [
            {"role": "user", "content": "Weather in Paris, then Rome?"},
            {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"role": "function", "name": "get_weather", "content": "21"},
            {"role": "assistant", "function_call": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            {"role": "function", "name": "get_weather", "content": "25"},
        ]
    ]
    converted = as_tool_messages(messages)
    assert [message.role for message in converted] == ["user", "assistant", "tool", "assistant", "tool"]
    first, second = (message.tool_calls or [] for message in (converted[1], converted[3]))
    assert [call.function.arguments for call in first + second] == ['{"city": "Paris"}', '{"city": "Rome"}']
    assert converted[2].tool_call_id == first[0].id != converted[4].tool_call_id == second[0].id
    assert all(message.function_call is None for message in converted)
    with pytest.raises(APIError, match="needs the function's name"):
        as_tool_messages([ChatMessage(role="function", content="21")])
    plain = [ChatMessage(role="user", content="Hi")]
    assert as_tool_messages(plain) is plain


def test_answers_carry_the_first_call_as_function_call() -> None:
    call = FunctionCall(name="get_weather", arguments='{"city": "Paris"}')
    message = legacy_message(ChatResponseMessage(role="assistant", tool_calls=[ToolCall(id="call_1", function=call)]))
    assert message.function_call == call and message.tool_calls is None
    delta = legacy_delta(
        ChatDelta(tool_calls=[DeltaToolCall(index=0, id="call_1", type="function", function=DeltaFunctionCall(name="get_weather", arguments='{"ci'))])
    )
    assert delta.function_call == DeltaFunctionCall(name="get_weather", arguments='{"ci') and delta.tool_calls is None
    text = ChatDelta(content="Hello")
    assert legacy_delta(text) is text
