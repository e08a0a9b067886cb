"""/v1/chat/completions: request, response and stream chunk models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from frontend.protocol.sampling import PromptLogprobs, SamplingRequest
from frontend.protocol.usage import UsageInfo


class TextContentPart(BaseModel):
    """The only content part this text-only server understands; images and audio fail validation."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    # JSON text, exactly as the model produced it.
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One input message; `developer` is rendered as `system` for templates that predate it."""

    model_config = ConfigDict(extra="forbid")

    # `function`: OpenAI's legacy function result (see `functions` below).
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    # An assistant's legacy function call (see `functions` below).
    function_call: FunctionCall | None = None
    # The rest of the SDK's own assistant message (ChatCompletionMessage.model_dump()), so that a reply can
    # go back as history unchanged: a refusal and annotations have no place in the chat template and are
    # left out; audio must be null (this server produces none).
    refusal: str | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, content: Any) -> Any:
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(
                        f"content part type {kind!r} is not supported: this model takes text only"
                    )
        return content

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDefinition(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # OpenAI's legacy function calling, served as tools (frontend.legacy_functions): the answer's
    # one call comes back as `function_call` with finish_reason "function_call".
    functions: list[FunctionDefinition] | None = Field(default=None, min_length=1)
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    # The chat template's `reasoning_effort`, and under a reasoning parser its `enable_thinking`
    # (frontend.reasoning.effort_template_kwargs); chat_template_kwargs override both.
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    # The engine's cache_salt unless one is given, as in the Responses API: requests with different keys
    # never share prefix-cache blocks.
    prompt_cache_key: str | None = None
    # Text out only.
    modalities: list[Literal["text"]] | None = None
    # Accepted with no effect on the answer, as vLLM does: an abuse-tracking id (as `user`), and hints for
    # OpenAI's own serving (how long its prompt cache keeps a prefix, how terse its GPT-5 models write, a
    # predicted output that only speeds its decoding up).
    safety_identifier: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    prediction: dict[str, Any] | None = None
    # vLLM templating extensions.
    add_generation_prompt: bool = True
    # The tokenizer's own special tokens (a BOS) around the templated prompt, which usually writes its own.
    add_special_tokens: bool = False
    continue_final_message: bool = False
    # vLLM: documents for retrieval-augmented templates, handed to the chat template as `documents`.
    documents: list[dict[str, str]] | None = None
    # vLLM: false leaves the reasoning (still generated, under a reasoning parser) out of the answer.
    include_reasoning: bool = True
    # The answer starts with the last message's text when that message has the answer's role: an
    # assistant prefix continued with continue_final_message comes back whole.
    echo: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_template_flags(self) -> ChatCompletionRequest:
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("continue_final_message needs an assistant message last")
        return self

    def output_token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ChatResponseMessage(BaseModel):
    role: str
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None
    # The call of a request that gave legacy `functions`, in place of tool_calls.
    function_call: FunctionCall | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    # The token's UTF-8 bytes (a token may hold part of a character).
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """OpenAI's chat logprobs: one entry per generated token."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None
    # vLLM extension: the stop string or stop token id that ended the choice; None for the tokenizer's EOS
    # and other ends.
    stop_reason: int | str | None = None
    # vLLM's return_token_ids: the choice's output token ids.
    token_ids: list[int] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str
    service_tier: str | None = None
    # vLLM's return_token_ids: the templated prompt's token ids.
    prompt_token_ids: list[int] | None = None
    # vLLM's prompt_logprobs: the templated prompt's (after truncate_prompt_tokens).
    prompt_logprobs: PromptLogprobs | None = None


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class ChatDelta(BaseModel):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    # As ChatResponseMessage's, streamed: the name first, then the arguments in pieces.
    function_call: DeltaFunctionCall | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None
    # As ChatChoice's, on the chunk that finishes the choice.
    stop_reason: int | str | None = None
    # vLLM's return_token_ids: this chunk's output token ids.
    token_ids: list[int] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str
    service_tier: str | None = None
    # vLLM's return_token_ids: the prompt's token ids, on the stream's first chunk.
    prompt_token_ids: list[int] | None = None
