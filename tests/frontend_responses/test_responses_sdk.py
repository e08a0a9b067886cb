"""The Responses API against a real tritonserver + frontend, through the official OpenAI SDK."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import openai
import pytest
from openai.types.responses import Response

from tests.frontend.conftest import MODEL_NAME
from tests.frontend_responses.conftest import plain
from tests.integration.triton_requests import scrape_metric
from tests.servers import TritonServer

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather of a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def running_requests(triton_server: TritonServer) -> float:
    with urllib.request.urlopen(triton_server.metrics_url, timeout=5) as response:
        return scrape_metric(response.read().decode(), "llm_num_requests_running")


def engine_goes_idle(triton_server: TritonServer, seconds: float = 10.0) -> bool:
    """Whether the engine is running no request within `seconds`."""
    deadline = time.monotonic() + seconds
    while running_requests(triton_server) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return running_requests(triton_server) == 0


def start_long_background(creator: openai.OpenAI, follower: openai.OpenAI) -> tuple[str, Any]:
    """A background response of up to 2,000 tokens made on `creator`, and `follower`'s stream of it once
    a first text delta has come. Greedy: SmolLM2 then writes all 2,000 tokens, where a sampled story ended
    after as few as 81 (in 1 of 7 tries), sometimes before a cancel from another replica reached it."""
    long = creator.responses.create(
        model=MODEL_NAME,
        input="Tell me a very long story.",
        max_output_tokens=2000,
        temperature=0,
        background=True,
    )
    stream = follower.responses.retrieve(long.id, stream=True)
    for event in stream:
        if event.type == "response.output_text.delta":
            break
    return long.id, stream


def test_create_retrieve_and_input_items(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=MODEL_NAME,
        instructions="Answer in one word.",
        input=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]},
            {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
        ],
        max_output_tokens=8,
        temperature=0,
        top_p=0.9,
        metadata={"k": "v"},
        user="u-1",
        service_tier="default",
        prompt_cache_key="tenant-a",
        truncation="disabled",
    )
    # Strict validation (the SDK itself constructs leniently).
    response = Response.model_validate(json.loads(raw.text))
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.metadata == {"k": "v"} and response.instructions == "Answer in one word."
    assert response.service_tier == "default" and response.prompt_cache_key == "tenant-a"
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and 0 < usage.output_tokens <= 8
    assert plain(client.responses.retrieve(response.id)) == plain(response)

    first = client.responses.input_items.list(response.id, order="asc", limit=2)
    assert [item.type for item in first.data] == ["message", "message"] and first.has_more
    rest = client.responses.input_items.list(response.id, order="asc", after=first.data[-1].id)
    assert len(rest.data) == 1 and not rest.has_more
    before = client.responses.input_items.list(
        response.id, order="asc", extra_query={"before": rest.data[0].id}
    )
    assert [item.id for item in before.data] == [item.id for item in first.data] and not before.has_more
    newest = client.responses.input_items.list(response.id)
    assert newest.data[0].id == rest.data[0].id


def test_stream_final_response_equals_the_retrieved_one(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL_NAME, input=QUESTION, max_output_tokens=12, temperature=0
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    assert events[-1].type in ("response.completed", "response.incomplete")
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text and text == final.output_text
    assert plain(client.responses.retrieve(final.id)) == plain(final)
    whole = client.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=12, temperature=0)
    assert whole.output_text == text


def test_message_logprobs(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL_NAME,
        input=QUESTION,
        max_output_tokens=4,
        temperature=0,
        top_logprobs=2,
        include=["message.output_text.logprobs"],
    )
    assert response.status == "incomplete" and response.usage is not None
    [part] = response.output[0].content  # type: ignore[union-attr]
    assert part.type == "output_text" and part.logprobs is not None
    assert len(part.logprobs) == response.usage.output_tokens == 4
    assert "".join(entry.token for entry in part.logprobs) == part.text
    assert all(len(entry.top_logprobs) == 2 and entry.logprob <= 0 for entry in part.logprobs)


def test_delete_and_store_false(client: openai.OpenAI) -> None:
    kept = client.responses.create(model=MODEL_NAME, input="Hi", max_output_tokens=2)
    assert client.responses.delete(kept.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    unstored = client.responses.create(model=MODEL_NAME, input="Hi", max_output_tokens=2, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError, match="store=false"):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL_NAME, input="More", previous_response_id=unstored.id)
    assert caught.value.param == "previous_response_id"


def test_unsupported_inputs_are_400s_naming_them(client: openai.OpenAI) -> None:
    cases: list[tuple[dict, str]] = [
        ({"tools": [{"type": "web_search"}]}, "tools.0"),
        ({"include": ["reasoning.encrypted_content"]}, "include.0"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
        ({"background": True, "store": False}, "background"),
        ({"tools": [WEATHER_TOOL]}, "tool_choice"),  # "auto" needs a tool-call parser on this server
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(**{"model": MODEL_NAME, "input": "Hi", "max_output_tokens": 2, **extra})
        assert (caught.value.param or "").startswith(param), (extra, caught.value.param)


def test_background_resume_and_cancel(client: openai.OpenAI, triton_server: TritonServer) -> None:
    short = client.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=6, background=True)
    assert short.status == "queued" and short.background
    resumed = list(client.responses.retrieve(short.id, stream=True, starting_after=1))
    assert resumed[0].sequence_number == 2 and resumed[-1].type in (
        "response.completed",
        "response.incomplete",
    )
    done = client.responses.retrieve(short.id)
    text = "".join(event.delta for event in resumed if event.type == "response.output_text.delta")
    assert done.status in ("completed", "incomplete") and text == done.output_text

    streamed = list(
        client.responses.create(
            model=MODEL_NAME, input=QUESTION, max_output_tokens=6, background=True, stream=True
        )
    )
    assert streamed[0].type == "response.created" and streamed[0].response.status == "queued"
    assert [event.sequence_number for event in streamed] == list(range(len(streamed)))
    assert streamed[-1].type in ("response.completed", "response.incomplete")

    long_id, stream = start_long_background(client, client)
    cancelled = client.responses.cancel(long_id)
    stream.close()
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(long_id).status == "cancelled"
    # The engine stopped generating it (the Triton stream was cancelled and the request aborted).
    assert engine_goes_idle(triton_server)
    foreground = client.responses.create(model=MODEL_NAME, input="Hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError, match="background"):
        client.responses.cancel(foreground.id)


def test_function_tool_loop(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL_NAME,
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=40,
        temperature=0,
    ) as stream:
        events = list(stream)
        first = stream.get_final_response()
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather", first.output
    streamed = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert streamed == calls[0].arguments
    arguments = json.loads(calls[0].arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    assert plain(client.responses.retrieve(first.id)) == plain(first)

    second = client.responses.create(
        model=MODEL_NAME,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=8,
    )
    assert second.previous_response_id == first.id and second.output_text
    [listed] = client.responses.input_items.list(second.id).data
    assert listed.type == "function_call_output" and listed.call_id == calls[0].call_id

    # Stateless, as OpenAI's guide does it: the output items go back in as input, SDK objects and all.
    stateless = client.responses.create(
        model=MODEL_NAME,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            *first.output,  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"},
        ],
        max_output_tokens=8,
        store=False,
    )
    assert stateless.output_text

    # Our extension: the same continuation in one call, by call id (the README's example).
    continued = client.post(
        f"/responses/{first.id}/tool_outputs",
        cast_to=Response,
        body={"tool_outputs": [{"tool_call_id": calls[0].call_id, "output": "sunny, 21 C"}]},
    )
    assert continued.previous_response_id == first.id and continued.tool_choice == "none"
    assert continued.output_text and continued.tools[0].name == "get_weather"
    with pytest.raises(openai.BadRequestError) as caught:
        client.post(
            f"/responses/{first.id}/tool_outputs",
            cast_to=Response,
            body={"tool_outputs": [{"call_id": "call_unknown", "output": "x"}]},
        )
    assert caught.value.param == "tool_outputs.0"
