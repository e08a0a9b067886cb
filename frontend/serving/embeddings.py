"""/v1/embeddings: one Triton request (the llm model's `pooling_parameters`) per input, up to
MAX_INPUTS_IN_FLIGHT of them in flight together, answered in input order."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import cast

import numpy as np

from frontend.errors import bad_request
from frontend.protocol.embeddings import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from frontend.serving.context import ServingContext, unix_now
from frontend.serving.engine_params import EngineParameters, api_error
from frontend.triton_client import Embedding, EmbeddingInput, TritonError

ENDPOINT = "/v1/embeddings"
# Inputs of one request in flight at once: enough to fill the engine's batch (max_num_seqs, 256 by default),
# while a request of OpenAI's 2,048 inputs never meets the engine's queue limit (max_waiting_requests) alone.
MAX_INPUTS_IN_FLIGHT = 256


class EmbeddingHandler:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def create(self, request: EmbeddingRequest, request_id: str) -> EmbeddingResponse:
        arrival = time.monotonic()
        served = await self.ctx.resolve_model(request.model)
        inputs = await self._token_ids(request)
        self._check_lengths(inputs, request.truncate_prompt_tokens, await self.ctx.max_model_len())
        pooling = request.pooling_parameters()
        in_flight = asyncio.Semaphore(MAX_INPUTS_IN_FLIGHT)

        async def embed(index: int, token_ids: list[int]) -> Embedding:
            async with in_flight:
                return await self.ctx.triton.embed(
                    EmbeddingInput(
                        prompt_token_ids=token_ids,
                        pooling=pooling,
                        priority=request.priority,
                        cache_salt=request.cache_salt,
                        lora_name=served.lora_name,
                        request_id=f"{request_id}-{index}",
                    )
                )

        tasks = [asyncio.create_task(embed(index, token_ids)) for index, token_ids in enumerate(inputs)]
        try:
            embeddings: list[Embedding] = await asyncio.gather(*tasks)
        except TritonError as error:
            # Its parameter names are the request's own (dimensions, normalize, truncate_prompt_tokens).
            raise api_error(error, EngineParameters(), "input") from None
        finally:
            # One failure (or the client leaving) ends the whole batch, cancelling its Triton requests.
            for task in tasks:
                task.cancel()
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
        """Each input's token ids: texts tokenized here (in one hop off the event loop), token ids as sent."""
        value = request.input
        if isinstance(value, str) or isinstance(value[0], str):
            texts = [value] if isinstance(value, str) else [str(text) for text in value]
            return await asyncio.to_thread(self._encode_all, texts, request.add_special_tokens)
        batch = [cast(list[int], value)] if isinstance(value[0], int) else cast(list[list[int]], value)
        vocab = self.ctx.templater.vocab_size
        for token_ids in batch:
            if any(token < 0 or token >= vocab for token in token_ids):
                raise bad_request(f"input token ids must be in [0, {vocab})", param="input")
        return batch

    def _encode_all(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        return [self.ctx.templater.encode(text, add_special_tokens) for text in texts]

    @staticmethod
    def _check_lengths(inputs: list[list[int]], truncate: int | None, limit: int | None) -> None:
        """Refuse an input longer than the context (`limit`, None: unknown, the engine alone checks) after
        truncate_prompt_tokens (-1 keeps what the context holds). Unlike a prompt, it needs no room for a
        generated token."""
        if limit is None:
            return
        for index, token_ids in enumerate(inputs):
            kept = len(token_ids) if truncate is None else min(len(token_ids), limit if truncate == -1 else truncate)
            if kept > limit:
                raise bad_request(
                    f"This model's maximum context length is {limit} tokens; input {index} has {kept} tokens"
                    " (max_model_len). Shorten it, or set truncate_prompt_tokens.",
                    param="input",
                    code="context_length_exceeded",
                )


def encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A vector as the response carries it: floats, or its little-endian float32 bytes in base64 (what the
    OpenAI SDK decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
