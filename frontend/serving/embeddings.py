"""/v1/embeddings and vLLM's /pooling (its `embed` task for an embedding model): one Triton request (the llm
model's `pooling_parameters`) per input, through the shared pooling step (pooling.embed_batch), answered in
input order. A `messages` request is one input: the conversation rendered with the chat template, as chat
completions renders it."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import cast

import numpy as np

from frontend.errors import bad_request
from frontend.protocol.embeddings import (
    EmbeddingData,
    EmbeddingInputRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from frontend.protocol.pooling import PoolingData, PoolingRequest, PoolingResponse
from frontend.serving.context import ServedModel, ServingContext, unix_now
from frontend.serving.pooling import EmbeddingBatch, check_length, embed_batch, encode_texts
from frontend.serving.tokenize import chat_token_ids
from frontend.triton_client import Embedding

ENDPOINT = "/v1/embeddings"
POOLING_ENDPOINT = "/pooling"


@dataclass(frozen=True)
class Embedded:
    """A request's inputs, embedded."""

    # The model, or LoRA adapter, that embedded them.
    served: ServedModel
    # One per input, in input order.
    embeddings: list[Embedding]
    # Tokens of every input, as the engine embedded them.
    prompt_tokens: int


class EmbeddingHandler:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def create(self, request: EmbeddingRequest, request_id: str) -> EmbeddingResponse:
        embedded = await self._embed(request, request_id, ENDPOINT)
        return EmbeddingResponse(
            id=request_id,
            created=unix_now(),
            model=embedded.served.name,
            data=[
                EmbeddingData(embedding=encoded(embedding.vector, request.encoding_format), index=index)
                for index, embedding in enumerate(embedded.embeddings)
            ],
            usage=EmbeddingUsage(prompt_tokens=embedded.prompt_tokens, total_tokens=embedded.prompt_tokens),
        )

    async def pool(self, request: PoolingRequest, request_id: str) -> PoolingResponse:
        embedded = await self._embed(request, request_id, POOLING_ENDPOINT)
        return PoolingResponse(
            id=request_id,
            created=unix_now(),
            model=embedded.served.name,
            data=[
                PoolingData(index=index, data=encoded(embedding.vector, request.encoding_format))
                for index, embedding in enumerate(embedded.embeddings)
            ],
            usage=EmbeddingUsage(prompt_tokens=embedded.prompt_tokens, total_tokens=embedded.prompt_tokens),
        )

    async def _embed(self, request: EmbeddingInputRequest, request_id: str, endpoint: str) -> Embedded:
        arrival = time.monotonic()
        served = await self.ctx.resolve_model(request.model)
        inputs = await self._token_ids(request)
        chat = request.messages is not None
        param = "messages" if chat else "input"
        limit = await self.ctx.max_model_len()
        for index, token_ids in enumerate(inputs):
            check_length(token_ids, request.truncate_prompt_tokens, limit, param, param if chat else f"input {index}")
        embeddings = await embed_batch(
            self.ctx,
            EmbeddingBatch(
                token_ids=inputs,
                served=served,
                pooling=request.pooling_parameters(),
                request_id=request_id,
                prompt_field=param,
                priority=request.priority,
                cache_salt=request.cache_salt,
            ),
        )
        prompt_tokens = sum(embedding.num_input_tokens for embedding in embeddings)
        self.ctx.metrics.e2e_latency.labels(endpoint).observe(time.monotonic() - arrival)
        self.ctx.metrics.prompt_tokens.inc(prompt_tokens)
        return Embedded(served, embeddings, prompt_tokens)

    async def _token_ids(self, request: EmbeddingInputRequest) -> list[list[int]]:
        """Each input's token ids: texts tokenized here, token ids as sent, messages templated into one."""
        value = request.input
        if value is None:  # the chat form: the request model holds exactly one of `input` and `messages`
            return [await chat_token_ids(self.ctx.templater, request, None)]
        if isinstance(value, str) or isinstance(value[0], str):
            texts = [value] if isinstance(value, str) else [str(text) for text in value]
            return await encode_texts(self.ctx, texts, request.add_special_tokens is not False)
        batch = [cast(list[int], value)] if isinstance(value[0], int) else cast(list[list[int]], value)
        vocab = self.ctx.templater.vocab_size
        for token_ids in batch:
            if any(token < 0 or token >= vocab for token in token_ids):
                raise bad_request(f"input token ids must be in [0, {vocab})", param="input")
        return batch


def encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A vector as the response carries it: floats, or its little-endian float32 bytes in base64 (what the
    OpenAI SDK decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
