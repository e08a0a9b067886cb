"""/v1/chat/completions: template the messages, run them through Triton, shape the answer or the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from frontend.errors import bad_request
from frontend.protocol.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    NamedToolChoice,
)
from frontend.protocol.usage import UsageInfo
from frontend.reasoning import reasoning_parser
from frontend.serving.chat_output import ChatOutputProcessor
from frontend.serving.context import ServingContext, unix_now
from frontend.serving.engine_params import EngineParameters, api_error, engine_parameters
from frontend.serving.generation import Generation, chunks, collect, start_generation
from frontend.serving.sse import DONE, error_frame, frame
from frontend.templating import TemplateError
from frontend.tool_parsers import NEEDS_SPECIAL_TOKENS, TOOL_PARSERS
from frontend.triton_client import GenerationChunk, GenerationInput, TritonError

ENDPOINT = "/v1/chat/completions"


@dataclass
class PreparedChat:
    """A validated chat request, ready for Triton."""

    # The served model name to answer with.
    model: str
    # What goes to the ensemble.
    generation: GenerationInput
    # The sampling JSON and where each entry came from (for error messages).
    params: EngineParameters
    # Parse tool calls out of the output (tools offered and tool_choice allows them).
    parse_tools: bool


class ChatHandler:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def create(
        self, request: ChatCompletionRequest, request_id: str
    ) -> ChatCompletionResponse | AsyncIterator[str]:
        """The response model, or (stream=true) the SSE frames of a stream whose first response arrived."""
        prepared = await self._prepare(request, request_id)
        generation = await start_generation(
            self.ctx, prepared.generation, prepared.params, "messages", ENDPOINT
        )
        if request.stream:
            return self._stream(request, prepared, generation, request_id)
        try:
            text, last = await collect(self.ctx, generation)
        except TritonError as error:
            raise api_error(error, prepared.params, "messages") from None
        output = self._output_processor(prepared)
        message = output.message(self.ctx.config.response_role, text)
        return ChatCompletionResponse(
            id=request_id,
            created=unix_now(),
            model=prepared.model,
            choices=[
                ChatChoice(index=0, message=message, finish_reason=_finish(last, output.saw_tool_calls))
            ],
            usage=_usage(last),
            system_fingerprint=self.ctx.system_fingerprint,
            service_tier=request.service_tier,
        )

    async def _prepare(self, request: ChatCompletionRequest, request_id: str) -> PreparedChat:
        config = self.ctx.config
        model = self.ctx.check_model(request.model)
        if request.stream_options is not None and not request.stream:
            raise bad_request("stream_options is only allowed with stream=true", param="stream_options")
        if request.parallel_tool_calls is False:
            raise bad_request("parallel_tool_calls=false is not supported", param="parallel_tool_calls")
        params = engine_parameters(request)
        parse_tools = self._tool_mode(request, params)
        if request.response_format is not None and request.response_format.type != "text":
            schema = (request.response_format.json_schema or {}).get("schema", {})
            structured = (
                {"json_object": True} if request.response_format.type == "json_object" else {"json": schema}
            )
            params.set("structured_outputs", structured, origin="response_format")
        if request.logprobs:
            params.set("logprobs", request.top_logprobs or 0)
        if parse_tools and config.tool_call_parser in NEEDS_SPECIAL_TOKENS:
            params.set("skip_special_tokens", False)
        try:
            prompt = await asyncio.to_thread(
                self.ctx.templater.render,
                request.messages,
                request.tools,
                request.add_generation_prompt,
                request.continue_final_message,
                request.chat_template,
                request.chat_template_kwargs,
            )
        except TemplateError as error:
            raise bad_request(str(error), param="messages") from None
        max_tokens = request.output_token_limit()
        await self._check_length(prompt, max_tokens)
        generation = GenerationInput(
            prompt=prompt,
            # Always streamed from Triton, even for non-streamed HTTP answers: Triton notices a cancelled
            # gRPC stream only when it has a response to send, so only a token-by-token stream is
            # cancelled promptly when the HTTP client leaves.
            stream=True,
            add_special_tokens=False,
            max_tokens=max_tokens,
            sampling=params.sampling,
            priority=request.priority,
            cache_salt=request.cache_salt,
            request_id=request_id,
        )
        return PreparedChat(model, generation, params, parse_tools)

    def _tool_mode(self, request: ChatCompletionRequest, params: EngineParameters) -> bool:
        """Whether to parse tool calls; forces the call through structured outputs for required/named."""
        choice = request.tool_choice
        if not request.tools:
            if choice is not None and choice != "none":
                raise bad_request("tool_choice needs tools", param="tool_choice")
            return False
        if choice == "none":
            return False
        if choice in (None, "auto"):
            if not (self.ctx.config.enable_auto_tool_choice and self.ctx.config.tool_call_parser):
                raise bad_request(
                    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser',
                    param="tool_choice",
                )
            return True
        names = [tool.function.name for tool in request.tools]
        if isinstance(choice, NamedToolChoice):
            if choice.function.name not in names:
                raise bad_request(
                    f"tool_choice names unknown function {choice.function.name!r}", "tool_choice"
                )
            tool = request.tools[names.index(choice.function.name)]
            schema = tool.function.parameters or {"type": "object"}
        else:
            schema = {"type": "array", "minItems": 1, "items": {"type": "object"}}
        params.set("structured_outputs", {"json": schema}, origin="tool_choice")
        return self.ctx.config.tool_call_parser is not None

    async def _check_length(self, prompt: str, max_tokens: int | None) -> None:
        limit = self.ctx.config.max_model_len
        if limit is None:
            return
        count = len(await asyncio.to_thread(self.ctx.templater.encode, prompt, False))
        if count >= limit or (max_tokens is not None and count + max_tokens > limit):
            raise bad_request(
                f"This model's maximum context length is {limit} tokens; the messages have {count} tokens"
                + (f" and max_tokens is {max_tokens}" if max_tokens is not None else "")
                + " (max_model_len).",
                param="messages",
                code="context_length_exceeded",
            )

    def _output_processor(self, prepared: PreparedChat) -> ChatOutputProcessor:
        config = self.ctx.config
        reasoning = reasoning_parser(config.reasoning_parser) if config.reasoning_parser else None
        tools = None
        if prepared.parse_tools and config.tool_call_parser:
            tools = TOOL_PARSERS[config.tool_call_parser]()
        return ChatOutputProcessor(reasoning, tools)

    async def _stream(
        self, request: ChatCompletionRequest, prepared: PreparedChat, generation: Generation, request_id: str
    ) -> AsyncIterator[str]:
        created = unix_now()
        options = request.stream_options
        include_usage = options is not None and options.include_usage
        continuous = options is not None and options.continuous_usage_stats

        def chunk(delta: ChatDelta, finish: str | None = None, usage: UsageInfo | None = None) -> str:
            body = ChatCompletionChunk(
                id=request_id,
                created=created,
                model=prepared.model,
                choices=[ChatChunkChoice(index=0, delta=delta, finish_reason=finish)],
                usage=usage,
                system_fingerprint=self.ctx.system_fingerprint,
                service_tier=request.service_tier,
            )
            return frame(body)

        output = self._output_processor(prepared)
        last: GenerationChunk = generation.first
        try:
            yield chunk(ChatDelta(role=self.ctx.config.response_role, content=""))
            # aclosing: if the client leaves while a frame is being sent, the Triton request ends now, not at GC.
            async with aclosing(chunks(self.ctx, generation)) as responses:
                async for response in responses:
                    last = response
                    delta = output.feed(response.text) if response.text else None
                    if delta is not None:
                        yield chunk(delta, usage=_usage(response) if continuous else None)
            tail = output.finish()
            if tail is not None:
                yield chunk(tail)
            yield chunk(
                ChatDelta(), _finish(last, output.saw_tool_calls), _usage(last) if continuous else None
            )
            if include_usage:
                usage_chunk = ChatCompletionChunk(
                    id=request_id,
                    created=created,
                    model=prepared.model,
                    choices=[],
                    usage=_usage(last),
                    system_fingerprint=self.ctx.system_fingerprint,
                    service_tier=request.service_tier,
                )
                yield frame(usage_chunk)
        except TritonError as error:
            yield error_frame(api_error(error, prepared.params, "messages"))
        yield DONE


def _usage(chunk: GenerationChunk) -> UsageInfo:
    return UsageInfo.of(chunk.num_input_tokens, chunk.num_output_tokens, chunk.num_cached_tokens)


def _finish(chunk: GenerationChunk, saw_tool_calls: bool) -> str | None:
    if saw_tool_calls and chunk.finish_reason == "stop":
        return "tool_calls"
    return chunk.finish_reason
