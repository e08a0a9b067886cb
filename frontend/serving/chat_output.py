"""Turns one choice's generated text into chat deltas: reasoning first, then content and tool calls.

The streamed path feeds each Triton delta; the non-streamed path feeds the whole text once and merges
the deltas, so both produce the same message.
"""

from __future__ import annotations

from frontend.protocol.chat import ChatDelta, ChatResponseMessage, DeltaFunctionCall, DeltaToolCall
from frontend.reasoning import ReasoningDelta, ThinkReasoningParser
from frontend.tool_parsers import ToolParseDelta, ToolParser, extract


class ChatOutputProcessor:
    """Reasoning extraction (optional) feeding tool-call extraction (optional) for one choice."""

    def __init__(
        self,
        reasoning: ThinkReasoningParser | None,
        tools: ToolParser | None,
        max_tool_calls: int | None = None,
    ) -> None:
        self._reasoning = reasoning
        self._tools = tools
        # parallel_tool_calls=false keeps the first call; the model may still have written more.
        self._max_tool_calls = max_tool_calls
        # True once any tool call began: the finish reason becomes "tool_calls".
        self.saw_tool_calls = False

    def feed(self, text: str) -> ChatDelta | None:
        split = self._reasoning.feed(text) if self._reasoning else ReasoningDelta(content=text)
        return self._delta(split, final=False)

    def finish(self) -> ChatDelta | None:
        split = self._reasoning.finish() if self._reasoning else ReasoningDelta()
        return self._delta(split, final=True)

    def _delta(self, split: ReasoningDelta, final: bool) -> ChatDelta | None:
        if self._tools is None:
            parsed = ToolParseDelta(content=split.content)
        else:
            parsed = self._tools.feed(split.content) if split.content else ToolParseDelta()
            if final:
                parsed.extend(self._tools.finish())
        calls = [
            DeltaToolCall(
                index=piece.index,
                id=piece.id,
                type="function" if piece.id else None,
                function=DeltaFunctionCall(name=piece.name, arguments=piece.arguments),
            )
            for piece in parsed.calls
            if self._max_tool_calls is None or piece.index < self._max_tool_calls
        ]
        self.saw_tool_calls = self.saw_tool_calls or bool(calls)
        if not (split.reasoning or parsed.content or calls):
            return None
        return ChatDelta(
            reasoning_content=split.reasoning or None,
            content=parsed.content or None,
            tool_calls=calls or None,
        )

    def message(self, role: str, text: str) -> ChatResponseMessage:
        """The whole message of a non-streamed choice."""
        split = ReasoningDelta(content=text)
        if self._reasoning is not None:
            split = self._reasoning.feed(text)
            tail = self._reasoning.finish()
            split.reasoning += tail.reasoning
            split.content += tail.content
        content, tool_calls = (
            (split.content, []) if self._tools is None else extract(self._tools, split.content)
        )
        tool_calls = tool_calls[: self._max_tool_calls]
        self.saw_tool_calls = bool(tool_calls)
        return ChatResponseMessage(
            role=role,
            content=(content or None) if (tool_calls or self._reasoning) else content,
            reasoning_content=split.reasoning or None,
            tool_calls=tool_calls or None,
        )
