"""/pooling: vLLM's Pooling API (PoolingCompletionRequest / PoolingChatRequest and PoolingResponse) for an
embedding model. vLLM answers it with the model's default pooling task, for an embedding model `embed`: the
vector /v1/embeddings returns, normalized unless asked otherwise, as a PoolingResponse. Per-token tasks
(`token_embed`) need a pooling this engine does not have and are refused by name, as is `dimensions`
(vLLM refuses it on /pooling too)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, model_validator

from frontend.protocol.embeddings import EmbeddingInputRequest, EmbeddingUsage


class PoolingRequest(EmbeddingInputRequest):
    # vLLM's pooling task; the only one an embedding model pools here is its default, `embed`.
    task: Literal["embed"] | None = None
    # vLLM's newer name of `normalize` on /pooling (for the embed task, its activation is the L2 norm).
    use_activation: bool | None = None

    @model_validator(mode="after")
    def _one_normalize(self) -> PoolingRequest:
        if None not in (self.normalize, self.use_activation) and self.normalize != self.use_activation:
            raise ValueError("normalize and use_activation disagree; send one of them")
        return self

    def pooling_parameters(self) -> dict[str, Any]:
        parameters = super().pooling_parameters()
        if self.use_activation is not None:
            parameters["normalize"] = self.use_activation
        return parameters


class PoolingData(BaseModel):
    # The input's position in the request.
    index: int
    object: Literal["pooling"] = "pooling"
    # The vector, or its little-endian float32 bytes in base64 under encoding_format "base64".
    data: list[float] | str


class PoolingResponse(BaseModel):
    # As vLLM's: "pool-<request id>".
    id: str
    object: Literal["list"] = "list"
    # Unix time of the answer.
    created: int
    model: str
    # One per input, in input order.
    data: list[PoolingData]
    usage: EmbeddingUsage
