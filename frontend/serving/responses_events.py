"""Output items of a response and the stream events describing them, built from the chat path's deltas.

One `ResponseEvents` follows one generation: `ChatOutputProcessor` splits the text into reasoning, content
and tool-call pieces, and this turns each piece into OpenAI's items (reasoning, message, function_call) and
events (`output_item.added`, `content_part.added`, `*.delta`, `*.done`, ...), numbering every event. The
non-streamed answer is the same object with its events dropped, so a stream's final response and a
retrieved one are equal by construction.
"""

from __future__ import annotations

from typing import Any

from frontend.errors import APIError
from frontend.protocol.chat import ChatDelta
from frontend.protocol.responses import (
    FunctionCallItem,
    IncompleteDetails,
    Item,
    MessageItem,
    OutputText,
    ReasoningItem,
    ReasoningText,
    ResponseError,
    ResponseObject,
    ResponseUsage,
)
from frontend.protocol.responses_stream import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    ErrorEvent,
    LifecycleEvent,
    OutputItemEvent,
    ReasoningDeltaEvent,
    ReasoningDoneEvent,
    StreamEvent,
    TextDeltaEvent,
    TextDoneEvent,
)
from frontend.serving.context import unix_now
from frontend.serving.responses_input import new_item_id


class ResponseEvents:
    """Builds `response.output` from deltas and returns the events of each step, numbered from 0."""

    def __init__(self, response: ResponseObject, max_calls: int | None, logprobs: bool = False) -> None:
        # The response being built; its output items are mutated in place as deltas arrive.
        self.response = response
        self._max_calls = max_calls
        # Message text carries per-token logprobs (top_logprobs or include asked for them).
        self._logprobs = logprobs
        # Logprobs of tokens whose text the parsers still hold back; they go with the next content.
        self._pending_logprobs: list[dict[str, Any]] = []
        self._sequence = 0
        # Output index of the item receiving deltas, or None.
        self._open: int | None = None
        # Parser call index -> output index, for the calls that are kept.
        self._calls: dict[int, int] = {}
        # Parser call indices dropped by parallel_tool_calls=false / max_tool_calls.
        self._dropped: set[int] = set()

    def _number(self, event: StreamEvent) -> StreamEvent:
        event.sequence_number = self._sequence
        self._sequence += 1
        return event

    def lifecycle(self, kind: str) -> StreamEvent:
        """`response.<kind>` carrying a snapshot of the response as it is now."""
        snapshot = self.response.model_copy(deep=True)
        return self._number(LifecycleEvent(type=f"response.{kind}", sequence_number=0, response=snapshot))

    def _item_event(self, kind: str, index: int) -> StreamEvent:
        item = self.response.output[index].model_copy(deep=True)
        return self._number(
            OutputItemEvent(
                type=f"response.output_item.{kind}", sequence_number=0, output_index=index, item=item
            )
        )

    def _part_event(self, kind: str, index: int, part: OutputText | ReasoningText) -> StreamEvent:
        item_id = self.response.output[index].id or ""
        return self._number(
            ContentPartEvent(
                type=f"response.content_part.{kind}",
                sequence_number=0,
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=part.model_copy(deep=True),
            )
        )

    def _open_item(self, item: Item) -> list[StreamEvent]:
        events = self._close("completed")
        self.response.output.append(item)
        self._open = len(self.response.output) - 1
        events.append(self._item_event("added", self._open))
        if isinstance(item, MessageItem):
            events.append(self._part_event("added", self._open, OutputText(text="")))
            item.content = [OutputText(text="", logprobs=[] if self._logprobs else None)]
        elif isinstance(item, ReasoningItem):
            events.append(self._part_event("added", self._open, ReasoningText(text="")))
            item.content = [ReasoningText(text="")]
        return events

    def _close(self, status: str) -> list[StreamEvent]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        item = self.response.output[index]
        item.status = status  # type: ignore[assignment]
        item_id = item.id or ""
        events: list[StreamEvent] = []
        if isinstance(item, MessageItem) and isinstance(item.content, list):
            [part] = item.content
            assert isinstance(part, OutputText)
            done: StreamEvent = TextDoneEvent(
                type="response.output_text.done",
                sequence_number=0,
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=part.text,
            )
            events += [self._number(done), self._part_event("done", index, part)]
        elif isinstance(item, ReasoningItem):
            text = item.text()
            done = ReasoningDoneEvent(
                type="response.reasoning_text.done",
                sequence_number=0,
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=text,
            )
            events += [self._number(done), self._part_event("done", index, ReasoningText(text=text))]
        elif isinstance(item, FunctionCallItem):
            done = ArgumentsDoneEvent(
                type="response.function_call_arguments.done",
                sequence_number=0,
                item_id=item_id,
                output_index=index,
                name=item.name,
                arguments=item.arguments,
            )
            events.append(self._number(done))
        events.append(self._item_event("done", index))
        return events

    def _current(self, kind: type) -> bool:
        return self._open is not None and isinstance(self.response.output[self._open], kind)

    def feed(self, delta: ChatDelta, logprobs: list[dict[str, Any]] | None = None) -> list[StreamEvent]:
        """The events of one parsed delta: reasoning first, then content, then tool-call pieces.

        `logprobs` are those of the tokens behind this delta; they are kept with message text only
        (tokens of reasoning or tool calls have no place for them in OpenAI's shapes)."""
        events: list[StreamEvent] = []
        self._pending_logprobs += logprobs or []
        if not delta.content and (delta.reasoning_content or delta.tool_calls):
            self._pending_logprobs = []
        if delta.reasoning_content:
            if not self._current(ReasoningItem):
                events += self._open_item(ReasoningItem(id=new_item_id("reasoning"), status="in_progress"))
            assert self._open is not None
            item = self.response.output[self._open]
            assert isinstance(item, ReasoningItem) and item.content
            item.content[0].text += delta.reasoning_content
            events.append(
                self._number(
                    ReasoningDeltaEvent(
                        type="response.reasoning_text.delta",
                        sequence_number=0,
                        item_id=item.id or "",
                        output_index=self._open,
                        content_index=0,
                        delta=delta.reasoning_content,
                    )
                )
            )
        if delta.content:
            if not self._current(MessageItem):
                events += self._open_item(
                    MessageItem(id=new_item_id("message"), role="assistant", content=[], status="in_progress")
                )
            assert self._open is not None
            message = self.response.output[self._open]
            assert isinstance(message, MessageItem) and isinstance(message.content, list)
            part = message.content[0]
            assert isinstance(part, OutputText)
            part.text += delta.content
            token_logprobs, self._pending_logprobs = self._pending_logprobs, []
            if part.logprobs is not None:
                part.logprobs += token_logprobs
            events.append(
                self._number(
                    TextDeltaEvent(
                        type="response.output_text.delta",
                        sequence_number=0,
                        item_id=message.id or "",
                        output_index=self._open,
                        content_index=0,
                        delta=delta.content,
                        logprobs=token_logprobs,
                    )
                )
            )
        for piece in delta.tool_calls or []:
            if piece.id is not None:
                if self._max_calls is not None and len(self._calls) >= self._max_calls:
                    self._dropped.add(piece.index)
                    continue
                call = FunctionCallItem(
                    id=new_item_id("function_call"),
                    call_id=piece.id,
                    name=piece.function.name or "",
                    arguments="",
                    status="in_progress",
                )
                events += self._open_item(call)
                assert self._open is not None
                self._calls[piece.index] = self._open
            if piece.index in self._dropped or not piece.function.arguments:
                continue
            index = self._calls[piece.index]
            call_item = self.response.output[index]
            assert isinstance(call_item, FunctionCallItem)
            call_item.arguments += piece.function.arguments
            events.append(
                self._number(
                    ArgumentsDeltaEvent(
                        type="response.function_call_arguments.delta",
                        sequence_number=0,
                        item_id=call_item.id or "",
                        output_index=index,
                        delta=piece.function.arguments,
                    )
                )
            )
        return events

    def finish(self, finish_reason: str | None, usage: ResponseUsage) -> list[StreamEvent]:
        """Close the open item and end the response: `response.completed`, or `.incomplete` at the limit."""
        truncated = finish_reason == "length"
        events = self._close("incomplete" if truncated else "completed")
        self.response.usage = usage
        if truncated:
            self.response.status = "incomplete"
            self.response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
            return [*events, self.lifecycle("incomplete")]
        self.response.status = "completed"
        self.response.completed_at = unix_now()
        return [*events, self.lifecycle("completed")]

    def fail(self, error: APIError) -> list[StreamEvent]:
        """The generation failed mid-way: `error`, then `response.failed` with what was made so far."""
        events = self._close("incomplete")
        self.response.status = "failed"
        self.response.error = ResponseError(
            code="invalid_prompt" if error.status == 400 else "server_error", message=error.message
        )
        events.append(self._number(ErrorEvent.of(error.body().error, 0)))
        return [*events, self.lifecycle("failed")]

    def cancel(self) -> None:
        """The client cancelled: the open item stays incomplete, no further events."""
        self._close("incomplete")
        self.response.status = "cancelled"


# What a background response says when the replica generating it stopped (crashed, was killed) before it
# ended, and another replica found it abandoned in the shared store.
ABANDONED_MESSAGE = "The server generating this background response stopped before it finished."


def end_abandoned(response: ResponseObject, status: str) -> list[StreamEvent]:
    """An abandoned background response ended where its last stored state left it (`status`: failed or
    cancelled; an item still open stays incomplete), and the stream events that end it, to be numbered
    after the stored ones: `error` then `response.failed`, as `ResponseEvents.fail` ends a response; none for
    a cancellation, as `ResponseEvents.cancel`."""
    for item in response.output:
        if getattr(item, "status", None) == "in_progress":
            item.status = "incomplete"  # type: ignore[union-attr]
    response.status = status  # type: ignore[assignment]
    if status != "failed":
        return []
    response.error = ResponseError(code="server_error", message=ABANDONED_MESSAGE)
    error = ErrorEvent(type="error", sequence_number=0, code="server_error", message=ABANDONED_MESSAGE, param=None)
    ended = LifecycleEvent(type="response.failed", sequence_number=0, response=response.model_copy(deep=True))
    return [error, ended]
