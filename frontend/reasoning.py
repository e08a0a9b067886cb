"""`<think>...</think>` reasoning extraction (qwen3, deepseek_r1), incremental like the tool parsers.

deepseek_r1: the template opens `<think>` in the prompt, so the output is reasoning from its start (a
leading `<think>` is tolerated) until `</think>`; without `</think>` everything is reasoning.
qwen3: reasoning only when the output starts with `<think>` (thinking disabled leaves none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from frontend.tool_parsers.base import partial_marker_length

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""


class ThinkReasoningParser:
    def __init__(self, implicit_open: bool) -> None:
        # True (deepseek_r1): output starts inside reasoning even without `<think>`.
        self._implicit_open = implicit_open
        self._state = "start"
        # Held-back text that may be (the start of) a tag.
        self._pending = ""

    def feed(self, text: str) -> ReasoningDelta:
        delta = ReasoningDelta()
        self._pending += text
        if self._state == "start":
            if THINK_OPEN.startswith(self._pending) and self._pending != THINK_OPEN:
                return delta
            if self._pending.startswith(THINK_OPEN):
                self._pending = self._pending[len(THINK_OPEN) :]
                self._state = "reasoning"
            else:
                self._state = "reasoning" if self._implicit_open else "content"
        if self._state == "reasoning":
            found = self._pending.find(THINK_CLOSE)
            if found < 0:
                hold = partial_marker_length(self._pending, THINK_CLOSE)
                delta.reasoning = self._pending[: len(self._pending) - hold]
                self._pending = self._pending[len(self._pending) - hold :]
                return delta
            delta.reasoning = self._pending[:found]
            self._pending = self._pending[found + len(THINK_CLOSE) :]
            self._state = "content"
        delta.content, self._pending = self._pending, ""
        return delta

    def finish(self) -> ReasoningDelta:
        pending, self._pending = self._pending, ""
        if self._state == "reasoning" or (self._state == "start" and self._implicit_open):
            return ReasoningDelta(reasoning=pending)
        return ReasoningDelta(content=pending)


def reasoning_parser(name: str) -> ThinkReasoningParser:
    return ThinkReasoningParser(implicit_open=name == "deepseek_r1")


def effort_template_kwargs(effort: str | None, reasoning_parser: str | None) -> dict[str, Any]:
    """Chat-template variables for OpenAI's reasoning effort (chat's `reasoning_effort`, the Responses API's
    `reasoning.effort`): under a reasoning parser, thinking on (`enable_thinking`, Qwen3's switch) unless
    the effort is none or minimal; the effort itself as `reasoning_effort`, which gpt-oss's template reads
    (others ignore it). Nothing without an effort."""
    if effort is None:
        return {}
    kwargs: dict[str, Any] = {"reasoning_effort": effort}
    if reasoning_parser is not None:
        kwargs["enable_thinking"] = effort not in ("none", "minimal")
    return kwargs
