"""Block manager on the CPU: exact block ids, prefix-cache hits, salts, collisions, LRU eviction."""

from __future__ import annotations

import itertools

from engine.block_manager import BlockManager
from engine.request import Request
from engine.sampling_params import SamplingParams

BLOCK = 4
_ids = itertools.count()


def make_request(tokens: list[int], cache_salt: str | None = None) -> Request:
    return Request(
        request_id=f"r{next(_ids)}",
        prompt_token_ids=tokens,
        params=SamplingParams(),
        priority=0,
        arrival_seq=next(_ids),
        arrival_time=0.0,
        cache_salt=cache_salt,
    )


def admit(manager: BlockManager, request: Request) -> list[int]:
    """What the scheduler does for a waiting request: look up hits, allocate, mark computed."""
    hits = manager.get_computed_blocks(request)
    num_cached = len(hits) * BLOCK
    assert manager.allocate_slots(request, request.num_tokens - num_cached, hits)
    request.num_computed_tokens = request.num_tokens
    manager.publish_computed_blocks(request)
    return hits


def test_allocation_takes_blocks_in_order_and_free_returns_them() -> None:
    manager = BlockManager(8, BLOCK)
    a, b = make_request(list(range(10))), make_request(list(range(100, 105)))
    assert manager.allocate_slots(a, 10)
    assert manager.allocate_slots(b, 5)
    assert a.block_ids == [0, 1, 2] and b.block_ids == [3, 4]
    assert manager.free_block_ids() == [5, 6, 7]
    assert [manager.ref_count(i) for i in range(8)] == [1, 1, 1, 1, 1, 0, 0, 0]
    # Growing by one token inside the last block needs no block; crossing a boundary takes one.
    a.num_computed_tokens = 10
    assert manager.allocate_slots(a, 2) and a.block_ids == [0, 1, 2]
    assert manager.allocate_slots(a, 3) and a.block_ids == [0, 1, 2, 5]
    manager.free(a)
    assert a.block_ids == [] and manager.num_free_blocks == 6


def test_allocation_is_all_or_nothing() -> None:
    manager = BlockManager(3, BLOCK)
    a = make_request(list(range(20)))
    assert not manager.allocate_slots(a, 20)
    assert a.block_ids == [] and manager.free_block_ids() == [0, 1, 2]


def test_full_blocks_are_shared_and_last_token_is_recomputed() -> None:
    manager = BlockManager(16, BLOCK)
    a = make_request(list(range(10)))
    assert admit(manager, a) == []
    assert [manager.is_cached(i) for i in a.block_ids] == [True, True, False]  # partial block never cached
    b = make_request(list(range(8)) + [99, 98])
    assert admit(manager, b) == [0, 1]
    assert b.block_ids[:2] == [0, 1] and manager.ref_count(0) == 2
    # Exactly two full blocks of prompt: the second is recomputed so the last token gets logits.
    c = make_request(list(range(8)))
    assert manager.get_computed_blocks(c) == [0]


def test_cache_salt_isolates() -> None:
    manager = BlockManager(16, BLOCK)
    admit(manager, make_request(list(range(9)), cache_salt="tenant-a"))
    assert manager.get_computed_blocks(make_request(list(range(9)), cache_salt="tenant-b")) == []
    assert manager.get_computed_blocks(make_request(list(range(9)))) == []
    assert manager.get_computed_blocks(make_request(list(range(9)), cache_salt="tenant-a")) == [0, 1]


def test_hash_collision_is_caught_by_token_verification() -> None:
    manager = BlockManager(16, BLOCK, hash_fn=lambda parent, tokens, salt: 42)
    admit(manager, make_request([1, 2, 3, 4, 5, 6, 7, 8, 9]))
    # Same hash, different tokens: no hit.
    assert manager.get_computed_blocks(make_request([1, 2, 3, 5, 5, 6, 7, 8, 9])) == []
    # Same tokens in block 1 but a different block 0: the chain (parent) check refuses block 1.
    other = make_request([9, 9, 9, 9, 5, 6, 7, 8, 9])
    assert admit(manager, other) == []
    assert manager.get_computed_blocks(make_request([1, 2, 3, 4, 5, 6, 7, 8, 0])) == [0, 1]
    assert manager.get_computed_blocks(make_request([9, 9, 9, 9, 5, 6, 7, 8, 0])) == other.block_ids[:2]


def test_freed_blocks_stay_cached_and_are_evicted_in_lru_order() -> None:
    manager = BlockManager(6, BLOCK)
    a = make_request(list(range(10)))  # blocks 0, 1 full (cached), 2 partial
    admit(manager, a)
    manager.free(a)
    # Uncached block 2 goes to the front; cached ones are appended tail-first (1 before 0).
    assert manager.free_block_ids() == [2, 3, 4, 5, 1, 0]
    assert manager.is_cached(0) and manager.is_cached(1)
    # A hit revives a free cached block: it leaves the free list in O(1), order of the rest kept.
    b = make_request(list(range(4)) + [50, 51])
    assert admit(manager, b) == [0]
    assert b.block_ids == [0, 2] and manager.free_block_ids() == [3, 4, 5, 1]
    manager.free(b)
    assert manager.free_block_ids() == [2, 3, 4, 5, 1, 0]
    # Filling the pool reuses 2,3,4,5 first, then evicts 1 (tail of a's prompt) before 0 (its head).
    c = make_request(list(range(200, 220)))
    assert manager.allocate_slots(c, 20)
    assert c.block_ids == [2, 3, 4, 5, 1] and not manager.is_cached(1) and manager.is_cached(0)
    assert manager.get_computed_blocks(make_request(list(range(10)))) == [0]


def test_child_of_evicted_parent_never_hits() -> None:
    manager = BlockManager(4, BLOCK)
    a = make_request(list(range(9)))  # blocks 0, 1 cached; 2 partial
    admit(manager, a)
    manager.free(a)
    assert manager.free_block_ids() == [2, 3, 1, 0]
    filler = make_request(list(range(100, 113)))  # takes 2, 3, 1 and evicts 0 (a's head)
    assert manager.allocate_slots(filler, 13)
    assert filler.block_ids == [2, 3, 1, 0]
    manager.free(filler)
    assert manager.get_computed_blocks(make_request(list(range(9)))) == []
