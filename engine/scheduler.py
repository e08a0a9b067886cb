"""Token-budget scheduler: continuous batching with chunked prefill and preemption by recompute.

Every step each running request catches its computed tokens up to its total tokens (a decode is a
chunk of one, or of one plus its speculative draft tokens), within `max_num_batched_tokens`; running
requests go first, then waiting ones join while budget, sequence slots and KV blocks last. Order is
(priority, arrival): lower priority value first (vLLM semantics), FCFS among equals. When blocks run
out, the running request that comes last in that order is preempted: its blocks are freed, it goes back
to waiting, and later its prompt and generated tokens are recomputed (prefix-cache hits make that
cheap), so nothing is lost.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.request import Request, RequestStatus


@dataclass
class ScheduledChunk:
    """One request's share of a step."""

    # The request; the runner reads its token ids, block table and sampling state, and never mutates it.
    request: Request
    # Tokens computed this step: all_token_ids[num_computed_before : num_computed_before + num_tokens].
    num_computed_before: int
    num_tokens: int
    # True when this chunk reaches the request's last known token: its last row is sampled (never for an
    # embedding request, which is pooled instead).
    sample: bool
    # Speculative tokens after the request's last known token, the chunk's last len() tokens: every row
    # from the last known token on is sampled, and the step keeps the drafts its samples agree with.
    draft_token_ids: list[int] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    """What one step computes; the runner turns it into one varlen batch."""

    # In batch order: running requests first (scheduling order), then newly admitted ones.
    chunks: list[ScheduledChunk] = field(default_factory=list)
    # Requests preempted while building this step (already back in the waiting queue).
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(chunk.num_tokens for chunk in self.chunks)


@dataclass
class SchedulerCounters:
    """Cumulative counters for EngineStats."""

    prefix_cache_queried_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    num_preemptions: int = 0


class Scheduler:
    """Decides which tokens of which requests run in the next step; owns the waiting/running queues."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # Both kept sorted by Request.sort_key.
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.counters = SchedulerCounters()

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        bisect.insort(self.waiting, request, key=lambda r: r.sort_key)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, request: Request) -> None:
        """Take a request out of the queues for good (finished or aborted) and free its blocks."""
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
        self.block_manager.free(request)
        request.status = RequestStatus.FINISHED

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            drafts = self._take_drafts(request, num_new, budget)
            if not drafts and not self._allocate_or_preempt(request, num_new, out):
                break  # the request itself was preempted: it was the last one in order
            out.chunks.append(self._chunk(request, num_new, drafts))
            budget -= num_new + len(drafts)
            index += 1
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not out.preempted:
            request = self.waiting[0]
            computed = self.block_manager.get_computed_blocks(request)
            num_cached = len(computed) * self.block_manager.block_size
            num_new = min(request.num_tokens - num_cached, budget)
            if not self.block_manager.allocate_slots(request, num_new, computed):
                break
            self.waiting.pop(0)
            self.counters.prefix_cache_queried_tokens += request.num_tokens
            self.counters.prefix_cache_hit_tokens += num_cached
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_cached
            request.num_computed_tokens = num_cached
            request.status = RequestStatus.RUNNING
            self.running.append(request)  # after every running one: scheduled in this order below
            out.chunks.append(self._chunk(request, num_new))
            budget -= num_new
        self.running.sort(key=lambda r: r.sort_key)
        return out

    def commit(self, out: SchedulerOutput, rejected_drafts: Mapping[str, int] | None = None) -> None:
        """Record that the step ran: its tokens' K/V are written, so their full blocks may be cached.
        `rejected_drafts`: by request id, the draft tokens the model disagreed with; their K/V, written past
        the last accepted token, are not computed tokens (the request's next tokens overwrite them)."""
        for chunk in out.chunks:
            rejected = rejected_drafts.get(chunk.request.request_id, 0) if rejected_drafts else 0
            chunk.request.num_computed_tokens = chunk.num_computed_before + chunk.num_tokens - rejected
            self.block_manager.publish_computed_blocks(chunk.request)

    def _take_drafts(self, request: Request, num_new: int, budget: int) -> list[int]:
        """The request's draft tokens that fit this step, with their KV slots allocated; [] (and nothing
        allocated) when it proposed none, is not at its last token, or they do not fit without preempting
        anyone: drafts are a bet, never worth another request's progress."""
        drafts, request.draft_token_ids = request.draft_token_ids, []
        if not drafts or request.num_computed_tokens + num_new != request.num_tokens:
            return []
        drafts = drafts[: budget - num_new]
        if drafts and self.block_manager.allocate_slots(request, num_new + len(drafts)):
            return drafts
        return []

    def _allocate_or_preempt(self, request: Request, num_new: int, out: SchedulerOutput) -> bool:
        """Allocate blocks for `request`, preempting from the back of the running order until they fit."""
        while not self.block_manager.allocate_slots(request, num_new):
            victim = self.running.pop()  # last in (priority, arrival) order: not scheduled yet this step
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request) -> None:
        self.block_manager.free(request)
        request.num_computed_tokens = 0
        request.draft_token_ids = []
        self.counters.num_preemptions += 1
        self.add(request)

    @staticmethod
    def _chunk(request: Request, num_new: int, drafts: list[int] | None = None) -> ScheduledChunk:
        """`num_new` of the request's known tokens, then `drafts`."""
        return ScheduledChunk(
            request=request,
            num_computed_before=request.num_computed_tokens,
            num_tokens=num_new + len(drafts or ()),
            sample=request.num_computed_tokens + num_new == request.num_tokens and request.pooling is None,
            draft_token_ids=drafts or [],
        )
