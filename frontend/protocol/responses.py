"""/v1/responses: the request, the items of a conversation (input and output alike) and the response object.

Item models serve three roles at once: the `input` a client sends, the output items this server generates,
and what the store keeps (input items are listed back and replayed for `previous_response_id`). Their
shapes are OpenAI's, so the official SDK parses everything we return.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

ItemStatus = Literal["in_progress", "completed", "incomplete"]
ResponseStatus = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
# Items and content parts ignore fields they do not model: clients send a response's output back as input
# (`input=[*response.output, ...]`), and the SDK's output objects carry client-side and newer fields
# (`parsed_arguments`, `phase`, `caller`, ...) that mean nothing to generation.
ITEM_CONFIG = ConfigDict(extra="ignore")


class InputText(BaseModel):
    model_config = ITEM_CONFIG

    type: Literal["input_text"] = "input_text"
    text: str


class OutputText(BaseModel):
    model_config = ITEM_CONFIG

    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    # Per-token log probabilities when `include` asked for them.
    logprobs: list[dict[str, Any]] | None = None


class Refusal(BaseModel):
    model_config = ITEM_CONFIG

    type: Literal["refusal"] = "refusal"
    refusal: str


def _content_tag(part: Any) -> str | None:
    kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
    return kind if isinstance(kind, str) else None


ContentPart = Annotated[
    Annotated[InputText, Tag("input_text")]
    | Annotated[OutputText, Tag("output_text")]
    | Annotated[Refusal, Tag("refusal")],
    Discriminator(
        _content_tag,
        custom_error_type="unsupported_content",
        custom_error_message="content part type not supported: this model takes text only "
        "(input_text, output_text, refusal)",
    ),
]


class MessageItem(BaseModel):
    """A message: user/system/developer input, or an assistant message (generated or replayed)."""

    model_config = ITEM_CONFIG

    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    status: ItemStatus | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.refusal if isinstance(part, Refusal) else part.text for part in self.content)


class FunctionCallItem(BaseModel):
    """A call the model made to one of the request's function tools."""

    model_config = ITEM_CONFIG

    type: Literal["function_call"] = "function_call"
    id: str | None = None
    # What the client's `function_call_output` refers back to.
    call_id: str
    name: str
    # JSON text exactly as generated.
    arguments: str
    status: ItemStatus | None = None


class FunctionCallOutputItem(BaseModel):
    """The client's result of a function call."""

    model_config = ITEM_CONFIG

    type: Literal["function_call_output"] = "function_call_output"
    id: str | None = None
    call_id: str
    output: str | list[InputText]
    status: ItemStatus | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(part.text for part in self.output)


class SummaryText(BaseModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(BaseModel):
    """The model's reasoning (from the reasoning parser), replayable as the next assistant turn's thinking."""

    model_config = ITEM_CONFIG

    type: Literal["reasoning"] = "reasoning"
    id: str | None = None
    summary: list[SummaryText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    # Accepted only as null: this server has no encrypted reasoning to hand out or read back.
    encrypted_content: str | None = None
    status: ItemStatus | None = None

    @field_validator("encrypted_content")
    @classmethod
    def _no_encryption(cls, value: str | None) -> None:
        if value is not None:
            raise ValueError(
                "encrypted reasoning is not supported: send the reasoning item's content instead"
            )
        return None

    def text(self) -> str:
        return "".join(part.text for part in self.content or [])


def _item_tag(item: Any) -> str | None:
    # OpenAI's "easy" input messages carry no `type`.
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", None)
    return kind if isinstance(kind, str) else None


Item = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(
        _item_tag,
        custom_error_type="unsupported_item",
        custom_error_message="item type not supported: use message, function_call, function_call_output "
        "or reasoning items",
    ),
]
ITEM = TypeAdapter(Item)


class FunctionTool(BaseModel):
    """A function the model may call; other tool types (web_search, file_search, mcp, ...) are refused."""

    model_config = ConfigDict(extra="forbid")

    type: str
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _function_only(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "function":
            raise ValueError(
                f"tool type {value.get('type')!r} is not supported: this server runs function tools only"
            )
        return value


class FunctionToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    # Written back as OpenAI spells it ("schema"; the attribute's name would shadow BaseModel.schema).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    type: Literal["text", "json_object", "json_schema"]
    # json_schema only: OpenAI's name, description, schema and strict flag.
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and (self.schema_ is None or not self.name):
            raise ValueError("json_schema format needs a name and a schema")
        return self


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: TextFormat = Field(default_factory=lambda: TextFormat(type="text"))
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Random padding against length side channels; this server sends none, so either value is honoured.
    include_obfuscation: bool | None = None


class ConversationReference(BaseModel):
    """The conversation (/v1/conversations) a response belongs to: `{"id": ...}`, or the id alone."""

    model_config = ConfigDict(extra="forbid")

    id: str


class ResponsesRequest(BaseModel):
    """POST /v1/responses. Unknown fields are a 400 naming them, never silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: str | list[Item] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    # The conversation whose items precede this input; the turn is added to it once the response ends.
    conversation: str | ConversationReference | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    max_tool_calls: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    store: bool = True
    background: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    include: list[str] | None = None
    # Maps to the engine's `cache_salt`: requests with different keys never share prefix-cache blocks.
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None

    def conversation_reference(self) -> ConversationReference | None:
        if isinstance(self.conversation, str):
            return ConversationReference(id=self.conversation)
        return self.conversation


class ToolOutput(BaseModel):
    """One result for POST /v1/responses/{id}/tool_outputs (`call_id`, or `tool_call_id` as in chat)."""

    model_config = ConfigDict(extra="forbid")

    call_id: str | None = None
    tool_call_id: str | None = None
    output: str

    @model_validator(mode="after")
    def _one_id(self) -> ToolOutput:
        if (self.call_id is None) == (self.tool_call_id is None):
            raise ValueError("give exactly one of call_id and tool_call_id")
        return self

    @property
    def id(self) -> str:
        return self.call_id or self.tool_call_id or ""


class ToolOutputsRequest(BaseModel):
    """Our extension: continue a response that stopped at function calls with their results."""

    model_config = ConfigDict(extra="forbid")

    tool_outputs: list[ToolOutput] = Field(min_length=1)
    stream: bool = False


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """The response resource, as created, streamed in lifecycle events, stored and retrieved."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    model: str
    output: list[Item] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    conversation: ConversationReference | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    reasoning: ReasoningConfig | None = None
    service_tier: str | None = None
    store: bool = True
    background: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    text: TextConfig = Field(default_factory=TextConfig)
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice = "auto"
    tools: list[FunctionTool] = Field(default_factory=list)
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None


class ItemList(BaseModel):
    """GET /v1/responses/{id}/input_items."""

    object: Literal["list"] = "list"
    data: list[Item]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
