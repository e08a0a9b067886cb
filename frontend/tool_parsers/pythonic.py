"""Pythonic tool calls (Llama 3.2/4 style): the message is a Python list of calls,
`[get_weather(city="Paris"), get_time()]`, with literal keyword arguments.

Characters are scanned once for bracket depth and string state; each call is parsed (with `ast`) exactly
once, when its closing parenthesis arrives, and reported whole: name, then its arguments as JSON.
"""

from __future__ import annotations

import ast
import json

from frontend.tool_parsers.base import ToolCallDelta, ToolParseDelta, ToolParser, new_call_id


class PythonicToolParser(ToolParser):
    def __init__(self) -> None:
        # Leading text held until its first meaningful character decides the mode.
        self._pending = ""
        self._mode = "undecided"
        self._depth = 0
        self._quote = ""
        self._escape = False
        # Text of the call being read (from its first character inside the list).
        self._call = ""
        self._index = 0

    def feed(self, text: str) -> ToolParseDelta:
        if self._mode == "content":
            return ToolParseDelta(content=text)
        if self._mode == "calls":
            return ToolParseDelta(calls=self._scan(text))
        self._pending += text
        head = self._pending.lstrip()
        if not head:
            return ToolParseDelta()
        pending, self._pending = self._pending, ""
        if head.startswith("["):
            self._mode = "calls"
            return ToolParseDelta(calls=self._scan(head))
        self._mode = "content"
        return ToolParseDelta(content=pending)

    def _scan(self, text: str) -> list[ToolCallDelta]:
        deltas: list[ToolCallDelta] = []
        for char in text:
            if self._depth >= 2 or (self._depth == 1 and (self._call or char not in ", \n\t]")):
                self._call += char
            if self._quote:
                if self._escape:
                    self._escape = False
                elif char == "\\":
                    self._escape = True
                elif char == self._quote:
                    self._quote = ""
            elif char in "\"'":
                self._quote = char
            elif char in "([{":
                self._depth += 1
            elif char in ")]}":
                self._depth -= 1
                if self._depth == 1 and char == ")":
                    deltas.extend(self._parse_call(self._call))
                    self._call = ""
        return deltas

    def _parse_call(self, source: str) -> list[ToolCallDelta]:
        try:
            call = ast.parse(source.strip(), mode="eval").body
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name | ast.Attribute):
                return []
            name = ast.unparse(call.func)
            arguments = {
                keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords if keyword.arg
            }
        except (SyntaxError, ValueError, TypeError):
            return []
        index, self._index = self._index, self._index + 1
        return [
            ToolCallDelta(index, id=new_call_id(), name=name),
            ToolCallDelta(index, arguments=json.dumps(arguments, ensure_ascii=False)),
        ]

    def finish(self) -> ToolParseDelta:
        pending, self._pending = self._pending, ""
        return ToolParseDelta(content=pending if self._mode == "undecided" else "")
