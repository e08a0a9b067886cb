"""/v1/embeddings: one Triton request (the llm model's `pooling_parameters`) per input, through the shared
pooling step (pooling.embed_batch), answered in input order."""

from __future__ import annotations

import base64
import time
from typing import cast

import numpy as np

from frontend.errors import bad_request
from frontend.protocol.embeddings import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from frontend.serving.context import ServingContext, unix_now
from frontend.serving.pooling import EmbeddingBatch, check_length, embed_batch, encode_texts

ENDPOINT = "/v1/embeddings"


class EmbeddingHandler:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def create(self, request: EmbeddingRequest, request_id: str) -> EmbeddingResponse:
        arrival = time.monotonic()
        served = await self.ctx.resolve_model(request.model)
        inputs = await self._token_ids(request)
        limit = await self.ctx.max_model_len()
        for index, token_ids in enumerate(inputs):
            check_length(token_ids, request.truncate_prompt_tokens, limit, "input", f"input {index}")
        embeddings = await embed_batch(
            self.ctx,
            EmbeddingBatch(
                token_ids=inputs,
                served=served,
                pooling=request.pooling_parameters(),
                request_id=request_id,
                prompt_field="input",
                priority=request.priority,
                cache_salt=request.cache_salt,
            ),
        )
        prompt_tokens = sum(embedding.num_input_tokens for embedding in embeddings)
        self.ctx.metrics.e2e_latency.labels(ENDPOINT).observe(time.monotonic() - arrival)
        self.ctx.metrics.prompt_tokens.inc(prompt_tokens)
        return EmbeddingResponse(
            id=request_id,
            created=unix_now(),
            model=served.name,
            data=[
                EmbeddingData(embedding=encoded(embedding.vector, request.encoding_format), index=index)
                for index, embedding in enumerate(embeddings)
            ],
            usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )

    async def _token_ids(self, request: EmbeddingRequest) -> list[list[int]]:
        """Each input's token ids: texts tokenized here, token ids as sent."""
        value = request.input
        if isinstance(value, str) or isinstance(value[0], str):
            texts = [value] if isinstance(value, str) else [str(text) for text in value]
            return await encode_texts(self.ctx, texts, request.add_special_tokens)
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
