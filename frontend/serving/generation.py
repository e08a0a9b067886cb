"""Running one generation through Triton, shared by chat and completions: the first response is awaited
before any HTTP status is chosen (so engine refusals become 400s, not broken streams), and latency is
recorded on the way."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from frontend.serving.context import ServingContext
from frontend.serving.engine_params import EngineParameters, api_error
from frontend.triton_client import GenerationChunk, GenerationInput, TritonError


@dataclass
class Generation:
    """A started Triton request: its first response and the rest to come."""

    # The first ensemble response (already received).
    first: GenerationChunk
    # The remaining responses; closing it cancels the Triton request.
    rest: AsyncGenerator[GenerationChunk, None]
    # Endpoint label for metrics.
    endpoint: str
    # Monotonic arrival time of the HTTP request.
    arrival: float
    # Latest response seen (for usage at the end).
    last: GenerationChunk = field(init=False)

    def __post_init__(self) -> None:
        self.last = self.first


async def start_generation(
    ctx: ServingContext, request: GenerationInput, params: EngineParameters, prompt_field: str, endpoint: str
) -> Generation:
    """Send the request and wait for its first response; Triton's refusals raise APIError here."""
    arrival = time.monotonic()
    stream = ctx.triton.generate(request)
    try:
        first = await anext(stream)
    except TritonError as error:
        await stream.aclose()
        raise api_error(error, params, prompt_field) from None
    except BaseException:
        await stream.aclose()
        raise
    ctx.metrics.time_to_first_token.labels(endpoint).observe(time.monotonic() - arrival)
    return Generation(first, stream, endpoint, arrival)


async def chunks(ctx: ServingContext, generation: Generation) -> AsyncGenerator[GenerationChunk, None]:
    """Every response of a started generation, the first included; the Triton stream is closed at the end."""
    async with aclosing(generation.rest) as rest:
        yield generation.first
        if not generation.first.final:
            async for chunk in rest:
                generation.last = chunk
                yield chunk
    last = generation.last
    ctx.metrics.e2e_latency.labels(generation.endpoint).observe(time.monotonic() - generation.arrival)
    ctx.metrics.prompt_tokens.inc(last.num_input_tokens)
    ctx.metrics.generation_tokens.inc(last.num_output_tokens)


async def collect(ctx: ServingContext, generation: Generation) -> tuple[str, GenerationChunk]:
    """The whole text of a generation and its last response (finish reason, token counts)."""
    parts = [chunk.text async for chunk in chunks(ctx, generation)]
    return "".join(parts), generation.last
