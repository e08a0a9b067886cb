"""/score and /rerank: vLLM's ScoreRequest and RerankRequest (the rerank API of Jina and Cohere) and their
responses. Unknown fields (vLLM's cross-encoder `activation`, multimodal inputs, ...) are refused by name."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from frontend.protocol.embeddings import MAX_INPUTS, EmbeddingUsage


def texts_given(value: str | list[str], info: ValidationInfo) -> str | list[str]:
    """Refuse an empty text, an empty list and more than MAX_INPUTS texts in one field (as /v1/embeddings
    refuses such inputs: each distinct text is one engine request)."""
    name = info.field_name
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{name} must not be an empty string")
        return value
    if not value:
        raise ValueError(f"{name} must not be an empty list")
    if any(not text for text in value):
        raise ValueError(f"{name} must not hold an empty string")
    if len(value) > MAX_INPUTS:
        raise ValueError(f"{name} may hold at most {MAX_INPUTS} texts, got {len(value)}")
    return value


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


class ScoreRequest(BaseModel):
    """Pairs of texts to score: one text_1 against each text_2 (1:N), or the two lists paired element-wise
    (N:N), vLLM's rule."""

    model_config = ConfigDict(extra="forbid")

    # Absent: the default served model.
    model: str | None = None
    # One text, or as many as text_2 holds.
    text_1: str | list[str]
    text_2: str | list[str]
    # Keep only the last k tokens of each text (-1: as many as the context holds).
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    # Lower values are scheduled first. It travels to the engine as an INT32 tensor.
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1)

    _texts_given = field_validator("text_1", "text_2")(texts_given)

    @model_validator(mode="after")
    def _paired(self) -> ScoreRequest:
        first, second = len(as_list(self.text_1)), len(as_list(self.text_2))
        if first > 1 and first != second:
            raise ValueError(
                "text_1 and text_2 must pair 1:1, 1:N or N:N (one text_1 against every text_2, or lists of "
                f"equal length paired element-wise); got {first} text_1 and {second} text_2"
            )
        return self


class ScoreResponseData(BaseModel):
    # The pair's position: its text_2's.
    index: int
    object: Literal["score"] = "score"
    # Cosine similarity of the pair's embeddings, in [-1, 1]; a cross-encoder's: the sigmoid of its logit, in
    # (0, 1).
    score: float


class ScoreResponse(BaseModel):
    # As vLLM's: "score-<request id>".
    id: str
    object: Literal["list"] = "list"
    # Unix time of the answer.
    created: int
    model: str
    # One per pair, in pair order.
    data: list[ScoreResponseData]
    # Tokens embedded: each distinct text once, however many pairs it is in (a cross-encoder: each pair's).
    usage: EmbeddingUsage


class RerankRequest(BaseModel):
    """Documents to order by relevance to a query."""

    model_config = ConfigDict(extra="forbid")

    # Absent: the default served model.
    model: str | None = None
    query: str
    documents: list[str]
    # Answer the top_n most relevant documents; 0 (the default): all of them.
    top_n: int = Field(default=0, ge=0)
    # Keep only the last k tokens of the query and of each document (-1: as many as the context holds).
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    # Lower values are scheduled first. It travels to the engine as an INT32 tensor.
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1)

    _texts_given = field_validator("query", "documents")(texts_given)


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    # The document's position in the request.
    index: int
    document: RerankDocument
    # Cosine similarity of the query's and the document's embeddings, in [-1, 1]; a cross-encoder's: the
    # sigmoid of the pair's logit, in (0, 1).
    relevance_score: float


class RerankUsage(BaseModel):
    # Tokens embedded: each distinct text (the query, the documents) once (a cross-encoder: each pair's).
    total_tokens: int


class RerankResponse(BaseModel):
    # As vLLM's: "rerank-<request id>".
    id: str
    model: str
    usage: RerankUsage
    # Most relevant first (ties in document order), at most top_n of them.
    results: list[RerankResult]
