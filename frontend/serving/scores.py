"""/score and /rerank, as vLLM serves them. For an embedding model (ServingScores._embedding_score) a pair's score
is the cosine similarity of its two texts' embeddings: each distinct text is embedded once, however many pairs
it is in, through the pooling step /v1/embeddings uses (pooling.embed_batch). For a sequence classifier of
one label, a cross-encoder (ServingScores._cross_encoding_score), each pair is one input, its two texts joined
as the tokenizer joins a pair, and its score the sigmoid of the classifier's logit."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from frontend.classifier import activation
from frontend.errors import bad_request
from frontend.protocol.embeddings import EmbeddingUsage
from frontend.protocol.scores import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreRequest,
    ScoreResponse,
    ScoreResponseData,
    as_list,
)
from frontend.serving.context import ServedModel, ServingContext, unix_now
from frontend.serving.pooling import EmbeddingBatch, check_length, embed_batch, encode_texts, record_pooling

SCORE_ENDPOINT = "/v1/score"
RERANK_ENDPOINT = "/v1/rerank"
# The floor under the product of the norms, torch's CosineSimilarity's (vLLM's scorer): no division by zero.
NORM_EPS = 1e-8


@dataclass(frozen=True)
class Texts:
    """One side of the pairs, as a request field sent it."""

    # The request field (text_1, text_2, query, documents): what a refusal names.
    param: str
    # Its texts, in request order.
    texts: list[str]
    # Whether the field was a list, so that a refusal says which of its texts.
    listed: bool

    @classmethod
    def of(cls, param: str, value: str | list[str]) -> Texts:
        return cls(param, as_list(value), not isinstance(value, str))

    def label(self, index: int) -> str:
        return f"{self.param} {index}" if self.listed else self.param


@dataclass(frozen=True)
class Scored:
    """A request's pairs, scored."""

    # The model, or LoRA adapter, that scored them.
    served: ServedModel
    # One per pair, in pair order.
    scores: list[float]
    # Tokens of each input the engine pooled: each distinct text once (embeddings), or each pair (a
    # cross-encoder).
    input_tokens: list[int]

    @property
    def prompt_tokens(self) -> int:
        return sum(self.input_tokens)


class ScoreHandler:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def score(self, request: ScoreRequest, request_id: str) -> ScoreResponse:
        arrival = time.monotonic()
        scored = await self._score(
            Texts.of("text_1", request.text_1), Texts.of("text_2", request.text_2), request, request_id
        )
        record_pooling(self.ctx, SCORE_ENDPOINT, arrival, scored.input_tokens)
        return ScoreResponse(
            id=request_id,
            created=unix_now(),
            model=scored.served.name,
            data=[ScoreResponseData(index=index, score=score) for index, score in enumerate(scored.scores)],
            usage=EmbeddingUsage.of(scored.prompt_tokens),
        )

    async def rerank(self, request: RerankRequest, request_id: str) -> RerankResponse:
        arrival = time.monotonic()
        scored = await self._score(
            Texts.of("query", request.query), Texts.of("documents", request.documents), request, request_id
        )
        record_pooling(self.ctx, RERANK_ENDPOINT, arrival, scored.input_tokens)
        results = [
            RerankResult(index=index, document=RerankDocument(text=text), relevance_score=score)
            for index, (text, score) in enumerate(zip(request.documents, scored.scores, strict=True))
        ]
        # sorted() is stable under reverse=True too: equal scores keep document order, as in vLLM.
        results = sorted(results, key=lambda result: result.relevance_score, reverse=True)
        return RerankResponse(
            id=request_id,
            model=scored.served.name,
            usage=RerankUsage(total_tokens=scored.prompt_tokens),
            results=results[: request.top_n or len(results)],
        )

    async def _score(
        self, first: Texts, second: Texts, request: ScoreRequest | RerankRequest, request_id: str
    ) -> Scored:
        """Each pair's score (`pairs`)."""
        served = await self.ctx.resolve_model(request.model)
        classifier = self.ctx.config.classifier
        if classifier is None:
            return await self._embedding_score(first, second, request, request_id, served)
        if classifier.num_labels != 1:
            raise bad_request(
                f"score and rerank need an embedding model or a cross-encoder (a classifier of one label); this "
                f"model is a classifier of {classifier.num_labels} labels ({classifier.architecture}): use /classify"
            )
        return await self._cross_encoding_score(first, second, request, request_id, served)

    async def _cross_encoding_score(
        self,
        first: Texts,
        second: Texts,
        request: ScoreRequest | RerankRequest,
        request_id: str,
        served: ServedModel,
    ) -> Scored:
        """Each pair through the cross-encoder: one input of both texts, scored by its logit's sigmoid."""
        templater = self.ctx.templater
        token_ids = await asyncio.to_thread(lambda: [templater.encode_pair(a, b) for a, b in pairs(first, second)])
        truncate = request.truncate_prompt_tokens
        limit = await self.ctx.max_model_len()
        for index, pair in enumerate(token_ids):
            label = f"the pair of {first.label(min(index, len(first.texts) - 1))} and {second.label(index)}"
            check_length(pair, truncate, limit, second.param, label)
        logits = await embed_batch(
            self.ctx,
            EmbeddingBatch(
                token_ids=token_ids,
                served=served,
                pooling={} if truncate is None else {"truncate_prompt_tokens": truncate},
                request_id=request_id,
                # A pair's tokens come from two fields.
                prompt_field=None,
                priority=request.priority,
            ),
        )
        return Scored(
            served=served,
            scores=[float(activation(pair.vector)[0]) for pair in logits],
            input_tokens=[pair.num_input_tokens for pair in logits],
        )

    async def _embedding_score(
        self,
        first: Texts,
        second: Texts,
        request: ScoreRequest | RerankRequest,
        request_id: str,
        served: ServedModel,
    ) -> Scored:
        """Each pair's cosine similarity of its two texts' embeddings."""
        # Each distinct text once, in order of first appearance (a 1:N query, a text on both sides).
        distinct = list(dict.fromkeys([*first.texts, *second.texts]))
        # With the tokenizer's special tokens, as vLLM's scoring tokenizes.
        token_ids = dict(zip(distinct, await encode_texts(self.ctx, distinct, True), strict=True))
        truncate = request.truncate_prompt_tokens
        limit = await self.ctx.max_model_len()
        for side in (first, second):
            for index, text in enumerate(side.texts):
                check_length(token_ids[text], truncate, limit, side.param, side.label(index))
        embeddings = await embed_batch(
            self.ctx,
            EmbeddingBatch(
                token_ids=[token_ids[text] for text in distinct],
                served=served,
                pooling={} if truncate is None else {"truncate_prompt_tokens": truncate},
                request_id=request_id,
                # A text may stand in both fields.
                prompt_field=None,
                priority=request.priority,
            ),
        )
        vectors = {text: embedding.vector for text, embedding in zip(distinct, embeddings, strict=True)}
        return Scored(
            served=served,
            scores=[cosine(vectors[a], vectors[b]) for a, b in pairs(first, second)],
            input_tokens=[embedding.num_input_tokens for embedding in embeddings],
        )


def pairs(first: Texts, second: Texts) -> list[tuple[str, str]]:
    """The pairs to score: `first`'s one text against each of `second`'s, or the two paired element-wise (the
    protocol models have refused any other pairing)."""
    firsts = first.texts * len(second.texts) if len(first.texts) == 1 else first.texts
    return list(zip(firsts, second.texts, strict=True))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity, in float64 (the engine's float32 vectors are unit length by default)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.dot(a64, b64) / max(float(np.linalg.norm(a64) * np.linalg.norm(b64)), NORM_EPS))
