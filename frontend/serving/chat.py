"""/v1/chat/completions: template the messages, run them through Triton, shape the answer or the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from frontend.errors import APIError, bad_request
from frontend.legacy_functions import (
    FUNCTION_CALL_FINISH_REASON,
    LEGACY_NAMES,
    as_tools,
    in_legacy_terms,
    legacy_delta,
    legacy_message,
    uses_functions,
)
from frontend.protocol.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChoiceLogprobs,
    NamedToolChoice,
)
from frontend.protocol.responses import FunctionTool
from frontend.protocol.usage import UsageInfo
from frontend.reasoning import effort_template_kwargs, reasoning_parser
from frontend.serving.chat_output import ChatOutputProcessor
from frontend.serving.context import ServingContext, unix_now
from frontend.serving.engine_params import (
    EngineParameters,
    add_response_format,
    api_error,
    engine_parameters,
    kept_prompt,
    max_tokens_or_default,
    truncated_length,
)
from frontend.serving.generation import Generation, chunks, collect, start_generation
from frontend.serving.logprobs import LogprobFormatter, requested_prompt_logprobs
from frontend.serving.responses_tools import (
    ANY_OBJECT,
    CallArrayParser,
    NamedCallParser,
    auto_parser,
    call_array_schema,
)
from frontend.serving.sse import DONE, error_frame, frame
from frontend.templating import TemplateError
from frontend.tool_parsers import NEEDS_SPECIAL_TOKENS, ToolParser
from frontend.triton_client import GenerationChunk, GenerationInput, TritonError

ENDPOINT = "/v1/chat/completions"


@dataclass
class PreparedChat:
    """A validated chat request, ready for Triton."""

    # The served model name (or LoRA adapter name) to answer with.
    model: str
    # What goes to the engine model.
    generation: GenerationInput
    # The sampling JSON and where each entry came from (for error messages).
    params: EngineParameters
    # Builds the parser of tool calls in the output; None: the output is plain content.
    tool_parser: Callable[[], ToolParser] | None
    # 1 with parallel_tool_calls=false; None: every call the model writes.
    max_tool_calls: int | None
    # The prompt's token ids as the engine keeps them (after truncate_prompt_tokens), for return_token_ids.
    kept_prompt_token_ids: list[int]
    # The request asked with OpenAI's legacy functions: the call is answered as `function_call`.
    legacy_functions: bool
    # tool_choice (or function_call) named the function: the call is the answer it asked for.
    named_call: bool

    def finish_reason(self, engine_reason: str | None, saw_tool_calls: bool) -> str | None:
        """A call the model chose to make ends with "tool_calls" ("function_call" for legacy functions); a
        named call keeps "stop", as OpenAI's and vLLM's do."""
        if saw_tool_calls and engine_reason == "stop" and not self.named_call:
            return FUNCTION_CALL_FINISH_REASON if self.legacy_functions else "tool_calls"
        return engine_reason


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
            collected = await collect(self.ctx, generation)
        except TritonError as error:
            raise api_error(error, prepared.params, "messages") from None
        formatter = self._logprob_formatter(request)
        echoed = self._echoed(request)
        choices = []
        for sequence in collected.sequences:
            output = self._output_processor(prepared)
            message = output.message(self._role(request), sequence.text)
            if prepared.legacy_functions:
                message = legacy_message(message)
            if not request.include_reasoning:
                message.reasoning_content = None
            if echoed:
                message.content = echoed + (message.content or "")
            logprobs = None
            if formatter is not None:
                logprobs = formatter.chat(sequence.logprobs or [])
            finish = prepared.finish_reason(sequence.finish_reason, output.saw_tool_calls)
            choices.append(
                ChatChoice(
                    index=sequence.index,
                    message=message,
                    finish_reason=finish,
                    logprobs=logprobs,
                    stop_reason=sequence.stop_reason,
                    token_ids=sequence.token_ids if request.return_token_ids else None,
                )
            )
        return ChatCompletionResponse(
            id=request_id,
            created=unix_now(),
            model=prepared.model,
            choices=choices,
            usage=UsageInfo.of(
                collected.num_input_tokens, collected.num_output_tokens, collected.num_cached_tokens
            ),
            system_fingerprint=self.ctx.system_fingerprint,
            service_tier=request.service_tier,
            prompt_token_ids=prepared.kept_prompt_token_ids if request.return_token_ids else None,
            # Once per request: every sequence carries the same ones.
            prompt_logprobs=requested_prompt_logprobs(
                self.ctx.templater, request.prompt_logprobs, collected.sequences[0].prompt_logprobs
            ),
        )

    def _role(self, request: ChatCompletionRequest) -> str:
        """The answer's role, as vLLM gives it: the server's response role when the template opens a new turn
        for it, else the last message's, whose turn the answer continues."""
        return self.ctx.config.response_role if request.add_generation_prompt else request.messages[-1].role

    def _echoed(self, request: ChatCompletionRequest) -> str:
        """vLLM's chat echo: the last message's text (as the template saw it; vLLM joins text parts with
        newlines) when it has the answer's role."""
        last = request.messages[-1]
        return last.text() if request.echo and last.role == self._role(request) else ""

    async def _prepare(self, request: ChatCompletionRequest, request_id: str) -> PreparedChat:
        config = self.ctx.config
        served = await self.ctx.resolve_model(request.model)
        if request.stream_options is not None and not request.stream:
            raise bad_request("stream_options is only allowed with stream=true", param="stream_options")
        params = engine_parameters(request, config.sampling_defaults)
        legacy_functions = uses_functions(request)
        if legacy_functions:
            request = as_tools(request)
            try:
                tool_parser = self._tool_mode(request, params)
            except APIError as error:
                raise in_legacy_terms(error) from None
            origin = params.origins.get("structured_outputs")
            if origin in LEGACY_NAMES:
                params.origins["structured_outputs"] = LEGACY_NAMES[origin]
        else:
            tool_parser = self._tool_mode(request, params)
        add_response_format(request, params)
        if request.top_logprobs is not None and not request.logprobs:
            raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
        if request.logprobs:
            params.set("logprobs", request.top_logprobs or 0)
        try:
            prompt = await asyncio.to_thread(
                self.ctx.templater.render,
                request.messages,
                request.tools,
                request.add_generation_prompt,
                request.continue_final_message,
                request.chat_template,
                effort_template_kwargs(request.reasoning_effort, config.reasoning_parser)
                | ({"documents": request.documents} if request.documents is not None else {})
                | (request.chat_template_kwargs or {}),
            )
        except TemplateError as error:
            raise bad_request(str(error), param="messages") from None
        prompt_token_ids = (
            self.ctx.templater.with_special_tokens(prompt.token_ids) if request.add_special_tokens else prompt.token_ids
        )
        max_tokens = request.output_token_limit()
        limit = await self.ctx.max_model_len()
        self._check_length(len(prompt_token_ids), max_tokens, request.truncate_prompt_tokens, limit)
        if not request.use_beam_search:  # a beam search sizes itself (beam_search_settings)
            max_tokens = max_tokens_or_default(
                max_tokens,
                config.sampling_defaults,
                config.max_tokens_cap,
                len(prompt_token_ids),
                request.truncate_prompt_tokens,
                limit,
            )
        generation = GenerationInput(
            prompt_token_ids=prompt_token_ids,
            # Always streamed from Triton, even for non-streamed HTTP answers: Triton notices a cancelled
            # gRPC stream only when it has a response to send, so only a token-by-token stream is
            # cancelled promptly when the HTTP client leaves.
            stream=True,
            max_tokens=max_tokens,
            sampling=params.sampling,
            priority=request.priority,
            cache_salt=request.cache_salt if request.cache_salt is not None else request.prompt_cache_key,
            lora_name=served.lora_name,
            lora_path=served.lora_path,
            request_id=request_id,
        )
        max_tool_calls = 1 if request.parallel_tool_calls is False else None
        kept = kept_prompt(prompt_token_ids, request.truncate_prompt_tokens, limit)
        named_call = isinstance(request.tool_choice, NamedToolChoice)
        return PreparedChat(
            served.name, generation, params, tool_parser, max_tool_calls, kept, legacy_functions, named_call
        )

    def _tool_mode(
        self, request: ChatCompletionRequest, params: EngineParameters
    ) -> Callable[[], ToolParser] | None:
        """How to parse tool calls (None: not at all); required/named force the call through structured
        outputs and parse it without the configured parser (vLLM does the same)."""
        choice = request.tool_choice
        config = self.ctx.config
        if not request.tools:
            if choice is not None and choice != "none":
                raise bad_request("tool_choice needs tools", param="tool_choice")
            return None
        if choice == "none":
            return None
        # In the Responses API's terms, which the parsers and the forcing constraints read.
        tools = [
            FunctionTool(type="function", name=tool.function.name, parameters=tool.function.parameters)
            for tool in request.tools
        ]
        if choice in (None, "auto"):
            if not (config.enable_auto_tool_choice and config.tool_call_parser):
                raise bad_request(
                    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser',
                    param="tool_choice",
                )
            if config.tool_call_parser in NEEDS_SPECIAL_TOKENS:
                # Its markers are special tokens: the text it reads must keep them.
                params.set("skip_special_tokens", False)
            return auto_parser(config.tool_call_parser, tools)
        # Forced exactly as the Responses API forces it: a named function's arguments, or an array of calls.
        if not isinstance(choice, NamedToolChoice):
            max_calls = 1 if request.parallel_tool_calls is False else None
            schema = call_array_schema(tools, max_calls)
            params.set("structured_outputs", {"json": schema}, origin="tool_choice")
            return CallArrayParser
        name = choice.function.name
        named = [tool for tool in tools if tool.name == name]
        if not named:
            raise bad_request(f"tool_choice names unknown function {name!r}", "tool_choice")
        params.set("structured_outputs", {"json": named[0].parameters or ANY_OBJECT}, origin="tool_choice")
        return lambda: NamedCallParser(name)

    def _check_length(
        self, num_prompt_tokens: int, max_tokens: int | None, truncate: int | None, limit: int | None
    ) -> None:
        if limit is None:
            return
        count = truncated_length(num_prompt_tokens, truncate, limit)
        if count >= limit or (max_tokens is not None and count + max_tokens > limit):
            raise bad_request(
                f"This model's maximum context length is {limit} tokens; the messages have {count} tokens"
                + (f" and max_tokens is {max_tokens}" if max_tokens is not None else "")
                + " (max_model_len).",
                param="messages",
                code="context_length_exceeded",
            )

    def _logprob_formatter(self, request: ChatCompletionRequest) -> LogprobFormatter | None:
        if not request.logprobs:
            return None
        return LogprobFormatter(self.ctx.templater, request.top_logprobs or 0, request.return_tokens_as_token_ids)

    def _output_processor(self, prepared: PreparedChat) -> ChatOutputProcessor:
        config = self.ctx.config
        reasoning = reasoning_parser(config.reasoning_parser) if config.reasoning_parser else None
        tools = prepared.tool_parser() if prepared.tool_parser else None
        return ChatOutputProcessor(reasoning, tools, prepared.max_tool_calls)

    async def _stream(
        self, request: ChatCompletionRequest, prepared: PreparedChat, generation: Generation, request_id: str
    ) -> AsyncIterator[str]:
        created = unix_now()
        options = request.stream_options
        include_usage = options is not None and options.include_usage
        continuous = options is not None and options.continuous_usage_stats

        def chunk(
            index: int,
            delta: ChatDelta,
            finish: str | None = None,
            usage: UsageInfo | None = None,
            logprobs: ChoiceLogprobs | None = None,
            stop_reason: int | str | None = None,
            token_ids: list[int] | None = None,
            prompt_token_ids: list[int] | None = None,
        ) -> str:
            choice = ChatChunkChoice(
                index=index,
                delta=delta,
                finish_reason=finish,
                logprobs=logprobs,
                stop_reason=stop_reason,
                token_ids=token_ids,
            )
            body = ChatCompletionChunk(
                id=request_id,
                created=created,
                model=prepared.model,
                choices=[choice],
                usage=usage,
                system_fingerprint=self.ctx.system_fingerprint,
                service_tier=request.service_tier,
                prompt_token_ids=prompt_token_ids,
            )
            return frame(body)

        def shaped(delta: ChatDelta | None) -> ChatDelta | None:
            """A delta as this request wants it: in legacy functions' shape, without reasoning unless asked."""
            if delta is not None and prepared.legacy_functions:
                delta = legacy_delta(delta)
            if delta is not None and not request.include_reasoning and delta.reasoning_content is not None:
                delta = delta.model_copy(update={"reasoning_content": None})
                if delta.content is None and delta.tool_calls is None and delta.function_call is None:
                    return None
            return delta

        formatter = self._logprob_formatter(request)
        num_sequences = prepared.generation.num_sequences
        # Per sequence: its reasoning/tool parsing and its latest response (token counts).
        outputs = [self._output_processor(prepared) for _ in range(num_sequences)]
        lasts: dict[int, GenerationChunk] = {}
        try:
            prompt_token_ids = prepared.kept_prompt_token_ids if request.return_token_ids else None
            for index in range(num_sequences):
                role = ChatDelta(role=self._role(request), content="")
                yield chunk(index, role, prompt_token_ids=prompt_token_ids if index == 0 else None)
            echoed = self._echoed(request)
            if echoed:
                for index in range(num_sequences):
                    yield chunk(index, ChatDelta(content=echoed))
            # aclosing: if the client leaves while a frame is being sent, the Triton request ends now, not at GC.
            async with aclosing(chunks(self.ctx, generation)) as responses:
                async for response in responses:
                    index = response.index
                    lasts[index] = response
                    output = outputs[index]
                    usage = _usage(lasts) if continuous else None
                    delta = shaped(output.feed(response.text)) if response.text else None
                    logprobs = formatter.chat(response.logprobs) if formatter and response.logprobs else None
                    # Tokens a parser holds back still get their chunk when their ids were asked.
                    token_ids = response.token_ids if request.return_token_ids and response.token_ids else None
                    if delta is not None or logprobs is not None or token_ids is not None:
                        yield chunk(index, delta or ChatDelta(), usage=usage, logprobs=logprobs, token_ids=token_ids)
                    if response.finish_reason is None:
                        continue
                    tail = shaped(output.finish())
                    if tail is not None:
                        yield chunk(index, tail)
                    finish = prepared.finish_reason(response.finish_reason, output.saw_tool_calls)
                    yield chunk(index, ChatDelta(), finish, usage, stop_reason=response.stop_reason)
            if include_usage:
                usage_chunk = ChatCompletionChunk(
                    id=request_id,
                    created=created,
                    model=prepared.model,
                    choices=[],
                    usage=_usage(lasts),
                    system_fingerprint=self.ctx.system_fingerprint,
                    service_tier=request.service_tier,
                )
                yield frame(usage_chunk)
        except TritonError as error:
            yield error_frame(api_error(error, prepared.params, "messages"))
        yield DONE


def _usage(lasts: dict[int, GenerationChunk]) -> UsageInfo:
    """Usage so far from each sequence's latest response: the prompt once, every sequence's output."""
    any_last = next(iter(lasts.values()), None)
    if any_last is None:
        return UsageInfo.of(0, 0, 0)
    completion = sum(last.num_output_tokens for last in lasts.values())
    return UsageInfo.of(any_last.num_input_tokens, completion, any_last.num_cached_tokens)
