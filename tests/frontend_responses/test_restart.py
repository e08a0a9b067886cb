"""Stored responses outlive the frontend process: a restarted frontend retrieves and continues them.

The frontends here also parse tools and reasoning (hermes, qwen3). A greedy small model continues a
repeated pattern faithfully, so after three assistant turns of `<think>...</think><tool_call>...</tool_call>`
it answers the same way, which must come back as a reasoning item and a function_call item."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.frontend.conftest import MODEL_NAME, PARSING_ARGS
from tests.frontend_responses.conftest import plain
from tests.servers import FrontendServer, TritonServer, start_frontend

pytestmark = pytest.mark.slow

BLOCK = (
    '<think>look it up</think><tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
)
ASK = {"role": "user", "content": "Weather in Paris?"}
FEW_SHOT = [ASK, {"role": "assistant", "content": BLOCK}] * 3 + [ASK]
TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def start_frontend_with_store(
    model_path: Path, triton: TritonServer, store_url: str, log_dir: Path, log_name: str
) -> tuple[FrontendServer, openai.OpenAI]:
    frontend = start_frontend(
        model_path,
        triton,
        log_dir,
        api_key=None,
        extra_args=("--response-store", store_url, *PARSING_ARGS),
        log_name=log_name,
    )
    return frontend, openai.OpenAI(base_url=frontend.base_url, api_key="none", max_retries=0)


def test_restart_keeps_responses_retrievable_and_continuable(
    model_path: Path, triton_server: TritonServer, tmp_path: Path
) -> None:
    store_url = f"sqlite:///{tmp_path / 'responses.db'}"
    frontend, client = start_frontend_with_store(model_path, triton_server, store_url, tmp_path, "first.log")
    try:
        simple = client.responses.create(model=MODEL_NAME, input="Name a color.", max_output_tokens=4)
        items = client.responses.input_items.list(simple.id)
        with client.responses.stream(
            model=MODEL_NAME,
            input=FEW_SHOT,  # type: ignore[arg-type]
            tools=[TOOL],  # type: ignore[list-item]
            max_output_tokens=40,
            temperature=0,
        ) as stream:
            reasoning = "".join(e.delta for e in stream if e.type == "response.reasoning_text.delta")
            called = stream.get_final_response()
        # Still generating at shutdown: stored as cancelled, its Triton request cancelled.
        pending = client.responses.create(
            model=MODEL_NAME, input="Tell me a very long story.", max_output_tokens=2000, background=True
        )
        with client.responses.retrieve(pending.id, stream=True) as following:
            next(event for event in following if event.type == "response.output_text.delta")
    finally:
        frontend.process.stop()
    kinds = [item.type for item in called.output]
    assert kinds[:2] == ["reasoning", "function_call"], called.output
    assert reasoning == "look it up"
    assert called.output[0].content[0].text == reasoning  # type: ignore[union-attr]
    call = called.output[1]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}
    assert called.usage is not None and called.usage.output_tokens_details.reasoning_tokens > 0

    frontend, client = start_frontend_with_store(model_path, triton_server, store_url, tmp_path, "second.log")
    try:
        assert client.responses.retrieve(simple.id).model_dump() == simple.model_dump()
        assert client.responses.input_items.list(simple.id).model_dump() == items.model_dump()
        assert plain(client.responses.retrieve(called.id)) == plain(called)
        assert client.responses.retrieve(pending.id).status == "cancelled"
        replayed = list(client.responses.retrieve(pending.id, stream=True))
        assert replayed[0].type == "response.created"
        assert any(event.type == "response.output_text.delta" for event in replayed)
        answer = client.responses.create(
            model=MODEL_NAME,
            previous_response_id=called.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
            max_output_tokens=4,
        )
        assert answer.status in ("completed", "incomplete") and answer.previous_response_id == called.id
    finally:
        frontend.process.stop()
