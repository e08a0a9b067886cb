"""Output items and stream events, checked against the official SDK's own types and stream accumulator."""

from __future__ import annotations

import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response_stream_event import ResponseStreamEvent as EventUnion
from pydantic import TypeAdapter

from frontend.errors import bad_request
from frontend.protocol.chat import ChatDelta, DeltaFunctionCall, DeltaToolCall
from frontend.protocol.responses import (
    ITEM,
    InputTokensDetails,
    OutputTokensDetails,
    ResponseObject,
    ResponseUsage,
)
from frontend.protocol.responses_stream import (
    StreamEvent,
)
from frontend.serving.responses_events import ResponseEvents
from frontend.serving.responses_input import conversation_messages
from tests.frontend_responses.conftest import plain

EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(EventUnion)
USAGE = ResponseUsage(
    input_tokens=5,
    input_tokens_details=InputTokensDetails(),
    output_tokens=7,
    output_tokens_details=OutputTokensDetails(reasoning_tokens=2),
    total_tokens=12,
)


def call(
    index: int, name: str | None = None, arguments: str | None = None, id: str | None = None
) -> ChatDelta:
    piece = DeltaToolCall(index=index, id=id, function=DeltaFunctionCall(name=name, arguments=arguments))
    return ChatDelta(tool_calls=[piece])


def run(
    deltas: list[ChatDelta], max_calls: int | None = None, finish: str = "stop"
) -> tuple[list[dict], dict]:
    events = ResponseEvents(
        ResponseObject(id="resp_x", created_at=1, status="in_progress", model="m"), max_calls
    )
    emitted: list[StreamEvent] = [events.lifecycle("created"), events.lifecycle("in_progress")]
    for delta in deltas:
        emitted += events.feed(delta)
    emitted += events.finish(finish, USAGE)
    return [event.model_dump(mode="json") for event in emitted], events.response.model_dump(mode="json")


def replay(raw_events: list[dict]) -> Response:
    """What `client.responses.stream(...).get_final_response()` makes of these events."""
    state: ResponseStreamState = ResponseStreamState(input_tools=omit, text_format=omit)
    for raw in raw_events:
        state.handle_event(EVENTS.validate_python(raw))
    final = state._completed_response
    assert final is not None
    return final


def test_reasoning_text_and_calls_stream_as_openai_does() -> None:
    raw_events, body = run(
        [
            ChatDelta(reasoning_content="think "),
            ChatDelta(reasoning_content="hard"),
            ChatDelta(content="Hello"),
            ChatDelta(content=" world"),
            call(0, name="get_weather", id="call_a"),
            call(0, arguments='{"city": '),
            call(0, arguments='"Paris"}'),
            call(1, name="get_time", id="call_b", arguments="{}"),
        ]
    )
    assert [event["sequence_number"] for event in raw_events] == list(range(len(raw_events)))
    types = [event["type"] for event in raw_events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-1] == "response.completed"
    for name in (
        "reasoning_text.delta",
        "output_text.done",
        "content_part.done",
        "function_call_arguments.done",
    ):
        assert f"response.{name}" in types
    response = Response.model_validate(body)
    assert [item.type for item in response.output] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    assert response.output_text == "Hello world" and response.usage is not None
    first_call = response.output[2]
    assert first_call.type == "function_call" and first_call.arguments == '{"city": "Paris"}'
    assert first_call.call_id == "call_a" and first_call.status == "completed"
    assert plain(replay(raw_events)) == plain(response)


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    _, body = run([call(0, "a", "{}", "call_a"), call(1, "b", "{}", "call_b")], max_calls=1)
    assert [item["name"] for item in body["output"]] == ["a"]


def test_length_limit_makes_the_response_incomplete() -> None:
    raw_events, body = run([ChatDelta(content="cut")], finish="length")
    assert raw_events[-1]["type"] == "response.incomplete"
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete"
    Response.model_validate(body)


def test_failure_emits_error_then_failed() -> None:
    events = ResponseEvents(ResponseObject(id="resp_y", created_at=1, status="in_progress", model="m"), None)
    events.feed(ChatDelta(content="partial"))
    raw = [event.model_dump(mode="json") for event in events.fail(bad_request("bad", param="input"))]
    assert [event["type"] for event in raw][-2:] == ["error", "response.failed"]
    for event in raw:
        EVENTS.validate_python(event)
    assert raw[-1]["response"]["error"]["message"] == "bad"


@pytest.mark.parametrize("with_reasoning", [False, True])
def test_conversation_folds_an_assistant_turn(with_reasoning: bool) -> None:
    raw = [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        *([{"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "hm"}]}]
          if with_reasoning else []),
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": "noon"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Sunny at noon."}]},
        {"role": "user", "content": "Thanks"},
    ]  # fmt: skip
    messages = conversation_messages([ITEM.validate_python(item) for item in raw])
    assert [message.role for message in messages] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
    ]
    turn = messages[1]
    assert [call.id for call in turn.tool_calls or []] == ["c1", "c2"]
    assert turn.reasoning_content == ("hm" if with_reasoning else None)
    assert messages[2].tool_call_id == "c1" and messages[4].content == "Sunny at noon."
