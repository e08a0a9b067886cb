"""The step every pooling endpoint (embeddings, score, rerank) shares: texts tokenized, inputs checked against
the context, then embedded by the llm model (its `pooling_parameters`), one Triton request per input, up to
MAX_INPUTS_IN_FLIGHT of them in flight together, answered in input order."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from frontend.errors import bad_request
from frontend.serving.context import ServedModel, ServingContext
from frontend.serving.engine_params import EngineParameters, api_error
from frontend.triton_client import Embedding, EmbeddingInput, TritonError

# Inputs of one request in flight at once: enough to fill the engine's batch (max_num_seqs, 256 by default),
# while a request of OpenAI's 2,048 inputs never meets the engine's queue limit (max_waiting_requests) alone.
MAX_INPUTS_IN_FLIGHT = 256


@dataclass(frozen=True)
class EmbeddingBatch:
    """One request's inputs on their way to the engine, and what they share."""

    # Each input's token ids, as the engine is to embed them (before truncate_prompt_tokens).
    token_ids: list[list[int]]
    # The model, or the LoRA adapter, that embeds them.
    served: ServedModel
    # The llm model's `pooling_parameters` (vLLM's PoolingParams names), the same for every input.
    pooling: dict[str, Any]
    # Each input's Triton request id is `<request_id>-<position>`.
    request_id: str
    # The request field an engine's context-length refusal names; None where inputs come from several.
    prompt_field: str | None
    # vLLM priority (lower is sooner).
    priority: int = 0
    # The client's prefix-cache isolation key, or None.
    cache_salt: str | None = None


async def encode_texts(ctx: ServingContext, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """Each text's token ids, all tokenized in one hop off the event loop."""
    return await asyncio.to_thread(lambda: [ctx.templater.encode(text, add_special_tokens) for text in texts])


def check_length(
    token_ids: list[int], truncate: int | None, limit: int | None, param: str, label: str
) -> None:
    """Refuse an input (`label`, of request field `param`) longer than the context (`limit`; None: unknown,
    the engine alone checks) after truncate_prompt_tokens (-1 keeps what the context holds). Unlike a
    prompt, it needs no room for a generated token."""
    if limit is None:
        return
    kept = len(token_ids) if truncate is None else min(len(token_ids), limit if truncate == -1 else truncate)
    if kept > limit:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens; {label} has {kept} tokens"
            " (max_model_len). Shorten it, or set truncate_prompt_tokens.",
            param=param,
            code="context_length_exceeded",
        )


async def embed_batch(ctx: ServingContext, batch: EmbeddingBatch) -> list[Embedding]:
    """Every input's embedding, in input order. One failure (or the client leaving) ends the whole batch,
    cancelling its other Triton requests."""
    in_flight = asyncio.Semaphore(MAX_INPUTS_IN_FLIGHT)

    async def embed(index: int, token_ids: list[int]) -> Embedding:
        async with in_flight:
            return await ctx.triton.embed(
                EmbeddingInput(
                    prompt_token_ids=token_ids,
                    pooling=batch.pooling,
                    priority=batch.priority,
                    cache_salt=batch.cache_salt,
                    lora_name=batch.served.lora_name,
                    lora_path=batch.served.lora_path,
                    request_id=f"{batch.request_id}-{index}",
                )
            )

    tasks = [asyncio.create_task(embed(index, token_ids)) for index, token_ids in enumerate(batch.token_ids)]
    try:
        return list(await asyncio.gather(*tasks))
    except TritonError as error:
        # Its parameter names are the request's own (dimensions, normalize, truncate_prompt_tokens).
        raise api_error(error, EngineParameters(), batch.prompt_field) from None
    finally:
        for task in tasks:
            task.cancel()
