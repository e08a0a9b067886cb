"""Tool choice of a Responses request: which parser reads the output, and the constraint that forces calls.

`auto` parses the model's own tool-call syntax with the configured `--tool-call-parser`. `required` and a
named function are enforced by structured outputs, as vLLM does, so even a tiny model emits valid calls:
required constrains the output to a JSON array of `{"name", "parameters"}` objects, one schema per tool;
a named function constrains the output to that function's arguments. Both are read by parsers that need
no model-specific syntax, and stream argument fragments as they are generated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from frontend.errors import bad_request
from frontend.protocol.responses import FunctionTool, FunctionToolChoice
from frontend.tool_parsers import TOOL_PARSERS, ToolCallDelta, ToolParseDelta, ToolParser
from frontend.tool_parsers.base import new_call_id
from frontend.tool_parsers.json_call import CallSequence

ANY_OBJECT: dict[str, Any] = {"type": "object"}


class CallArrayParser(ToolParser):
    """Output constrained to `[{"name": ..., "parameters": {...}}, ...]`: every object is a call."""

    def __init__(self) -> None:
        self._calls = CallSequence()

    def feed(self, text: str) -> ToolParseDelta:
        return ToolParseDelta(calls=self._calls.feed(text))

    def finish(self) -> ToolParseDelta:
        return ToolParseDelta()


class NamedCallParser(ToolParser):
    """Output constrained to one function's arguments: the whole text is that call's arguments."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._started = False

    def feed(self, text: str) -> ToolParseDelta:
        calls = []
        if not self._started:
            self._started = True
            calls.append(ToolCallDelta(0, id=new_call_id(), name=self._name))
        calls.append(ToolCallDelta(0, arguments=text))
        return ToolParseDelta(calls=calls)

    def finish(self) -> ToolParseDelta:
        return ToolParseDelta()


def call_array_schema(tools: list[FunctionTool], max_calls: int | None) -> dict[str, Any]:
    """JSON schema of one or more calls (at most `max_calls`) to any of `tools`."""
    call = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [tool.name]},
                    "parameters": tool.parameters or ANY_OBJECT,
                },
                "required": ["name", "parameters"],
            }
            for tool in tools
        ]
    }
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": call}
    if max_calls is not None:
        schema["maxItems"] = max_calls
    return schema


def auto_parser(name: str, tools: list[FunctionTool]) -> Callable[[], ToolParser]:
    """Builds the `--tool-call-parser` parser of each answer (tool_choice "auto"); it may read the tools'
    parameter types."""
    parser = TOOL_PARSERS[name]
    schemas = {tool.name: tool.parameters or ANY_OBJECT for tool in tools}
    return lambda: parser.for_tools(schemas)


def tool_mode(
    tools: list[FunctionTool],
    choice: str | FunctionToolChoice,
    max_calls: int | None,
    configured_parser: str | None,
    auto_enabled: bool,
) -> tuple[Callable[[], ToolParser] | None, dict[str, Any] | None]:
    """The parser factory (None: no tool parsing) and the structured-outputs constraint (None: free text)."""
    if not tools:
        if choice not in ("none", "auto"):
            raise bad_request("tool_choice needs tools", param="tool_choice")
        return None, None
    if choice == "none" or max_calls == 0:
        if choice not in ("none", "auto"):
            raise bad_request(
                "max_tool_calls=0 forbids the call tool_choice asks for", param="max_tool_calls"
            )
        return None, None
    if choice == "auto":
        if not (auto_enabled and configured_parser):
            raise bad_request(
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
                '(or pass tool_choice "required", a named function, or "none")',
                param="tool_choice",
            )
        return auto_parser(configured_parser, tools), None
    if isinstance(choice, FunctionToolChoice):
        named = [tool for tool in tools if tool.name == choice.name]
        if not named:
            raise bad_request(f"tool_choice names unknown function {choice.name!r}", param="tool_choice")
        name = choice.name
        return (lambda: NamedCallParser(name)), {"json": named[0].parameters or ANY_OBJECT}
    return CallArrayParser, {"json": call_array_schema(tools, max_calls)}
