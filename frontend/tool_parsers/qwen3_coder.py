"""Qwen3-Coder tool calls (vLLM's `qwen3_coder`): content, then any number of XML-like blocks

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

A parameter's value is raw text (the newline after its opening tag and the one before its closing tag are
layout), converted by the type the request's schema declares for it (`schema_values`). A value is certain
only at its `</parameter>`, so arguments stream a parameter at a time: `{` after the name, then
`"city": "Paris"`, `, "days": 3`, ..., and `}` at `</function>`: together the JSON object of the call.

A value may contain the closing tag itself (the model writes code): a `</parameter>` ends the value only
when what follows it, whitespace aside, is the next `<parameter=`, `</function>` or `</tool_call>`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from frontend.tool_parsers.base import (
    FunctionSchemas,
    ToolCallDelta,
    ToolParseDelta,
    ToolParser,
    new_call_id,
    partial_marker_length,
)
from frontend.tool_parsers.schema_values import json_value

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
FUNCTION = "<function="
FUNCTION_END = "</function>"
PARAMETER = "<parameter="
PARAMETER_END = "</parameter>"
# What may follow a parameter (whitespace aside); before anything else `</parameter>` is value text.
AFTER_PARAMETER = (PARAMETER, FUNCTION_END, CLOSE)
# A `<function=` whose name holds one of these is not a call (vLLM's rule: template debris, prose).
NOT_IN_NAME = frozenset("{}<>\"' \t\r\n")


class Qwen3CoderToolParser(ToolParser):
    """Text outside the blocks is content; whitespace between and after calls is dropped."""

    def __init__(self, tools: FunctionSchemas | None = None) -> None:
        self._tools: FunctionSchemas = tools or {}
        # Text received and not yet consumed by the current state.
        self._buffer = ""
        # The current state: consumes what it can of the buffer, and says whether it moved on.
        self._state: Callable[[ToolParseDelta], bool] = self._content
        # A call just ended: whitespace is held, and dropped unless other text follows it.
        self._after_call = False
        # Calls started; the current one's index is one less.
        self._calls = 0
        # The current call's parameter schemas by name, and how many parameters it wrote.
        self._properties: Mapping[str, Any] = {}
        self._written = 0
        # The parameter being read, and where in its value a closing tag may still begin.
        self._parameter = ""
        self._searched = 0

    @classmethod
    def for_tools(cls, tools: FunctionSchemas) -> ToolParser:
        return cls(tools)

    def feed(self, text: str) -> ToolParseDelta:
        self._buffer += text
        delta = ToolParseDelta()
        while self._state(delta):
            pass
        return delta

    def finish(self) -> ToolParseDelta:
        delta = ToolParseDelta()
        if self._state == self._content:
            if not self._after_call or self._buffer.strip():
                delta.content = self._buffer
        elif self._state == self._value:
            # Cut off inside a value: keep what was generated, as vLLM does.
            end = self._value_end(final=True)
            if end < 0:
                end = len(self._buffer) - partial_marker_length(self._buffer, PARAMETER_END)
            self._write_parameter(self._buffer[:end], delta)
            self._close_arguments(delta)
        elif self._state in (self._body, self._parameter_name):
            self._close_arguments(delta)
        # A block cut off before its function's name is no call (nothing of it was sent); after
        # `</function>` the call is complete.
        self._buffer = ""
        return delta

    def _content(self, delta: ToolParseDelta) -> bool:
        if self._after_call:
            rest = self._buffer.lstrip()
            if len(rest) < len(OPEN) and OPEN.startswith(rest):
                return False
            self._after_call = False
            if rest.startswith(OPEN):
                self._buffer = rest
        found = self._buffer.find(OPEN)
        if found >= 0:
            delta.content += self._buffer[:found]
            self._buffer = self._buffer[found + len(OPEN) :]
            self._state = self._header
            return True
        sent = len(self._buffer) - partial_marker_length(self._buffer, OPEN)
        delta.content += self._buffer[:sent]
        self._buffer = self._buffer[sent:]
        return False

    def _header(self, delta: ToolParseDelta) -> bool:
        """After `<tool_call>`: `<function=NAME>`, else the block was text after all."""
        rest = self._buffer.lstrip()
        if not rest.startswith(FUNCTION):
            if len(rest) < len(FUNCTION) and FUNCTION.startswith(rest):
                return False
            return self._not_a_call(delta)
        end = rest.find(">", len(FUNCTION))
        name = rest[len(FUNCTION) : end if end >= 0 else len(rest)]
        if not NOT_IN_NAME.isdisjoint(name) or (end >= 0 and not name):
            return self._not_a_call(delta)
        if end < 0:
            return False
        self._buffer = rest[end + 1 :]
        index = self._calls
        self._calls += 1
        properties = self._tools.get(name, {}).get("properties")
        self._properties = properties if isinstance(properties, Mapping) else {}
        self._written = 0
        delta.calls += [
            ToolCallDelta(index, id=new_call_id(), name=name),
            ToolCallDelta(index, arguments="{"),
        ]
        self._state = self._body
        return True

    def _not_a_call(self, delta: ToolParseDelta) -> bool:
        delta.content += OPEN
        self._state = self._content
        return True

    def _body(self, delta: ToolParseDelta) -> bool:
        """Between parameters: only the next tag matters; other text is layout (or noise) and dropped."""
        tag = self._skip_to(AFTER_PARAMETER)
        if tag is None:
            return False
        if tag == PARAMETER:
            self._state = self._parameter_name
            return True
        self._close_arguments(delta)
        # A `</tool_call>` right after the parameters (no `</function>`) ends the call as well.
        if tag == FUNCTION_END:
            self._state = self._close
        else:
            self._state, self._after_call = self._content, True
        return True

    def _parameter_name(self, delta: ToolParseDelta) -> bool:
        end = self._buffer.find(">")
        if end < 0:
            return False
        self._parameter = self._buffer[:end]
        self._buffer = self._buffer[end + 1 :]
        self._searched = 0
        self._state = self._value
        return True

    def _value(self, delta: ToolParseDelta) -> bool:
        end = self._value_end(final=False)
        if end < 0:
            return False
        self._write_parameter(self._buffer[:end], delta)
        self._buffer = self._buffer[end + len(PARAMETER_END) :]
        self._state = self._body
        return True

    def _value_end(self, final: bool) -> int:
        """Where the value's own `</parameter>` begins in the buffer; -1 while unknown. At the end of
        the text (`final`), a closing tag followed by the beginning of a tag, or nothing, counts."""
        while True:
            found = self._buffer.find(PARAMETER_END, self._searched)
            if found < 0:
                self._searched = len(self._buffer) - partial_marker_length(self._buffer, PARAMETER_END)
                return -1
            after = self._buffer[found + len(PARAMETER_END) :].lstrip()
            if any(after.startswith(tag) for tag in AFTER_PARAMETER):
                return found
            if any(tag.startswith(after) for tag in AFTER_PARAMETER):
                # What follows is not written yet.
                self._searched = found
                return found if final else -1
            self._searched = found + 1

    def _write_parameter(self, raw: str, delta: ToolParseDelta) -> None:
        value = raw[1:] if raw.startswith("\n") else raw
        value = value[:-1] if value.endswith("\n") else value
        key = json.dumps(self._parameter, ensure_ascii=False)
        separator = ", " if self._written else ""
        schema = self._properties.get(self._parameter)
        delta.calls.append(
            ToolCallDelta(self._calls - 1, arguments=f"{separator}{key}: {json_value(value, schema)}")
        )
        self._written += 1

    def _close_arguments(self, delta: ToolParseDelta) -> None:
        delta.calls.append(ToolCallDelta(self._calls - 1, arguments="}"))

    def _close(self, delta: ToolParseDelta) -> bool:
        """After `</function>`: up to `</tool_call>`, or a next `<tool_call>` if the model left out the close."""
        tag = self._skip_to((CLOSE, OPEN))
        if tag is None:
            return False
        if tag == OPEN:
            self._state = self._header
        else:
            self._state, self._after_call = self._content, True
        return True

    def _skip_to(self, tags: tuple[str, ...]) -> str | None:
        """Drops the buffer up to the earliest of `tags` and consumes that tag; None when none is there
        yet (a tail that may begin one is kept)."""
        found = [(at, tag) for tag in tags if (at := self._buffer.find(tag)) >= 0]
        if not found:
            held = max(partial_marker_length(self._buffer, tag) for tag in tags)
            self._buffer = self._buffer[len(self._buffer) - held :]
            return None
        at, tag = min(found)
        self._buffer = self._buffer[at + len(tag) :]
        return tag
