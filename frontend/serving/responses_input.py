"""A Responses request -> the chat messages, the templated prompt and the engine model request.

The conversation is the stored history of `previous_response_id` (its inputs and outputs, recursively)
followed by this request's items; `instructions` lead as a system message and are never inherited. Items
map onto chat messages the way the chat template expects them: reasoning and function calls fold into one
assistant message, function outputs become `tool` messages. Prompt templating is the chat path's own
(`ChatTemplater`), so a conversation renders identically through either API.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from frontend.errors import bad_request
from frontend.generation_defaults import SAMPLING_FIELDS
from frontend.protocol.chat import ChatMessage, ChatTool, FunctionCall, FunctionDefinition, ToolCall
from frontend.protocol.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolChoice,
    InputText,
    Item,
    MessageItem,
    OutputText,
    ReasoningItem,
    ResponseObject,
    ResponsesRequest,
    TextConfig,
)
from frontend.reasoning import effort_template_kwargs
from frontend.serving.context import ServingContext, unix_now
from frontend.serving.engine_params import EngineParameters, max_tokens_or_default
from frontend.serving.responses_tools import tool_mode
from frontend.templating import ChatPrompt, TemplateError
from frontend.tool_parsers import NEEDS_SPECIAL_TOKENS, ToolParser
from frontend.triton_client import GenerationInput

# `include` values this server can honour; OpenAI's others name tools or inputs it does not have.
SUPPORTED_INCLUDES = frozenset({"message.output_text.logprobs"})
_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def new_item_id(kind: str) -> str:
    return f"{_ID_PREFIX[kind]}_{uuid.uuid4().hex}"


def with_ids(items: list[Item]) -> list[Item]:
    """Input items as stored and listed: every one with an id, a status, and messages with content parts."""
    normalized = []
    for item in items:
        update: dict[str, Any] = {
            "id": item.id or new_item_id(item.type),
            "status": item.status or "completed",
        }
        if isinstance(item, MessageItem) and isinstance(item.content, str):
            part = OutputText(text=item.content) if item.role == "assistant" else InputText(text=item.content)
            update["content"] = [part]
        normalized.append(item.model_copy(update=update))
    return normalized


@dataclass
class PreparedResponse:
    """A validated Responses request, ready for Triton."""

    # What goes to the engine model.
    generation: GenerationInput
    # The sampling JSON and where each entry came from (for error messages).
    params: EngineParameters
    # Tool-call parser of the output; None when tools cannot be called.
    tool_parser: Callable[[], ToolParser] | None
    # Function calls kept from the output at most (parallel_tool_calls=false, max_tool_calls); None: all.
    max_calls: int | None
    # Top alternatives per token when message logprobs were asked for (0: the sampled token only), else None.
    logprobs: int | None
    # Split `<think>` reasoning off (a parser is configured and no grammar constrains the output from its
    # first token, which leaves no room for reasoning).
    parse_reasoning: bool
    # This request's input items with ids: stored, and listed by /input_items.
    input_items: list[Item]
    # The response object before any output (status in_progress).
    response: ResponseObject


def conversation_messages(items: list[Item]) -> list[ChatMessage]:
    """Conversation items -> chat messages; consecutive reasoning, assistant text and function calls form
    one assistant turn."""
    messages: list[ChatMessage] = []
    turn: ChatMessage | None = None
    for item in items:
        if isinstance(item, MessageItem) and item.role != "assistant":
            turn = None
            messages.append(ChatMessage(role=item.role, content=item.text()))
        elif isinstance(item, FunctionCallOutputItem):
            turn = None
            messages.append(ChatMessage(role="tool", content=item.text(), tool_call_id=item.call_id))
        else:
            # An assistant turn ends where reasoning or text would follow its calls or its own text.
            if turn is None or (not isinstance(item, FunctionCallItem) and (turn.tool_calls or turn.content)):
                turn = ChatMessage(role="assistant", content="")
                messages.append(turn)
            if isinstance(item, ReasoningItem):
                turn.reasoning_content = (turn.reasoning_content or "") + item.text()
            elif isinstance(item, FunctionCallItem):
                call = ToolCall(
                    id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments)
                )
                turn.tool_calls = [*(turn.tool_calls or []), call]
            else:
                turn.content = item.text()
    return messages


def _structured_format(text: TextConfig | None) -> dict[str, Any] | None:
    if text is None or text.format.type == "text":
        return None
    if text.format.type == "json_object":
        return {"json_object": True}
    return {"json": text.format.schema_}


def _check_includes(include: list[str] | None) -> None:
    for index, value in enumerate(include or []):
        if value == "reasoning.encrypted_content":
            raise bad_request(
                "include reasoning.encrypted_content is not supported: this server keeps reasoning in the "
                "clear; use store=true and previous_response_id, or send reasoning items back",
                param=f"include.{index}",
            )
        if value not in SUPPORTED_INCLUDES:
            raise bad_request(
                f"include {value!r} is not supported (supported: {', '.join(sorted(SUPPORTED_INCLUDES))})",
                param=f"include.{index}",
            )


class ResponseInputBuilder:
    """Validates a request against the server's configuration and turns it into a prepared generation."""

    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def prepare(
        self, request: ResponsesRequest, history: list[Item], response_id: str
    ) -> PreparedResponse:
        config = self.ctx.config
        served = await self.ctx.resolve_model(request.model)
        _check_includes(request.include)
        if not request.input and not history:
            raise bad_request("input is required (and must not be empty)", param="input")
        given = request.input or []
        items = with_ids([MessageItem(role="user", content=given)] if isinstance(given, str) else given)
        tools = request.tools or []
        choice: Literal["none", "auto", "required"] | FunctionToolChoice = request.tool_choice or "auto"
        max_calls = request.max_tool_calls
        if request.parallel_tool_calls is False:
            max_calls = min(max_calls, 1) if max_calls is not None else 1
        parser, forced = tool_mode(
            tools, choice, max_calls, config.tool_call_parser, config.enable_auto_tool_choice
        )
        params = EngineParameters()
        for name in SAMPLING_FIELDS:
            # The request has temperature and top_p; the generation config may set any.
            value = getattr(request, name, None)
            if value is None:
                value = config.sampling_defaults.get(name)
            if value is not None:
                params.set(name, value)
        structured = _structured_format(request.text)
        if structured is not None and forced is not None:
            raise bad_request(
                "text.format cannot constrain output that a forced tool call constrains", "text"
            )
        if structured is not None or forced is not None:
            params.set(
                "structured_outputs",
                structured or forced,
                origin="text.format" if structured else "tool_choice",
            )
        logprobs = None
        if request.top_logprobs is not None or "message.output_text.logprobs" in (request.include or []):
            logprobs = request.top_logprobs or 0
            params.set("logprobs", logprobs, origin="top_logprobs")
        if parser is not None and forced is None and config.tool_call_parser in NEEDS_SPECIAL_TOKENS:
            params.set("skip_special_tokens", False)
        messages = conversation_messages(history + items)
        if request.instructions:
            messages.insert(0, ChatMessage(role="system", content=request.instructions))
        prompt = await self._render(request, messages, tools)
        response = ResponseObject(
            id=response_id,
            created_at=unix_now(),
            status="in_progress",
            instructions=request.instructions,
            model=served.name,
            parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=request.previous_response_id,
            conversation=request.conversation_reference(),
            max_output_tokens=request.max_output_tokens,
            max_tool_calls=request.max_tool_calls,
            reasoning=request.reasoning,
            service_tier=request.service_tier,
            store=request.store,
            background=request.background,
            # The values used: the request's, else the generation config's (as vLLM reports them).
            temperature=params.sampling.get("temperature"),
            top_p=params.sampling.get("top_p"),
            top_logprobs=request.top_logprobs,
            text=request.text or TextConfig(),
            tool_choice=choice,
            tools=tools,
            truncation=request.truncation or "disabled",
            user=request.user,
            safety_identifier=request.safety_identifier,
            metadata=request.metadata or {},
            prompt_cache_key=request.prompt_cache_key,
            prompt_cache_retention=request.prompt_cache_retention,
        )
        generation = GenerationInput(
            prompt_token_ids=prompt.token_ids,
            # Streamed from Triton even for non-streamed answers, so a cancel stops the engine promptly.
            stream=True,
            max_tokens=max_tokens_or_default(
                request.max_output_tokens,
                config.sampling_defaults,
                config.max_tokens_cap,
                len(prompt.token_ids),
                None,
                await self.ctx.max_model_len(),
            ),
            sampling=params.sampling,
            cache_salt=request.prompt_cache_key,
            lora_name=served.lora_name,
            lora_path=served.lora_path,
            request_id=response_id,
        )
        parse_reasoning = config.reasoning_parser is not None and "structured_outputs" not in params.sampling
        return PreparedResponse(
            generation, params, parser, max_calls, logprobs, parse_reasoning, items, response
        )

    async def _render(
        self, request: ResponsesRequest, messages: list[ChatMessage], tools: list[Any]
    ) -> ChatPrompt:
        """The templated prompt; with truncation=auto the oldest turns are dropped until it fits."""
        chat_tools = [
            ChatTool(
                function=FunctionDefinition(
                    name=tool.name,
                    description=tool.description,
                    parameters=tool.parameters,
                    strict=tool.strict,
                )
            )
            for tool in tools
        ] or None
        effort = request.reasoning.effort if request.reasoning else None
        kwargs = effort_template_kwargs(effort, self.ctx.config.reasoning_parser)
        limit = await self.ctx.max_model_len()
        while True:
            try:
                prompt = await asyncio.to_thread(
                    self.ctx.templater.render, messages, chat_tools, True, False, None, kwargs
                )
            except TemplateError as error:
                raise bad_request(str(error), param="input") from None
            if limit is None:
                return prompt
            count = len(prompt.token_ids)
            if count < limit and count + (request.max_output_tokens or 0) <= limit:
                return prompt
            droppable = [index for index, message in enumerate(messages) if message.role != "system"]
            if request.truncation != "auto" or len(droppable) <= 1:
                raise bad_request(
                    f"This model's maximum context length is {limit} tokens; the input has {count} tokens"
                    + (
                        f" and max_output_tokens is {request.max_output_tokens}"
                        if request.max_output_tokens
                        else ""
                    )
                    + " (use truncation='auto' to drop the oldest turns).",
                    param="input",
                    code="context_length_exceeded",
                )
            # Drop the oldest turn, with the tool results that answer its calls.
            first = droppable[0]
            end = first + 1
            while end < len(messages) and messages[end].role == "tool":
                end += 1
            messages = messages[:first] + messages[end:]
