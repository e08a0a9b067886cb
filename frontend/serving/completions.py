"/v1/completions (legacy): one Triton request per prompt, run concurrently, answered in prompt order."

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from frontend.errors import bad_request
from frontend.protocol.completions import CompletionChoice, CompletionRequest, CompletionResponse
from frontend.protocol.usage import UsageInfo
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
from frontend.serving.sse import DONE, error_frame, frame
from frontend.triton_client import GenerationChunk, GenerationInput, TritonError

ENDPOINT = "/v1/completions"


@dataclass
class Prompt:
    """One prompt of a (possibly batched) request."""

    # What echo returns: the prompt as sent, or a token-id prompt's decoding.
    text: str
    # What the engine gets: a text prompt tokenized here (with the tokenizer's special tokens unless
    # add_special_tokens is false), a token-id prompt as sent (decoding and re-encoding may change it).
    token_ids: list[int]


class CompletionHandler:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def create(
        self, request: CompletionRequest, request_id: str
    ) -> CompletionResponse | AsyncIterator[str]:
        served = await self.ctx.resolve_model(request.model)
        model = served.name
        if request.stream_options is not None and not request.stream:
            raise bad_request("stream_options is only allowed with stream=true", param="stream_options")
        if request.suffix:
            raise bad_request("suffix is not supported", param="suffix")
        if request.stream and request.best_of is not None and request.best_of > request.n:
            raise bad_request(
                "best_of > n cannot be streamed: only the best sequences are returned", "best_of"
            )
        params = engine_parameters(request, self.ctx.config.sampling_defaults)
        add_response_format(request, params)
        if request.logprobs is not None:
            params.set("logprobs", request.logprobs)
            if request.echo and params.sampling.get("prompt_logprobs", -1) < request.logprobs:
                # The echoed prompt's tokens get logprobs too (vLLM: prompt_logprobs = logprobs); each
                # formatter cuts the top lists to its own count.
                params.set("prompt_logprobs", request.logprobs, origin="logprobs")
        if request.best_of is not None:
            params.set("best_of", request.best_of)
        prompts = await self._prompts(request)
        limit = await self.ctx.max_model_len()
        self._check_lengths(prompts, request.max_tokens, request.truncate_prompt_tokens, limit)
        inputs = [
            GenerationInput(
                prompt_token_ids=prompt.token_ids,
                # Streamed from Triton even for non-streamed answers (see chat.py): prompt cancellation.
                stream=True,
                max_tokens=(
                    request.max_tokens
                    if request.use_beam_search
                    else max_tokens_or_default(
                        request.max_tokens,
                        self.ctx.config.sampling_defaults,
                        self.ctx.config.max_tokens_cap,
                        len(prompt.token_ids),
                        request.truncate_prompt_tokens,
                        limit,
                    )
                ),
                sampling=params.sampling,
                priority=request.priority,
                cache_salt=request.cache_salt,
                lora_name=served.lora_name,
                lora_path=served.lora_path,
                request_id=f"{request_id}-{index}",
            )
            for index, prompt in enumerate(prompts)
        ]
        generations = await self._start_all(inputs, params)
        if request.stream:
            return self._stream(request, model, prompts, generations, params, request_id, limit)
        tasks = [asyncio.create_task(collect(self.ctx, generation)) for generation in generations]
        try:
            results = await asyncio.gather(*tasks)
        except TritonError as error:
            raise api_error(error, params, "prompt") from None
        finally:
            # One failure (or the client leaving) ends the whole batch, cancelling its Triton requests.
            for task in tasks:
                task.cancel()
        choices = []
        truncate = request.truncate_prompt_tokens
        for prompt_index, collected in enumerate(results):
            prompt = prompts[prompt_index]
            for sequence in collected.sequences:
                echo = prompt.text if request.echo else ""
                logprobs = None
                if request.logprobs is not None:
                    entries = (sequence.prompt_logprobs or []) if request.echo else []
                    logprobs = self._formatter(request).completion(
                        [*entries, *(sequence.logprobs or [])], self._first_token(prompt, request), 0
                    )
                choices.append(
                    CompletionChoice(
                        index=prompt_index * request.n + sequence.index,
                        text=echo + sequence.text,
                        finish_reason=sequence.finish_reason,
                        logprobs=logprobs,
                        stop_reason=sequence.stop_reason,
                        prompt_token_ids=kept_prompt(prompt.token_ids, truncate, limit) if request.return_token_ids else None,
                        token_ids=sequence.token_ids if request.return_token_ids else None,
                        prompt_logprobs=requested_prompt_logprobs(
                            self.ctx.templater, request.prompt_logprobs, sequence.prompt_logprobs
                        ),
                    )
                )
        return CompletionResponse(
            id=request_id,
            created=unix_now(),
            model=model,
            choices=choices,
            usage=UsageInfo.of(
                sum(collected.num_input_tokens for collected in results),
                sum(collected.num_output_tokens for collected in results),
                sum(collected.num_cached_tokens for collected in results),
            ),
            system_fingerprint=self.ctx.system_fingerprint,
            service_tier=request.service_tier,
        )

    def _formatter(self, request: CompletionRequest) -> LogprobFormatter:
        return LogprobFormatter(self.ctx.templater, request.logprobs or 0, request.return_tokens_as_token_ids)

    def _first_token(self, prompt: Prompt, request: CompletionRequest) -> int | None:
        """The echoed prompt's first token (its logprob entry is None: nothing predicts it)."""
        if not (request.echo and request.logprobs is not None):
            return None
        return prompt.token_ids[0] if prompt.token_ids else None

    async def _prompts(self, request: CompletionRequest) -> list[Prompt]:
        prompt = request.prompt
        if isinstance(prompt, str):
            return [await self._encoded(prompt, request.add_special_tokens)]
        if all(isinstance(item, str) for item in prompt):
            return [await self._encoded(str(item), request.add_special_tokens) for item in prompt]
        if all(isinstance(item, int) for item in prompt):
            return [self._decoded(list(prompt))]  # type: ignore[arg-type]
        return [self._decoded(list(item)) for item in prompt]  # type: ignore[arg-type]

    def _decoded(self, token_ids: list[int]) -> Prompt:
        vocab = self.ctx.templater.vocab_size
        if any(token < 0 or token >= vocab for token in token_ids):
            raise bad_request(f"prompt token ids must be in [0, {vocab})", param="prompt")
        return Prompt(self.ctx.templater.decode(token_ids), token_ids)

    async def _encoded(self, text: str, add_special_tokens: bool) -> Prompt:
        return Prompt(text, await asyncio.to_thread(self.ctx.templater.encode, text, add_special_tokens))

    def _check_lengths(
        self, prompts: list[Prompt], max_tokens: int | None, truncate: int | None, limit: int | None
    ) -> None:
        if limit is None:
            return
        for prompt in prompts:
            count = truncated_length(len(prompt.token_ids), truncate, limit)
            if count >= limit or (max_tokens is not None and count + max_tokens > limit):
                raise bad_request(
                    f"This model's maximum context length is {limit} tokens; the prompt has {count} tokens"
                    f" and max_tokens is {max_tokens} (max_model_len).",
                    param="prompt",
                    code="context_length_exceeded",
                )

    async def _start_all(self, inputs: list[GenerationInput], params: EngineParameters) -> list[Generation]:
        started = await asyncio.gather(
            *(start_generation(self.ctx, item, params, "prompt", ENDPOINT) for item in inputs),
            return_exceptions=True,
        )
        failure = next((result for result in started if isinstance(result, BaseException)), None)
        if failure is None:
            return [result for result in started if isinstance(result, Generation)]
        for result in started:
            if isinstance(result, Generation):
                await result.rest.aclose()
        raise failure

    async def _stream(
        self,
        request: CompletionRequest,
        model: str,
        prompts: list[Prompt],
        generations: list[Generation],
        params: EngineParameters,
        request_id: str,
        limit: int | None,
    ) -> AsyncIterator[str]:
        """`limit`: the context length the prompts were checked against (ServingContext.max_model_len)."""
        created = unix_now()
        options = request.stream_options
        # vLLM's continuous_usage_stats: the usage so far on every chunk.
        continuous = options is not None and options.continuous_usage_stats

        def body(choices: list[CompletionChoice], usage: UsageInfo | None = None) -> str:
            response = CompletionResponse(
                id=request_id,
                created=created,
                model=model,
                choices=choices,
                usage=usage,
                system_fingerprint=self.ctx.system_fingerprint,
                service_tier=request.service_tier,
            )
            return frame(response)

        # By choice index (prompt index * n + sequence index): its latest response, and its text length
        # so far (the text_offset of its next token).
        lasts: dict[int, GenerationChunk] = {}
        offsets: dict[int, int] = {}
        truncate = request.truncate_prompt_tokens
        try:
            async with aclosing(self._responses(generations)) as responses:
                async for index, item in responses:
                    prompt = prompts[index]
                    choice_index = index * request.n + item.index
                    lasts[choice_index] = item
                    first = choice_index not in offsets
                    text = (prompt.text if request.echo and first else "") + item.text
                    logprobs = None
                    if request.logprobs is not None:
                        entries = (item.prompt_logprobs or []) if request.echo and first else []
                        logprobs = self._formatter(request).completion(
                            [*entries, *(item.logprobs or [])],
                            self._first_token(prompt, request) if first else None,
                            offsets.get(choice_index, 0),
                        )
                    offsets[choice_index] = offsets.get(choice_index, 0) + len(text)
                    token_ids = item.token_ids if request.return_token_ids and item.token_ids else None
                    if text or item.finish_reason or (logprobs is not None and logprobs.tokens) or token_ids:
                        choice = CompletionChoice(
                            index=choice_index,
                            text=text,
                            finish_reason=item.finish_reason,
                            logprobs=logprobs,
                            stop_reason=item.stop_reason,
                            prompt_token_ids=(
                                kept_prompt(prompt.token_ids, truncate, limit) if request.return_token_ids and first else None
                            ),
                            token_ids=token_ids,
                        )
                        yield body([choice], _total_usage(lasts) if continuous else None)
            if options is not None and options.include_usage:
                yield body([], _total_usage(lasts))
        except TritonError as error:
            yield error_frame(api_error(error, params, "prompt"))
        yield DONE

    async def _responses(
        self, generations: list[Generation]
    ) -> AsyncGenerator[tuple[int, GenerationChunk], None]:
        """Every prompt's responses as (prompt index, response), in the order they arrive. One prompt (the
        usual case) is read as it is: a task and a queue hop for each of its tokens would buy nothing."""
        if len(generations) == 1:
            async with aclosing(chunks(self.ctx, generations[0])) as responses:
                async for chunk in responses:
                    yield 0, chunk
            return
        queue: asyncio.Queue[tuple[int, GenerationChunk | TritonError | None]] = asyncio.Queue()

        async def pump(index: int, generation: Generation) -> None:
            try:
                async for chunk in chunks(self.ctx, generation):
                    await queue.put((index, chunk))
                await queue.put((index, None))
            except TritonError as error:
                await queue.put((index, error))

        tasks = [asyncio.create_task(pump(index, generation)) for index, generation in enumerate(generations)]
        try:
            remaining = len(tasks)
            while remaining:
                index, item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, TritonError):
                    raise item
                else:
                    yield index, item
        finally:
            # One failure (or the client leaving) ends the whole batch, cancelling its Triton requests.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _total_usage(lasts: dict[int, GenerationChunk]) -> UsageInfo:
    """Each prompt's tokens once (choices of one prompt share them), every choice's output tokens."""
    prompts: dict[int, GenerationChunk] = {}
    for choice_index, chunk in lasts.items():
        prompts.setdefault(choice_index - chunk.index, chunk)
    return UsageInfo.of(
        sum(chunk.num_input_tokens for chunk in prompts.values()),
        sum(chunk.num_output_tokens for chunk in lasts.values()),
        sum(chunk.num_cached_tokens for chunk in prompts.values()),
    )
