"""`<think>` extraction: whole text and any chunking agree; qwen3 vs deepseek_r1 start conditions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontend.reasoning import ReasoningDelta, ThinkReasoningParser, reasoning_parser


def run(parser: ThinkReasoningParser, pieces: list[str]) -> tuple[str, str]:
    total = ReasoningDelta()
    for piece in pieces:
        delta = parser.feed(piece)
        total.reasoning += delta.reasoning
        total.content += delta.content
    tail = parser.finish()
    return total.reasoning + tail.reasoning, total.content + tail.content


@pytest.mark.parametrize(
    "name, text, expected",
    [
        (
            "qwen3",
            "<think>\nplan a, then b\n</think>\n\nThe answer.",
            ("\nplan a, then b\n", "\n\nThe answer."),
        ),
        ("qwen3", "No thinking here.", ("", "No thinking here.")),
        ("qwen3", "<thin", ("", "<thin")),
        ("deepseek_r1", "plan</think>answer", ("plan", "answer")),
        ("deepseek_r1", "<think>plan</think>answer", ("plan", "answer")),
        ("deepseek_r1", "still thinking when cut", ("still thinking when cut", "")),
        ("deepseek_r1", "plan</thi", ("plan</thi", "")),
    ],
)
def test_whole_text(name: str, text: str, expected: tuple[str, str]) -> None:
    assert run(reasoning_parser(name), [text]) == expected


@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from(["qwen3", "deepseek_r1"]),
    text=st.sampled_from(
        ["<think>a < b</think> so </think> c", "x</think>y", "<think>never closed", "plain"]
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
def test_any_chunking_gives_the_same_split(name: str, text: str, cuts: list[int]) -> None:
    points = sorted({cut % (len(text) + 1) for cut in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    assert run(reasoning_parser(name), pieces) == run(reasoning_parser(name), [text])
