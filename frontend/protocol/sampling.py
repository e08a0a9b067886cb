"""Request fields shared by chat and legacy completions: sampling, stopping, output format and scheduling
knobs, in OpenAI's names plus vLLM's extensions; and vLLM's prompt logprobs, which both return."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Send one more chunk before [DONE] carrying the request's usage (and `usage: null` on the others).
    include_usage: bool = False
    # vLLM extension: usage on every chunk.
    continuous_usage_stats: bool = False
    # OpenAI's random padding against length side channels: this server sends none (as the Responses API's).
    include_obfuscation: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: dict[str, Any] | None = None
    # vLLM's structural_tag: xgrammar's `format`, or vLLM's older `structures` (begin, schema, end) with the
    # `triggers` that start them.
    format: dict[str, Any] | None = None
    structures: list[dict[str, Any]] | None = None
    triggers: list[str] | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        if self.type == "structural_tag" and self.format is None and (self.structures is None or self.triggers is None):
            raise ValueError("response_format of type structural_tag needs a format, or structures and triggers")
        return self

    def structured_outputs(self) -> dict[str, Any] | None:
        """The engine's structured_outputs constraint for this format; None for text."""
        if self.type == "json_object":
            return {"json_object": True}
        if self.type == "json_schema":
            return {"json": (self.json_schema or {}).get("schema", {})}
        if self.type == "structural_tag":
            # The engine reads both spellings from the whole object, as vLLM hands it to xgrammar.
            return {"structural_tag": self.model_dump_json(exclude_none=True, exclude={"json_schema"})}
        return None


class SamplingRequest(BaseModel):
    """Fields every generation request accepts. Unknown fields are rejected (400 naming them), never ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    # vLLM's request id in the body: names the request (chatcmpl-<id>) when no X-Request-Id header does,
    # and goes back as that header, so it is held to what a header value may hold.
    request_id: str | None = Field(default=None, min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    # A 64-bit signed integer, as vLLM bounds it.
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # vLLM: with skip_special_tokens off, special tokens in the text are joined by spaces.
    spaces_between_special_tokens: bool = True
    # vLLM: logprob tokens named "token_id:<id>" instead of their text.
    return_tokens_as_token_ids: bool = False
    n: int = Field(default=1, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    logit_bias: dict[str, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    # vLLM: each prompt token's logprob and this many most likely tokens at its position (not streamed, as in
    # vLLM; the request then skips the prefix cache: cached tokens have no logits to read).
    prompt_logprobs: int | None = Field(default=None, ge=0, le=20)
    # vLLM: keep only the last k prompt tokens (-1: as many as the context allows).
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM: token ids beside the text, the prompt's (`prompt_token_ids`) and each choice's (`token_ids`;
    # streamed, each chunk's and the prompt's on a choice's first chunk).
    return_token_ids: bool = False
    # vLLM: tokens per streamed chunk; raises the server's stream_interval, never lowers it. The first and
    # last chunks are sent at once. No effect without `stream`.
    stream_interval: int | None = Field(default=None, ge=1)
    user: str | None = None
    # Accepted for SDK compatibility: this server keeps nothing, so `store` has no effect to refuse.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    # vLLM: lower values are scheduled first. It travels to the engine as an INT32 tensor.
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1)
    # vLLM: separates prefix-cache entries between tenants.
    cache_salt: str | None = None
    # vLLM structured outputs (and the legacy guided_* spellings): forwarded, the engine decides.
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    # OpenAI's output format (vLLM takes it on completions too): JSON, a JSON schema, or vLLM's structural tag.
    response_format: ResponseFormat | None = None
    # vLLM's structured-output backend choice: xgrammar is the one here ("auto" picks it too).
    guided_decoding_backend: str | None = None
    # vLLM's beam search: n beams (frontend/serving/beam_search.py), ranked by cumulative logprob over
    # length ** length_penalty; without it length_penalty has nothing to weigh, as in vLLM.
    use_beam_search: bool = False
    length_penalty: float = 1.0

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class PromptLogprob(BaseModel):
    """vLLM's logprob entry of a prompt position: keyed by token id in `prompt_logprobs`."""

    logprob: float
    # The token's rank in the vocabulary there (1: the most likely).
    rank: int | None
    decoded_token: str


# One entry per prompt token (None for the first: nothing predicts it), token id -> its logprob: the
# prompt's token and the `prompt_logprobs` most likely tokens there.
PromptLogprobs = list[dict[int, PromptLogprob] | None]
