"""/v1/embeddings and vLLM's /pooling (its `embed` task for an embedding model): one Triton request (the llm
model's `pooling_parameters`) per input, through the shared pooling step (pooling.pool_inputs), answered in
input order. A `messages` request is one input: the conversation rendered with the chat template, as chat
completions renders it. A sequence classifier has no embeddings to give: both refuse it."""

from __future__ import annotations

import base64
import time

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
from frontend.serving.context import ServingContext, unix_now
from frontend.serving.pooling import Pooled, pool_inputs, record_pooling

ENDPOINT = "/v1/embeddings"
POOLING_ENDPOINT = "/pooling"


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
            usage=EmbeddingUsage.of(embedded.prompt_tokens),
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
            usage=EmbeddingUsage.of(embedded.prompt_tokens),
        )

    async def _embed(self, request: EmbeddingInputRequest, request_id: str, endpoint: str) -> Pooled:
        arrival = time.monotonic()
        served = await self.ctx.resolve_model(request.model)
        classifier = self.ctx.config.classifier
        if classifier is not None:
            # Its pooled output is the head's logits, no vector of the text: vLLM refuses the same.
            raise bad_request(
                f"The model does not support the Embeddings API: it is a sequence classifier "
                f"({classifier.architecture}); use /classify"
            )
        pooled = await pool_inputs(self.ctx, request, served, request.pooling_parameters(), request_id)
        record_pooling(self.ctx, endpoint, arrival, pooled.input_tokens)
        return pooled


def encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A vector as the response carries it: floats, or its little-endian float32 bytes in base64 (what the
    OpenAI SDK decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
