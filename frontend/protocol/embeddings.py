"""/v1/embeddings: OpenAI's request and response, with vLLM's extensions: its EmbeddingCompletionRequest
(`input`) and EmbeddingChatRequest (`messages`, rendered with the chat template) in one model. Its shared bases
are /pooling's (frontend/protocol/pooling.py) and /classify's (frontend/protocol/classify.py) too."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from frontend.protocol.chat import ChatMessage

# OpenAI's limit on the inputs of one request; each is one engine request, all in flight at once.
MAX_INPUTS = 2048
# vLLM's chat-form fields: with `input` they would change nothing, so they are refused there.
CHAT_FIELDS = ("add_generation_prompt", "continue_final_message", "chat_template", "chat_template_kwargs")


class InputsRequest(BaseModel):
    """What every endpoint that pools its inputs shares (/v1/embeddings, /pooling, /classify): the inputs, in
    one of two forms, and how they are scheduled. Unknown fields (vLLM's `embed_dtype`,
    `mm_processor_kwargs`, ...) are refused naming them."""

    model_config = ConfigDict(extra="forbid")

    # OpenAI requires it, vLLM does not: absent, the default served model.
    model: str | None = None
    # One text, a batch of texts, one token-id input or a batch of token-id inputs. Exactly one of `input`
    # and `messages`.
    input: str | list[str] | list[int] | list[list[int]] | None = None
    # vLLM's chat form: one conversation, rendered with the chat template into one input.
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    user: str | None = None
    # vLLM's request id in the body (as chat's: the X-Request-Id header when none was sent).
    request_id: str | None = Field(default=None, min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")
    # vLLM: keep only the last k tokens of each input (-1: as many as the context holds).
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    # vLLM: the tokenizer's special tokens (a BOS) around the input. None: true for texts, false for
    # messages (their template writes its own, as vLLM's chat form assumes); token-id inputs go as sent.
    add_special_tokens: bool | None = None
    # vLLM's chat form, as chat completions takes them, with vLLM's embedding defaults: no generation
    # prompt (the conversation is embedded as it stands).
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM: lower values are scheduled first. It travels to the engine as an INT32 tensor.
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1)
    # vLLM: separates prefix-cache entries between tenants.
    cache_salt: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list | None) -> str | list | None:
        """OpenAI refuses an empty string, empty arrays and more than MAX_INPUTS inputs (the length of one
        token-id input is the context length's concern)."""
        if value is None:
            return value
        if isinstance(value, str):
            if not value:
                raise ValueError("input must not be an empty string")
            return value
        if not value:
            raise ValueError("input must not be an empty list")
        if isinstance(value[0], int):
            return value
        if any(not item for item in value):
            raise ValueError("input must not hold an empty string or an empty list")
        if len(value) > MAX_INPUTS:
            raise ValueError(f"input may hold at most {MAX_INPUTS} inputs, got {len(value)}")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> InputsRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("send exactly one of 'input' and 'messages'")
        if self.input is not None:
            sent = [name for name in CHAT_FIELDS if name in self.model_fields_set]
            if sent:
                raise ValueError(f"{', '.join(sent)} only apply to 'messages', not to 'input'")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        return self

    def pooling_parameters(self) -> dict[str, Any]:
        """The llm model's `pooling_parameters` (vLLM's PoolingParams names): what the request set, the
        engine's defaults for the rest."""
        truncate = self.truncate_prompt_tokens
        return {} if truncate is None else {"truncate_prompt_tokens": truncate}


class EmbeddingInputRequest(InputsRequest):
    """What /v1/embeddings and /pooling share: the inputs, and how their vectors are made and sent."""

    # "base64": each vector's little-endian float32 bytes, base64-encoded (what the OpenAI SDK asks for
    # unless told otherwise, and decodes itself).
    encoding_format: Literal["float", "base64"] = "float"
    # vLLM: L2-normalize the vectors; None: the engine's default (true).
    normalize: bool | None = None

    def pooling_parameters(self) -> dict[str, Any]:
        parameters = super().pooling_parameters()
        if self.normalize is not None:
            parameters["normalize"] = self.normalize
        return parameters


class EmbeddingRequest(EmbeddingInputRequest):
    # Keep the first this many values of each vector (Matryoshka), normalized after the cut.
    dimensions: int | None = Field(default=None, ge=1)

    def pooling_parameters(self) -> dict[str, Any]:
        parameters = super().pooling_parameters()
        if self.dimensions is not None:
            parameters["dimensions"] = self.dimensions
        return parameters


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    # The vector, or its encoding under encoding_format "base64".
    embedding: list[float] | str
    # The input's position in the request.
    index: int


class EmbeddingUsage(BaseModel):
    # Tokens of every input, as the engine embedded them (after truncate_prompt_tokens).
    prompt_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int) -> EmbeddingUsage:
        """A pooling request's usage: its inputs are all it spends."""
        return cls(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)


class EmbeddingResponse(BaseModel):
    # vLLM's extension, as its: "embd-<request id>".
    id: str
    object: Literal["list"] = "list"
    # vLLM's extension: Unix time of the answer.
    created: int
    model: str
    # One per input, in input order.
    data: list[EmbeddingData]
    usage: EmbeddingUsage
