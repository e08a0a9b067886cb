"""Llama 3.x JSON tool calls: the whole message is `{"name": ..., "parameters": {...}}` objects,
optionally after `<|python_tag|>` and separated by `;`. A message starting otherwise is plain content."""

from __future__ import annotations

from frontend.tool_parsers.base import ToolParseDelta, ToolParser
from frontend.tool_parsers.json_call import CallSequence

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    def __init__(self) -> None:
        # Leading text held until its first meaningful character decides the mode.
        self._pending = ""
        self._mode = "undecided"
        self._calls = CallSequence()

    def feed(self, text: str) -> ToolParseDelta:
        if self._mode == "content":
            return ToolParseDelta(content=text)
        if self._mode == "calls":
            return ToolParseDelta(calls=self._calls.feed(text))
        self._pending += text
        head = self._pending.lstrip()
        if not head or (PYTHON_TAG.startswith(head) and head != PYTHON_TAG):
            return ToolParseDelta()
        if head.startswith(PYTHON_TAG):
            head = head[len(PYTHON_TAG) :].lstrip()
            if not head:
                self._mode = "calls"
                return ToolParseDelta()
        pending, self._pending = self._pending, ""
        if head.startswith("{"):
            self._mode = "calls"
            return ToolParseDelta(calls=self._calls.feed(head))
        self._mode = "content"
        return ToolParseDelta(content=pending)

    def finish(self) -> ToolParseDelta:
        pending, self._pending = self._pending, ""
        return ToolParseDelta(content=pending if self._mode == "undecided" else "")
