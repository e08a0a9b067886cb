"""Running one generation through Triton, shared by chat and completions: the first response is awaited
before any HTTP status is chosen (so engine refusals become 400s, not broken streams), and latency is
recorded on the way."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from frontend.serving.beam_search import beam_search_answer
from frontend.serving.context import ServingContext
from frontend.serving.engine_params import EngineParameters, api_error
from frontend.triton_client import GenerationChunk, GenerationInput, TokenLogprob, TritonError


@dataclass
class Generation:
    """A started Triton request: its first response and the rest to come."""

    # The first engine model response (already received).
    first: GenerationChunk
    # The remaining responses; closing it cancels the Triton request.
    rest: AsyncGenerator[GenerationChunk, None]
    # Endpoint label for metrics.
    endpoint: str
    # Monotonic arrival time of the HTTP request.
    arrival: float
    # Monotonic arrival time of the first response.
    first_arrival: float
    # Latest response seen (for usage at the end).
    last: GenerationChunk = field(init=False)

    def __post_init__(self) -> None:
        self.last = self.first


async def start_generation(
    ctx: ServingContext, request: GenerationInput, params: EngineParameters, prompt_field: str, endpoint: str
) -> Generation:
    """Send the request and wait for its first response; Triton's refusals raise APIError here. A beam
    search runs whole before it answers, each beam as its sequence's one response."""
    arrival = time.monotonic()
    stream = _beam_search(ctx, request, params) if params.beam_search else ctx.triton.generate(request)
    try:
        first = await anext(stream)
    except TritonError as error:
        await stream.aclose()
        raise api_error(error, params, prompt_field) from None
    except BaseException:
        await stream.aclose()
        raise
    first_arrival = time.monotonic()
    ctx.metrics.time_to_first_token.labels(endpoint).observe(first_arrival - arrival)
    return Generation(first, stream, endpoint, arrival, first_arrival)


async def _beam_search(
    ctx: ServingContext, request: GenerationInput, params: EngineParameters
) -> AsyncGenerator[GenerationChunk, None]:
    for chunk in await beam_search_answer(ctx, request, params):
        yield chunk


async def chunks(ctx: ServingContext, generation: Generation) -> AsyncGenerator[GenerationChunk, None]:
    """Every response of a started generation, the first included; the Triton stream is closed at the end."""
    inter_token_latency = ctx.metrics.inter_token_latency.labels(generation.endpoint)
    # By sequence index: arrival time of its latest response carrying tokens, and its output tokens so far.
    latest_tokens = {generation.first.index: generation.first_arrival} if generation.first.token_ids else {}
    output_tokens = {generation.first.index: generation.first.num_output_tokens}
    async with aclosing(generation.rest) as rest:
        yield generation.first
        if not generation.first.final:
            async for chunk in rest:
                generation.last = chunk
                output_tokens[chunk.index] = chunk.num_output_tokens
                if chunk.token_ids:
                    now = time.monotonic()
                    previous = latest_tokens.get(chunk.index)
                    if previous is not None:
                        inter_token_latency.observe(now - previous)
                    latest_tokens[chunk.index] = now
                yield chunk
    last = generation.last
    ctx.metrics.e2e_latency.labels(generation.endpoint).observe(time.monotonic() - generation.arrival)
    ctx.metrics.prompt_tokens.inc(last.num_input_tokens)
    ctx.metrics.generation_tokens.inc(sum(output_tokens.values()))


@dataclass
class Sequence:
    """One of a generation's n sequences, whole."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    # Present when logprobs were asked.
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finish_reason: str | None = None
    # The stop string or token id that ended it (GenerationChunk.stop_reason).
    stop_reason: int | str | None = None
    # Output tokens of this sequence.
    num_output_tokens: int = 0

    def add(self, chunk: GenerationChunk) -> None:
        self.text += chunk.text
        self.token_ids.extend(chunk.token_ids)
        if chunk.logprobs is not None:
            self.logprobs = (self.logprobs or []) + chunk.logprobs
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs = chunk.prompt_logprobs
        self.finish_reason = chunk.finish_reason or self.finish_reason
        if chunk.stop_reason is not None:
            self.stop_reason = chunk.stop_reason
        self.num_output_tokens = chunk.num_output_tokens


@dataclass
class Collected:
    """A finished generation: its sequences in index order and the token accounting."""

    sequences: list[Sequence]
    num_input_tokens: int
    num_cached_tokens: int

    @property
    def num_output_tokens(self) -> int:
        return sum(sequence.num_output_tokens for sequence in self.sequences)


async def collect(ctx: ServingContext, generation: Generation) -> Collected:
    """Every sequence of a generation, whole."""
    sequences: dict[int, Sequence] = {}
    async for chunk in chunks(ctx, generation):
        sequences.setdefault(chunk.index, Sequence(chunk.index)).add(chunk)
    last = generation.last
    return Collected(
        [sequences[index] for index in sorted(sequences)], last.num_input_tokens, last.num_cached_tokens
    )
