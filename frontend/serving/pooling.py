"""The step every pooling endpoint (embeddings, classify, score, rerank) shares: texts tokenized, inputs checked
against the context, then pooled by the llm model (its `pooling_parameters`), one Triton request per input, up
to MAX_INPUTS_IN_FLIGHT of them in flight together, answered in input order."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, cast

from frontend.errors import bad_request
from frontend.protocol.embeddings import InputsRequest
from frontend.serving.context import ServedModel, ServingContext
from frontend.serving.engine_params import EngineParameters, api_error
from frontend.serving.tokenize import chat_token_ids
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


@dataclass(frozen=True)
class Pooled:
    """A request's inputs, pooled."""

    # The model, or LoRA adapter, that pooled them.
    served: ServedModel
    # One per input, in input order: its vector (a sequence classifier's: its logits).
    embeddings: list[Embedding]

    @property
    def input_tokens(self) -> list[int]:
        """Each input's tokens, as the engine pooled them."""
        return [embedding.num_input_tokens for embedding in self.embeddings]

    @property
    def prompt_tokens(self) -> int:
        return sum(self.input_tokens)


def record_pooling(ctx: ServingContext, endpoint: str, arrival: float, input_tokens: list[int]) -> None:
    """The metrics of a pooling request (embeddings, pooling, classify, score, rerank) that arrived at
    `arrival` (time.monotonic()) and has its answer, its inputs of `input_tokens` tokens each as the engine
    pooled them."""
    ctx.metrics.pooling_finished(endpoint, ctx.config.model_name, input_tokens, time.monotonic() - arrival)


async def pool_inputs(
    ctx: ServingContext, request: InputsRequest, served: ServedModel, pooling: dict[str, Any], request_id: str
) -> Pooled:
    """Every input of a /v1/embeddings, /pooling or /classify request pooled with the llm model's
    `pooling_parameters` `pooling`, in input order."""
    inputs = await input_token_ids(ctx, request)
    chat = request.messages is not None
    param = "messages" if chat else "input"
    limit = await ctx.max_model_len()
    for index, token_ids in enumerate(inputs):
        check_length(token_ids, request.truncate_prompt_tokens, limit, param, param if chat else f"input {index}")
    embeddings = await embed_batch(
        ctx,
        EmbeddingBatch(
            token_ids=inputs,
            served=served,
            pooling=pooling,
            request_id=request_id,
            prompt_field=param,
            priority=request.priority,
            cache_salt=request.cache_salt,
        ),
    )
    return Pooled(served, embeddings)


async def input_token_ids(ctx: ServingContext, request: InputsRequest) -> list[list[int]]:
    """Each input's token ids: texts tokenized here, token ids as sent, messages templated into one."""
    value = request.input
    if value is None:  # the chat form: the request model holds exactly one of `input` and `messages`
        return [await chat_token_ids(ctx.templater, request, None)]
    if isinstance(value, str) or isinstance(value[0], str):
        texts = [value] if isinstance(value, str) else [str(text) for text in value]
        return await encode_texts(ctx, texts, request.add_special_tokens is not False)
    batch = [cast(list[int], value)] if isinstance(value[0], int) else cast(list[list[int]], value)
    vocab = ctx.templater.vocab_size
    for token_ids in batch:
        if any(token < 0 or token >= vocab for token in token_ids):
            raise bad_request(f"input token ids must be in [0, {vocab})", param="input")
    return batch


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
