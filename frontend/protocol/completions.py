"""/v1/completions (legacy): request, response and stream chunk models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from frontend.protocol.sampling import PromptLogprobs, SamplingRequest
from frontend.protocol.usage import UsageInfo


class CompletionRequest(SamplingRequest):
    # One text, a batch of texts, one token-id prompt or a batch of token-id prompts.
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = Field(default=None, ge=1)
    # vLLM: the tokenizer's special tokens (a BOS) around a text prompt; token-id prompts go as sent.
    add_special_tokens: bool = True

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: str | list) -> str | list:
        if isinstance(prompt, list) and (not prompt or any(isinstance(p, list) and not p for p in prompt)):
            raise ValueError("prompt must not be empty")
        return prompt


class CompletionLogprobs(BaseModel):
    """Legacy completions logprobs: parallel lists, one entry per token of the choice's text."""

    # Each token's text.
    tokens: list[str] = Field(default_factory=list)
    # None for the first prompt token when the prompt is echoed (nothing predicts it).
    token_logprobs: list[float | None] = Field(default_factory=list)
    # The most likely tokens at each position (token text -> logprob); None where token_logprobs is.
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    # Character offset of each token in the choice's text.
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None
    # vLLM extension: the stop string or stop token id that ended the choice; None for the tokenizer's EOS
    # and other ends.
    stop_reason: int | str | None = None
    # vLLM's return_token_ids: the choice's prompt (streamed: on its first chunk) and output token ids.
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None
    # vLLM's prompt_logprobs: the choice's prompt (after truncate_prompt_tokens).
    prompt_logprobs: PromptLogprobs | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str
    service_tier: str | None = None
