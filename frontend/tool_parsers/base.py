"""What every tool-call parser produces, and how a whole text is parsed with the streaming parser.

Parsers are incremental: `feed()` takes the next text delta and returns what became certain, touching only
the new characters (plus a short held-back tail that might start a marker). Non-streamed extraction is the
same parser fed the whole text at once, so streamed and non-streamed results agree by construction.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from frontend.protocol.chat import FunctionCall, ToolCall

# The parameters JSON schema of each function a request offers, by function name.
FunctionSchemas = Mapping[str, Mapping[str, Any]]


@dataclass
class ToolCallDelta:
    """A piece of one tool call: its name first (with a fresh id), then argument fragments."""

    # Position of the call among this message's tool calls.
    index: int
    # Set on the first delta of a call only.
    id: str | None = None
    name: str | None = None
    # JSON text fragment; the fragments of one call concatenate to its arguments.
    arguments: str = ""


@dataclass
class ToolParseDelta:
    """What one `feed()` made certain: plain assistant text and tool-call pieces."""

    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)

    def extend(self, other: ToolParseDelta) -> None:
        self.content += other.content
        self.calls.extend(other.calls)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def partial_marker_length(text: str, marker: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `marker` (to hold back)."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0


class ToolParser(ABC):
    """Incremental extraction of tool calls from one generated message."""

    @classmethod
    def for_tools(cls, tools: FunctionSchemas) -> ToolParser:
        """The parser of one message answering a request that offers `tools`. Most syntaxes carry all
        they need and ignore them; one whose arguments are untyped text reads the declared types there."""
        return cls()

    @abstractmethod
    def feed(self, text: str) -> ToolParseDelta:
        """Consume the next text delta."""

    @abstractmethod
    def finish(self) -> ToolParseDelta:
        """The text ended: release whatever was held back."""


def extract(parser: ToolParser, text: str) -> tuple[str, list[ToolCall]]:
    """Non-streamed extraction: the content and the complete tool calls of a whole text."""
    delta = parser.feed(text)
    delta.extend(parser.finish())
    calls: dict[int, ToolCall] = {}
    for piece in delta.calls:
        if piece.index not in calls:
            calls[piece.index] = ToolCall(
                id=piece.id or new_call_id(), function=FunctionCall(name=piece.name or "", arguments="")
            )
        calls[piece.index].function.arguments += piece.arguments
    return delta.content, [calls[index] for index in sorted(calls)]
