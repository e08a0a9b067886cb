"""Property test of the block manager + scheduler driven by random arrivals, aborts and finishes.

No model: a harness plays the runner. It writes each scheduled token into a fake KV store at the
slots the block tables give, and checks that every scheduled token could attend to exactly its own
request's earlier tokens there. That catches a prefix-cache hit with the wrong content, a block
reused while owned, and lost recompute after preemption; the bookkeeping invariants are checked
after every operation.
"""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.block_manager import BlockManager
from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput

BLOCK = 4

operation = st.one_of(
    st.tuples(
        st.just("add"),
        st.lists(st.integers(0, 2), min_size=1, max_size=30),
        st.integers(1, 12),
        st.integers(0, 2),
    ),
    st.tuples(st.just("abort"), st.integers(0, 1000)),
    st.tuples(st.just("step"), st.integers(0, 1)),
)


class Harness:
    def __init__(self, num_blocks: int, max_seqs: int, budget: int, caching: bool) -> None:
        self.manager = BlockManager(num_blocks, BLOCK, enable_caching=caching)
        self.scheduler = Scheduler(self.manager, max_seqs, budget)
        self.budget, self.max_seqs = budget, max_seqs
        self.live: dict[str, Request] = {}
        self.max_tokens: dict[str, int] = {}
        # slot -> token id written there by the last step that computed it.
        self.kv: dict[int, int] = {}
        self.ids = itertools.count()

    def add(self, prompt: list[int], max_tokens: int, priority: int) -> None:
        if self.manager.blocks_needed(len(prompt) + max_tokens) > self.manager.num_blocks:
            return  # the engine rejects such requests up front
        index = next(self.ids)
        request = Request(f"r{index}", prompt, SamplingParams(max_tokens=max_tokens), priority, index, 0.0)
        self.live[request.request_id] = request
        self.max_tokens[request.request_id] = max_tokens
        self.scheduler.add(request)

    def abort(self, pick: int) -> None:
        if self.live:
            request = list(self.live.values())[pick % len(self.live)]
            self.finish(request)

    def finish(self, request: Request) -> None:
        self.scheduler.remove(request)
        del self.live[request.request_id]

    def step(self, fake_token: int) -> None:
        out = self.scheduler.schedule()
        self.check_step(out)
        for chunk in out.chunks:
            request = chunk.request
            for position in range(chunk.num_computed_before, chunk.num_computed_before + chunk.num_tokens):
                self.kv[self.slot(request, position)] = request.all_token_ids[position]
            # Attention of this chunk reads positions [0, end): all must hold this request's tokens.
            for position in range(chunk.num_computed_before + chunk.num_tokens):
                assert self.kv.get(self.slot(request, position)) == request.all_token_ids[position], (
                    f"{request.request_id} position {position} reads foreign or missing KV"
                )
        self.scheduler.commit(out)
        for chunk in out.chunks:
            if chunk.sample:
                chunk.request.all_token_ids.append(fake_token)
                if chunk.request.num_output_tokens >= self.max_tokens[chunk.request.request_id]:
                    self.finish(chunk.request)

    def slot(self, request: Request, position: int) -> int:
        return request.block_ids[position // BLOCK] * BLOCK + position % BLOCK

    def check_step(self, out: SchedulerOutput) -> None:
        assert out.num_tokens <= self.budget
        assert len(self.scheduler.running) <= self.max_seqs
        assert len({id(chunk.request) for chunk in out.chunks}) == len(out.chunks)
        for chunk in out.chunks:
            assert chunk.num_tokens >= 1
            assert chunk.request.status is RequestStatus.RUNNING
            end = chunk.num_computed_before + chunk.num_tokens
            assert end <= chunk.request.num_tokens
            assert len(chunk.request.block_ids) >= self.manager.blocks_needed(end)

    def check_invariants(self) -> None:
        owners: Counter[int] = Counter()
        for request in self.live.values():
            assert len(set(request.block_ids)) == len(request.block_ids), "a block twice in one table"
            if request.status is RequestStatus.WAITING:
                assert request.block_ids == [] and request.num_computed_tokens == 0
            owners.update(request.block_ids)
        free = self.manager.free_block_ids()
        assert len(free) == len(set(free)), "a block twice in the free list"
        for block_id in range(self.manager.num_blocks):
            assert self.manager.ref_count(block_id) == owners[block_id], f"block {block_id} ref count"
            assert (block_id in free) == (owners[block_id] == 0), f"block {block_id} free/owned mismatch"
        assert sorted(self.scheduler.waiting + self.scheduler.running, key=id) == sorted(
            self.live.values(), key=id
        )


@settings(max_examples=60, deadline=None)
@given(
    operations=st.lists(operation, max_size=60),
    num_blocks=st.integers(4, 24),
    max_seqs=st.integers(1, 6),
    budget=st.integers(1, 40),
    caching=st.booleans(),
)
def test_random_traffic_keeps_blocks_consistent(
    operations: list[tuple], num_blocks: int, max_seqs: int, budget: int, caching: bool
) -> None:
    harness = Harness(num_blocks, max_seqs, budget, caching)
    for op in operations:
        if op[0] == "add":
            harness.add(op[1], op[2], op[3])
        elif op[0] == "abort":
            harness.abort(op[1])
        else:
            harness.step(op[1])
        harness.check_invariants()
    # Drain: everything finishes (no livelock), and every block comes back.
    for _ in range(2000):
        if not harness.live:
            break
        harness.step(0)
        harness.check_invariants()
    assert not harness.live, "requests never finished"
    assert harness.manager.num_free_blocks == num_blocks
