"""Mistral tool calls: content, then `[TOOL_CALLS]` followed by a JSON array of call objects.

`[TOOL_CALLS]` is a special token: requests parsed with this parser must keep special tokens in the text.
"""

from __future__ import annotations

from frontend.tool_parsers.base import ToolParseDelta, ToolParser, partial_marker_length
from frontend.tool_parsers.json_call import CallSequence

MARKER = "[TOOL_CALLS]"


class MistralToolParser(ToolParser):
    def __init__(self) -> None:
        # A tail that may be the start of the marker.
        self._pending = ""
        self._calls: CallSequence | None = None

    def feed(self, text: str) -> ToolParseDelta:
        if self._calls is not None:
            return ToolParseDelta(calls=self._calls.feed(text))
        joined = self._pending + text
        found = joined.find(MARKER)
        if found >= 0:
            self._pending = ""
            self._calls = CallSequence()
            return ToolParseDelta(
                content=joined[:found], calls=self._calls.feed(joined[found + len(MARKER) :])
            )
        hold = partial_marker_length(joined, MARKER)
        self._pending = joined[len(joined) - hold :]
        return ToolParseDelta(content=joined[: len(joined) - hold])

    def finish(self) -> ToolParseDelta:
        pending, self._pending = self._pending, ""
        return ToolParseDelta(content=pending)
