"""Running one generation through Triton, shared by chat and completions: the first response is awaited
before any HTTP status is chosen (so engine refusals become 400s, not broken streams), and latency is
recorded on the way."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from frontend.metrics import FrontendMetrics
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
    recorder = SequenceRecorder(ctx.metrics, generation, ctx.config.model_name)
    recorder.response(generation.first, generation.first_arrival)
    async with aclosing(generation.rest) as rest:
        yield generation.first
        if not generation.first.final:
            async for chunk in rest:
                generation.last = chunk
                recorder.response(chunk, time.monotonic())
                yield chunk
    ctx.metrics.request_finished(
        generation.endpoint,
        generation.last.num_input_tokens,
        sum(recorder.output_tokens.values()),
        time.monotonic() - generation.arrival,
    )


class SequenceRecorder:
    """The metrics of a generation's sequences as their responses arrive: the latency between tokens of
    each, and vLLM's per-request metrics of each (a sequence is a vLLM request): its prompt at its first
    response, its tokens as they come, its first token's latency, and its end."""

    def __init__(self, metrics: FrontendMetrics, generation: Generation, model_name: str) -> None:
        self._metrics = metrics
        self._arrival = generation.arrival
        # vLLM's label of every metric: the first served name, whichever name or adapter a request used.
        self._model_name = model_name
        self._sequences = metrics.sequences(generation.endpoint, model_name)
        # By sequence index: arrival time of its latest response carrying tokens.
        self._latest_tokens: dict[int, float] = {}
        # By sequence index: its output tokens so far.
        self.output_tokens: dict[int, int] = {}

    def response(self, chunk: GenerationChunk, now: float) -> None:
        """`chunk` arrived at `now` (time.monotonic())."""
        sequences = self._sequences
        counted = self.output_tokens.get(chunk.index)
        if counted is None:
            sequences.started(chunk.num_input_tokens)
            counted = 0
        if chunk.num_output_tokens > counted:
            sequences.generated(chunk.num_output_tokens - counted)
        self.output_tokens[chunk.index] = chunk.num_output_tokens
        if chunk.token_ids:
            previous = self._latest_tokens.get(chunk.index)
            if previous is None:
                sequences.first_token(now - self._arrival)
            else:
                sequences.next_token(now - previous)
            self._latest_tokens[chunk.index] = now
        if chunk.finish_reason is not None:
            self._metrics.sequence_finished(
                self._model_name,
                chunk.finish_reason,
                chunk.num_input_tokens,
                chunk.num_output_tokens,
                now - self._arrival,
            )


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
