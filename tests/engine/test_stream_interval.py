"""Stream interval: how outputs merge (StreamCoalescer alone), then through AsyncEngine on the real model."""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import AsyncEngine, EngineConfig, RequestOutput, SamplingParams
from engine.outputs import merge_outputs
from engine.stream_interval import StreamCoalescer
from tests.engine.conftest import Reference

# Tokens each (request id, sequence index) has produced so far, as the engine counts them: a sequence's
# outputs carry the running total (num_output_tokens), and a finished request's ids start again at zero.
_produced: collections.Counter[tuple[str, int]] = collections.Counter()


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    _produced.clear()


def output(
    request_id: str,
    tokens: list[int],
    *,
    index: int = 0,
    finish_reason: str | None = None,
    finished: bool = False,
    error: str | None = None,
) -> RequestOutput:
    _produced[request_id, index] += len(tokens)
    total = _produced[request_id, index]
    if finished:
        for key in [key for key in _produced if key[0] == request_id]:
            del _produced[key]
    return RequestOutput(
        request_id=request_id,
        index=index,
        new_token_ids=tokens,
        text_delta="".join(f"<{token}>" for token in tokens),
        num_prompt_tokens=5,
        num_output_tokens=total,
        num_cached_tokens=0,
        finished=finished,
        finish_reason=finish_reason,
        stop_reason=None,
        error=error,
    )


def run(coalescer: StreamCoalescer, steps: list[list[RequestOutput]]) -> list[list[tuple[str, int, list[int]]]]:
    """Per step: (request id, sequence index, tokens) of each output delivered."""
    delivered = []
    for step in steps:
        ready = coalescer.coalesce(step)
        for item in ready:
            assert item.text_delta == "".join(f"<{token}>" for token in item.new_token_ids), "text follows tokens"
        delivered.append([(item.request_id, item.index, item.new_token_ids) for item in ready])
    return delivered


def test_first_output_at_once_then_groups_of_the_interval_and_the_rest_at_the_end() -> None:
    coalescer = StreamCoalescer(engine_interval=3)
    coalescer.add("a", None)
    steps = [[output("a", [token])] for token in range(1, 8)]
    steps.append([output("a", [8], finish_reason="length", finished=True)])
    assert run(coalescer, steps) == [
        [("a", 0, [1])],
        [],
        [],
        [("a", 0, [2, 3, 4])],
        [],
        [],
        [("a", 0, [5, 6, 7])],
        [("a", 0, [8])],
    ]


def test_a_request_raises_the_engine_interval_and_cannot_lower_it() -> None:
    coalescer = StreamCoalescer(engine_interval=2)
    assert coalescer.effective_interval(None) == 2
    assert coalescer.effective_interval(1) == 2
    assert coalescer.effective_interval(5) == 5
    coalescer.add("plain", None)
    coalescer.add("asks-one", 1)
    steps = [[output("plain", [token]), output("asks-one", [10 + token])] for token in range(1, 4)]
    assert run(coalescer, steps) == [
        [("plain", 0, [1]), ("asks-one", 0, [11])],
        [],
        [("plain", 0, [2, 3]), ("asks-one", 0, [12, 13])],
    ]


def test_interval_one_passes_every_output_through_untouched() -> None:
    coalescer = StreamCoalescer(engine_interval=1)
    coalescer.add("a", None)
    outputs = [output("a", [1]), output("unknown", [2])]
    assert coalescer.coalesce(outputs) == outputs


def test_each_sequence_of_a_request_is_merged_apart_and_flushed_by_its_own_end() -> None:
    coalescer = StreamCoalescer(engine_interval=1)
    coalescer.add("n2", 4)
    steps = [
        [output("n2", [1], index=0), output("n2", [101], index=1)],
        [output("n2", [2], index=0), output("n2", [102], index=1, finish_reason="stop")],
        [output("n2", [3], index=0)],
        [output("n2", [4], index=0, finish_reason="length", finished=True)],
    ]
    assert run(coalescer, steps) == [
        [("n2", 0, [1]), ("n2", 1, [101])],
        [("n2", 1, [102])],
        [],
        [("n2", 0, [2, 3, 4])],
    ]


def test_abort_and_engine_errors_deliver_what_was_held_with_them() -> None:
    coalescer = StreamCoalescer(engine_interval=8)
    coalescer.add("aborted", None)
    coalescer.add("failed", None)
    first = [output("aborted", [1]), output("failed", [11])]
    held = [output("aborted", [2]), output("failed", [12])]
    ends = [
        output("aborted", [], finish_reason="abort", finished=True),
        output("failed", [], finish_reason="abort", finished=True, error="boom"),
    ]
    assert len(coalescer.coalesce(first)) == 2
    assert coalescer.coalesce(held) == []
    last = coalescer.coalesce(ends)
    assert [(item.request_id, item.new_token_ids, item.finish_reason, item.error) for item in last] == [
        ("aborted", [2], "abort", None),
        ("failed", [12], "abort", "boom"),
    ]
    # Finished requests are forgotten: a reused id starts afresh (its first output goes out at once).
    coalescer.add("aborted", None)
    assert coalescer.coalesce([output("aborted", [3])])[0].new_token_ids == [3]


def test_an_abort_keeps_the_cumulative_logprob_of_what_it_merges() -> None:
    """An abort's output carries no cumulative logprob: the merged output keeps the held outputs' sum (it
    reaches clients as cum_log_probs / cumulative_logprob)."""
    held = dataclasses.replace(output("a", [1, 2]), cumulative_logprob=-1.5)
    ended = output("a", [], finish_reason="abort", finished=True)
    assert merge_outputs(held, ended).cumulative_logprob == -1.5
    later = dataclasses.replace(output("a", [3]), cumulative_logprob=-2.0)
    assert merge_outputs(held, later).cumulative_logprob == -2.0


def test_a_reused_id_never_inherits_an_unfinished_requests_state() -> None:
    """A request whose final output was lost (a failed engine step) leaves its state behind; the next request
    of that id starts afresh, whatever its interval."""
    coalescer = StreamCoalescer(engine_interval=1)
    coalescer.add("reused", 4)
    assert len(coalescer.coalesce([output("reused", [1])])) == 1
    assert coalescer.coalesce([output("reused", [2])]) == []
    coalescer.add("reused", None)
    assert [item.new_token_ids for item in coalescer.coalesce([output("reused", [7]), output("reused", [8])])] == [
        [7],
        [8],
    ]


@pytest.fixture(scope="module")
def interval_engine(model_dir: Path) -> Iterator[AsyncEngine]:
    engine = AsyncEngine(
        EngineConfig(model=str(model_dir), device="cpu", max_model_len=512, num_kv_blocks=64, stream_interval=3)
    )
    yield engine
    engine.shutdown()


@pytest.mark.parametrize("requested", [None, 5])
def test_async_engine_streams_the_reference_tokens_in_groups(
    interval_engine: AsyncEngine, reference: Reference, requested: int | None
) -> None:
    index = 7  # the longest reference output: 16 tokens
    params = SamplingParams(temperature=0.0, max_tokens=reference.max_tokens[index], stream_interval=requested)
    outputs = list(interval_engine.submit(f"grouped-{requested}", reference.prompts[index], params))
    interval = requested or 3
    sizes = [len(item.new_token_ids) for item in outputs]
    assert sizes[0] == 1, sizes
    assert all(size == interval for size in sizes[1:-1]), sizes
    assert 1 <= sizes[-1] <= interval and outputs[-1].finish_reason == "length", sizes
    assert [token for item in outputs for token in item.new_token_ids] == reference.outputs[index]
    text = "".join(item.text_delta for item in outputs)
    assert text == interval_engine.tokenizer.decode(reference.outputs[index], skip_special_tokens=True)
    assert [item.num_output_tokens for item in outputs] == list(itertools.accumulate(sizes))


def test_stream_interval_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="stream_interval"):
        SamplingParams(stream_interval=0)
    with pytest.raises(ValueError, match="stream_interval"):
        EngineConfig(model="unused", stream_interval=0)
