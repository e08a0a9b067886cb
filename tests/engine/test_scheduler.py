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
