"""Tool-call parsers by `--tool-call-parser` name."""

from __future__ import annotations

from frontend.tool_parsers.base import ToolCallDelta, ToolParseDelta, ToolParser, extract
from frontend.tool_parsers.hermes import HermesToolParser
from frontend.tool_parsers.llama3_json import Llama3JsonToolParser
from frontend.tool_parsers.mistral import MistralToolParser
from frontend.tool_parsers.pythonic import PythonicToolParser
from frontend.tool_parsers.qwen3_coder import Qwen3CoderToolParser

# Each is built per message with `for_tools(the request's function schemas)`.
TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
    "pythonic": PythonicToolParser,
    "qwen3_coder": Qwen3CoderToolParser,
}

# Parsers whose markers are special tokens: their requests must keep special tokens in the output text.
NEEDS_SPECIAL_TOKENS = frozenset({"mistral"})

__all__ = ["TOOL_PARSERS", "NEEDS_SPECIAL_TOKENS", "ToolCallDelta", "ToolParseDelta", "ToolParser", "extract"]
