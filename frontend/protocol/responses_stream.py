"""/v1/responses stream events: OpenAI's event names and payloads, each numbered by `sequence_number`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from frontend.protocol.errors import ErrorInfo
from frontend.protocol.responses import Item, OutputText, ReasoningText, ResponseObject


class StreamEvent(BaseModel):
    """One server-sent event of a response stream; subclasses add the payload of their `type`."""

    type: str
    sequence_number: int


class LifecycleEvent(StreamEvent):
    # response.created / queued / in_progress / completed / incomplete / failed
    response: ResponseObject


class OutputItemEvent(StreamEvent):
    # response.output_item.added / done
    output_index: int
    item: Item


class ContentPartEvent(StreamEvent):
    # response.content_part.added / done
    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class TextDeltaEvent(StreamEvent):
    # response.output_text.delta
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class TextDoneEvent(StreamEvent):
    # response.output_text.done
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ReasoningDeltaEvent(StreamEvent):
    # response.reasoning_text.delta
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningDoneEvent(StreamEvent):
    # response.reasoning_text.done
    item_id: str
    output_index: int
    content_index: int
    text: str


class ArgumentsDeltaEvent(StreamEvent):
    # response.function_call_arguments.delta
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(StreamEvent):
    # response.function_call_arguments.done
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(StreamEvent):
    # error: the stream failed after the HTTP 200 went out.
    code: str | None
    message: str
    param: str | None

    @classmethod
    def of(cls, error: ErrorInfo, sequence_number: int) -> ErrorEvent:
        return cls(
            type="error",
            sequence_number=sequence_number,
            code=error.code or error.type,
            message=error.message,
            param=error.param,
        )
