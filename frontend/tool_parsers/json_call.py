"""Incremental scanner of one JSON tool-call object, `{"name": ..., "arguments" | "parameters": {...}}`.

It looks at each character once, tracking only nesting depth, string state and which top-level key is being
read, so the cost of a chunk is its own length. The name is reported once its string is complete; argument
text is reported as it arrives (raw, exactly as generated), always after the name.
"""

from __future__ import annotations

import json

from frontend.tool_parsers.base import ToolCallDelta, new_call_id

ARGUMENT_KEYS = ("arguments", "parameters")


class JsonCallScanner:
    """Scans characters from a call object's `{` to its matching `}`; text before the `{` is skipped."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.buffer = ""
        self.done = False
        self._depth = 0
        self._in_string = False
        self._escape = False
        # What the scanner expects at depth 1: key, key_string, colon, value, value_string,
        # value_nested, value_scalar, after_value.
        self._expect = "open"
        self._key: str | None = None
        self._key_start = -1
        self._value_start = -1
        self._name: str | None = None
        self._name_sent = False
        self._args_start = -1
        self._args_end = -1
        self._args_sent = -1

    def feed(self, text: str) -> tuple[int, list[ToolCallDelta]]:
        """Consume up to the end of the object; returns how many characters were used, and new deltas."""
        consumed = len(text)
        base = len(self.buffer)
        for offset, char in enumerate(text):
            self._step(char, base + offset, text)
            if self.done:
                consumed = offset + 1
                break
        self.buffer += text[:consumed]
        return consumed, self._deltas()

    def _step(self, char: str, pos: int, chunk: str) -> None:
        if self._in_string:
            if self._escape:
                self._escape = False
            elif char == "\\":
                self._escape = True
            elif char == '"':
                self._in_string = False
                if self._depth == 1 and self._expect == "key_string":
                    key = self._loads(self._key_start, pos + 1, chunk)
                    self._key = key if isinstance(key, str) else None
                    self._expect = "colon"
                elif self._depth == 1 and self._expect == "value_string":
                    self._value_end(pos + 1, chunk)
            return
        if self._depth == 0:
            if char == "{":
                self._depth, self._expect = 1, "key"
            return
        if char == '"':
            self._in_string = True
            if self._depth == 1 and self._expect == "key":
                self._key_start, self._expect = pos, "key_string"
            elif self._depth == 1 and self._expect == "value":
                self._start_value(pos, "value_string")
        elif char in "{[":
            if self._depth == 1 and self._expect == "value":
                self._start_value(pos, "value_nested")
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
            if self._depth == 1 and self._expect == "value_nested":
                self._value_end(pos + 1, chunk)
            elif self._depth == 0:
                if self._expect == "value_scalar":
                    self._value_end(pos, chunk)
                self.done = True
        elif self._depth == 1:
            if char == ":" and self._expect == "colon":
                self._expect = "value"
            elif char == ",":
                if self._expect == "value_scalar":
                    self._value_end(pos, chunk)
                self._expect = "key"
            elif not char.isspace() and self._expect == "value":
                self._start_value(pos, "value_scalar")

    def _start_value(self, pos: int, kind: str) -> None:
        self._value_start, self._expect = pos, kind
        if self._key in ARGUMENT_KEYS and self._args_start < 0:
            self._args_start = pos

    def _value_end(self, end: int, chunk: str) -> None:
        self._expect = "after_value"
        if self._key == "name" and self._name is None:
            name = self._loads(self._value_start, end, chunk)
            self._name = name if isinstance(name, str) else None
        elif self._key in ARGUMENT_KEYS and self._args_start == self._value_start:
            self._args_end = end

    def _text(self, start: int, end: int, chunk: str) -> str:
        # Positions are absolute; the current chunk is not in the buffer yet.
        joined = self.buffer + chunk
        return joined[start:end]

    def _loads(self, start: int, end: int, chunk: str) -> object:
        try:
            return json.loads(self._text(start, end, chunk))
        except json.JSONDecodeError:
            return None

    def _deltas(self) -> list[ToolCallDelta]:
        deltas = []
        if self._name is not None and not self._name_sent:
            self._name_sent = True
            deltas.append(ToolCallDelta(self.index, id=new_call_id(), name=self._name))
        if not self._name_sent:
            return deltas
        if self._args_start >= 0:
            scalar_open = self._args_end < 0 and self._expect == "value_scalar"
            end = self._args_end if self._args_end >= 0 else len(self.buffer)
            start = max(self._args_sent, self._args_start)
            if end > start and not scalar_open:
                deltas.append(ToolCallDelta(self.index, arguments=self.buffer[start:end]))
                self._args_sent = end
        elif self.done:
            deltas.append(ToolCallDelta(self.index, arguments="{}"))
        return deltas


class CallSequence:
    """Consecutive call objects separated by anything that is not `{` (`;`, `,`, `[`, `]`, whitespace)."""

    def __init__(self) -> None:
        self._scanner = JsonCallScanner(0)

    def feed(self, text: str) -> list[ToolCallDelta]:
        deltas: list[ToolCallDelta] = []
        while text:
            used, calls = self._scanner.feed(text)
            deltas.extend(calls)
            text = text[used:]
            if self._scanner.done:
                self._scanner = JsonCallScanner(self._scanner.index + 1)
        return deltas
