"""Hermes / Qwen tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number of them."""

from __future__ import annotations

from frontend.tool_parsers.base import ToolParseDelta, ToolParser, partial_marker_length
from frontend.tool_parsers.json_call import JsonCallScanner

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


class HermesToolParser(ToolParser):
    """Text outside the tags is content; once a call was seen, whitespace between calls is dropped."""

    def __init__(self) -> None:
        # Text not yet classified: a possible partial tag, or (after a call) pending inter-call text.
        self._pending = ""
        self._scanner: JsonCallScanner | None = None
        self._awaiting_close = False
        self._calls = 0

    def feed(self, text: str) -> ToolParseDelta:
        delta = ToolParseDelta()
        while text:
            if self._scanner is not None:
                used, calls = self._scanner.feed(text)
                delta.calls.extend(calls)
                text = text[used:]
                if self._scanner.done:
                    self._scanner, self._awaiting_close = None, True
            elif self._awaiting_close:
                text = self._skip_to_close(text)
            else:
                text = self._content(text, delta)
        return delta

    def _skip_to_close(self, text: str) -> str:
        # Between the object's `}` and `</tool_call>` only whitespace belongs; drop it with the tag.
        joined = self._pending + text
        found = joined.find(CLOSE)
        if found < 0:
            self._pending = joined[-(len(CLOSE) - 1) :]
            return ""
        self._pending, self._awaiting_close = "", False
        return joined[found + len(CLOSE) :]

    def _content(self, text: str, delta: ToolParseDelta) -> str:
        joined = self._pending + text
        found = joined.find(OPEN)
        if found >= 0:
            before = joined[:found]
            if self._calls == 0 or before.strip():
                delta.content += before
            self._pending = ""
            self._scanner = JsonCallScanner(self._calls)
            self._calls += 1
            return joined[found + len(OPEN) :]
        if self._calls == 0:
            hold = partial_marker_length(joined, OPEN)
            delta.content += joined[: len(joined) - hold]
            self._pending = joined[len(joined) - hold :]
        else:
            # After a call, text is held until it proves to be more than separators.
            self._pending = joined
        return ""

    def finish(self) -> ToolParseDelta:
        delta = ToolParseDelta()
        if self._scanner is None and not self._awaiting_close and (self._calls == 0 or self._pending.strip()):
            delta.content = self._pending
        self._pending = ""
        return delta
