"""Request -> prompt and engine parameters, in-process with the real tokenizer (no servers)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from frontend.errors import APIError
from frontend.metrics import FrontendMetrics
from frontend.protocol.responses import ResponsesRequest, TextFormat
from frontend.serving.context import ServingContext, unix_now
from frontend.serving.responses_input import PreparedResponse, ResponseInputBuilder
from frontend.serving.responses_tools import CallArrayParser, NamedCallParser
from frontend.templating import ChatTemplater
from frontend.triton_client import TritonClient
from tests.frontend.conftest import MODEL_NAME, offline_config

TOOLS = [
    {
        "type": "function",
        "name": "a",
        "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}},
    },
    {"type": "function", "name": "b"},
]


@pytest.fixture(scope="module")
def builder(model_path: Path) -> ResponseInputBuilder:
    config = offline_config(model_path, max_model_len=96)
    ctx = ServingContext(
        config=config,
        triton=TritonClient(config.triton_url, config.triton_model),
        templater=ChatTemplater(model_path),
        metrics=FrontendMetrics(),
        started=unix_now(),
    )
    return ResponseInputBuilder(ctx)


def prepare(builder: ResponseInputBuilder, **body: Any) -> PreparedResponse:
    request = ResponsesRequest.model_validate({"model": MODEL_NAME, "input": "Hi", **body})
    return asyncio.run(builder.prepare(request, [], "resp_test"))


def prompt_text(builder: ResponseInputBuilder, prepared: PreparedResponse) -> str:
    return builder.ctx.templater.decode(prepared.generation.prompt_token_ids)


def refusal(builder: ResponseInputBuilder, **body: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        prepare(builder, **body)
    return caught.value


def test_instructions_lead_and_text_becomes_input_text(builder: ResponseInputBuilder) -> None:
    prepared = prepare(builder, instructions="Be brief.", max_output_tokens=5, prompt_cache_key="k")
    prompt = prompt_text(builder, prepared)
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "user\nHi" in prompt
    assert prepared.generation.cache_salt == "k" and prepared.generation.max_tokens == 5
    [item] = prepared.input_items
    assert item.id and item.model_dump()["content"] == [{"type": "input_text", "text": "Hi"}]


def test_forced_tool_choices_constrain_the_output(builder: ResponseInputBuilder) -> None:
    required = prepare(builder, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    schema = required.params.sampling["structured_outputs"]["json"]
    assert schema["maxItems"] == 1 and len(schema["items"]["anyOf"]) == 2
    assert required.params.origins["structured_outputs"] == "tool_choice"
    assert required.tool_parser is CallArrayParser and required.max_calls == 1
    named = prepare(builder, tools=TOOLS, tool_choice={"type": "function", "name": "a"})
    assert named.params.sampling["structured_outputs"] == {"json": TOOLS[0]["parameters"]}
    assert named.tool_parser is not None and isinstance(named.tool_parser(), NamedCallParser)
    assert prepare(builder, tools=TOOLS, tool_choice="none").tool_parser is None


def test_text_formats_and_logprobs(builder: ResponseInputBuilder) -> None:
    schema = {"type": "object"}
    fmt = {"format": {"type": "json_schema", "name": "n", "schema": schema}}
    assert prepare(builder, text=fmt).params.sampling["structured_outputs"] == {"json": schema}
    # A response echoes its format as OpenAI spells it (the SDK reads `schema`).
    echoed = TextFormat.model_validate(fmt["format"]).model_dump(mode="json")
    assert echoed["schema"] == schema and "schema_" not in echoed
    json_object = prepare(builder, text={"format": {"type": "json_object"}})
    assert json_object.params.sampling["structured_outputs"] == {"json_object": True}
    logprobs = prepare(builder, include=["message.output_text.logprobs"])
    assert logprobs.params.sampling["logprobs"] == 0 and logprobs.logprobs == 0


def test_refusals_name_the_parameter(builder: ResponseInputBuilder) -> None:
    assert refusal(builder, tools=TOOLS).param == "tool_choice"  # auto needs a tool-call parser
    assert (
        refusal(builder, tool_choice={"type": "function", "name": "zz"}, tools=TOOLS).param == "tool_choice"
    )
    assert refusal(builder, include=["file_search_call.results"]).param == "include.0"
    assert refusal(builder, model="other").status == 404
    assert refusal(builder, input=[]).param == "input"
    forced = {"tools": TOOLS, "tool_choice": "required", "text": {"format": {"type": "json_object"}}}
    assert refusal(builder, **forced).param == "text"


def test_truncation_auto_drops_the_oldest_turns(builder: ResponseInputBuilder) -> None:
    turns = [{"role": "user", "content": f"Turn {index}: " + "word " * 12} for index in range(6)]
    error = refusal(builder, input=turns, max_output_tokens=8)
    assert error.code == "context_length_exceeded" and error.param == "input"
    prepared = prepare(builder, input=turns, max_output_tokens=8, truncation="auto")
    prompt = prompt_text(builder, prepared)
    assert "Turn 5" in prompt and "Turn 0" not in prompt
    assert len(prepared.generation.prompt_token_ids) + 8 <= 96
