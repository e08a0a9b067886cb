"""Scheduler decisions with exact expectations: chunking, budget sharing, priority, preemption victim."""

from __future__ import annotations

from engine.block_manager import BlockManager
from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput

BLOCK = 4


def request(name: str, num_tokens: int, arrival: int, priority: int = 0) -> Request:
    return Request(name, list(range(num_tokens)), SamplingParams(), priority, arrival, 0.0)


def run_step(scheduler: Scheduler, token: int = 7) -> SchedulerOutput:
    """Play the runner: commit the step and append a token to every sampled request."""
    out = scheduler.schedule()
    scheduler.commit(out)
    for chunk in out.chunks:
        if chunk.sample:
            chunk.request.all_token_ids.append(token)
    return out


def shape(out: SchedulerOutput) -> list[tuple[str, int, int, bool]]:
    return [(c.request.request_id, c.num_computed_before, c.num_tokens, c.sample) for c in out.chunks]


def test_prefill_is_chunked_under_the_budget_and_decodes_go_first() -> None:
    scheduler = Scheduler(BlockManager(32, BLOCK, enable_caching=False), max_num_seqs=8, max_num_batched_tokens=8)
    scheduler.add(request("a", 20, 0))
    assert shape(run_step(scheduler)) == [("a", 0, 8, False)]
    scheduler.add(request("b", 5, 1))
    assert shape(run_step(scheduler)) == [("a", 8, 8, False)]
    assert shape(run_step(scheduler)) == [("a", 16, 4, True), ("b", 0, 4, False)]
    # a decodes (a chunk of one) before b finishes its prompt within the same budget.
    assert shape(run_step(scheduler)) == [("a", 20, 1, True), ("b", 4, 1, True)]
    assert shape(run_step(scheduler)) == [("a", 21, 1, True), ("b", 5, 1, True)]


def test_waiting_requests_join_by_priority_then_arrival() -> None:
    scheduler = Scheduler(BlockManager(32, BLOCK, enable_caching=False), max_num_seqs=2, max_num_batched_tokens=64)
    for name, arrival, priority in [("late-low", 0, 1), ("first", 1, 0), ("urgent", 2, -1), ("second", 3, 0)]:
        scheduler.add(request(name, 3, arrival, priority))
    assert [c.request.request_id for c in run_step(scheduler).chunks] == ["urgent", "first"]
    assert [r.request_id for r in scheduler.waiting] == ["second", "late-low"]


def test_out_of_blocks_preempts_the_last_in_order_and_recomputes_its_output() -> None:
    manager = BlockManager(4, BLOCK, enable_caching=False)
    scheduler = Scheduler(manager, max_num_seqs=4, max_num_batched_tokens=64)
    a, b = request("a", 8, 0), request("b", 7, 1, priority=1)
    scheduler.add(a)
    scheduler.add(b)
    run_step(scheduler)  # a: blocks 0,1 (8 tokens), b: blocks 2,3 (7 tokens); both sampled
    assert (a.block_ids, b.block_ids) == ([0, 1], [2, 3])
    out = run_step(scheduler)  # a needs a third block: b (lower priority) is preempted
    assert [r.request_id for r in out.preempted] == ["b"]
    assert shape(out) == [("a", 8, 1, True)]
    assert b.status is RequestStatus.WAITING and b.block_ids == [] and b.num_computed_tokens == 0
    assert scheduler.counters.num_preemptions == 1
    # Once a finishes, b recomputes its prompt and its generated token together, then samples.
    scheduler.remove(a)
    out = run_step(scheduler)
    assert shape(out) == [("b", 0, 8, True)]
    assert b.all_token_ids == list(range(7)) + [7, 7]


def decoding_pair(num_blocks: int, budget: int) -> tuple[Scheduler, Request, Request]:
    """Requests a (4 prompt tokens) and b (3) after the step that ran both prompts and sampled a token each."""
    scheduler = Scheduler(BlockManager(num_blocks, BLOCK, enable_caching=False), max_num_seqs=4, max_num_batched_tokens=budget)
    a, b = request("a", 4, 0), request("b", 3, 1)
    scheduler.add(a)
    scheduler.add(b)
    run_step(scheduler)
    return scheduler, a, b


def test_draft_tokens_ride_a_decode_within_the_budget_and_rejected_ones_are_not_computed() -> None:
    scheduler, a, b = decoding_pair(num_blocks=8, budget=7)
    a.draft_token_ids, b.draft_token_ids = [1, 2, 3, 4], [5, 6]
    out = scheduler.schedule()
    # a: its last token and 4 drafts (5 of the budget of 7); b: its last token and the one draft left room.
    assert shape(out) == [("a", 4, 5, True), ("b", 3, 2, True)]
    assert [c.draft_token_ids for c in out.chunks] == [[1, 2, 3, 4], [5]]
    assert a.draft_token_ids == b.draft_token_ids == []
    assert (len(a.block_ids), len(b.block_ids)) == (3, 2)  # the drafts' K/V are written too
    scheduler.commit(out, {"a": 3})  # the model took one draft of a's and b's only one
    assert (a.num_computed_tokens, b.num_computed_tokens) == (6, 5)


def test_drafts_that_need_blocks_nobody_can_spare_are_dropped_not_paid_for_by_preemption() -> None:
    scheduler, a, b = decoding_pair(num_blocks=3, budget=64)  # a: blocks 0 and 1 (its 5th token); b: 2
    a.draft_token_ids = [1, 2, 3, 4, 5]  # would need a fourth block
    out = scheduler.schedule()
    assert shape(out) == [("a", 4, 1, True), ("b", 3, 1, True)]
    assert out.preempted == [] and out.chunks[0].draft_token_ids == []
