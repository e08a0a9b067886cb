"""Paged KV cache bookkeeping: block tables, ref counts, an LRU free list and the prefix cache.

Invariants (tests/engine/test_block_manager.py and the property test check them):
  * a block is either owned (ref_count > 0, not in the free list) or free (ref_count == 0, in it);
  * a request's block table is append-only while it runs and emptied at once when it is freed;
  * only FULL blocks are hashed; a block's hash chains its parent block's hash, its tokens and the
    cache salt; a lookup is a hit only if the stored tokens, salt and parent block match exactly,
    so a hash collision can never serve the wrong KV;
  * a freed cached block keeps its hash in the LRU free list until it is reused, so a later request
    can still hit it; blocks are reused oldest-freed first, uncached blocks before any cached one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.request import Request

# hash_fn(parent_hash, block_token_ids, cache_salt) -> hash; parent_hash is None for a first block.
BlockHashFn = Callable[[int | None, tuple[int, ...], str | None], int]


def hash_block(parent_hash: int | None, token_ids: tuple[int, ...], cache_salt: str | None) -> int:
    """The chained hash of one full block (process-local: the cache never leaves the process)."""
    return hash((parent_hash, token_ids, cache_salt))


class BlockTable(Protocol):
    """What allocating and freeing blocks read and write: a Request, or a draft model's view of one
    (engine.draft_proposer), which the prefix cache never sees."""

    # Physical blocks in order; append-only until freed.
    block_ids: list[int]
    # Leading tokens whose K/V are written.
    num_computed_tokens: int
    # Leading blocks of block_ids offered to the prefix cache.
    num_published_blocks: int


@dataclass(slots=True)
class _Block:
    block_id: int
    ref_count: int = 0
    # Set while the block is in the prefix cache.
    block_hash: int | None = None
    # Unique, never-reused identity of this cached content (0 = not cached); children store it.
    uid: int = 0
    # uid of the block before this one in the sequence (0 for a first block).
    parent_uid: int = 0
    token_ids: tuple[int, ...] = ()
    cache_salt: str | None = None


class BlockManager:
    """Owns the pool of `num_blocks` KV blocks of `block_size` tokens; the runner owns the memory."""

    def __init__(
        self, num_blocks: int, block_size: int, enable_caching: bool = True, hash_fn: BlockHashFn = hash_block
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self._hash_fn = hash_fn
        self._blocks = [_Block(block_id) for block_id in range(num_blocks)]
        # Free blocks, front = next to reuse. OrderedDict: O(1) removal when a cache hit revives one.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        # hash -> cached block ids with that hash (a list: distinct contents may collide).
        self._cached: dict[int, list[int]] = {}
        self._next_uid = 1

    # -- queries ------------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def free_block_ids(self) -> list[int]:
        """Free blocks in reuse order (front first)."""
        return list(self._free)

    def ref_count(self, block_id: int) -> int:
        return self._blocks[block_id].ref_count

    def is_cached(self, block_id: int) -> bool:
        return self._blocks[block_id].uid != 0

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def get_computed_blocks(self, request: Request) -> list[int]:
        """Cached blocks holding the longest prefix of the request's tokens.

        At most (num_tokens - 1) tokens are matched: the last token is always recomputed so that
        the step that reaches it produces logits.
        """
        if not self.enable_caching:
            return []
        hits: list[int] = []
        parent_uid = 0
        for index in range((request.num_tokens - 1) // self.block_size):
            block = self._lookup(
                self._block_hash(request, index), self._tokens(request, index), request.cache_salt, parent_uid
            )
            if block is None:
                break
            hits.append(block.block_id)
            parent_uid = block.uid
        return hits

    # -- mutations ----------------------------------------------------------------------------------

    def allocate_slots(
        self, request: BlockTable, num_new_tokens: int, computed_blocks: Sequence[int] = ()
    ) -> bool:
        """Grow the request's block table to hold its computed tokens, `computed_blocks` (prefix hits
        not yet in its table) and `num_new_tokens` more. All or nothing: False changes nothing."""
        num_computed = request.num_computed_tokens + len(computed_blocks) * self.block_size
        num_required = self.blocks_needed(num_computed + num_new_tokens)
        num_new_blocks = max(num_required - len(request.block_ids) - len(computed_blocks), 0)
        revived = sum(1 for block_id in computed_blocks if self._blocks[block_id].ref_count == 0)
        if num_new_blocks > len(self._free) - revived:
            return False
        for block_id in computed_blocks:
            block = self._blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1
            request.block_ids.append(block_id)
        for _ in range(num_new_blocks):
            block_id, _unused = self._free.popitem(last=False)
            block = self._blocks[block_id]
            self._evict(block)
            block.ref_count = 1
            request.block_ids.append(block_id)
        if computed_blocks:
            request.num_published_blocks = len(computed_blocks)
        return True

    def publish_computed_blocks(self, request: Request) -> None:
        """Offer the request's full blocks whose K/V are now written to the prefix cache.

        Called after a step ran, so a failed step never publishes garbage. A block whose exact
        content is already cached stays private (its twin serves future hits), and so do its
        successors: their parent is not in the cache.
        """
        if not self.enable_caching:
            return
        # Accepted speculative tokens are computed a moment before the engine appends them to the request's
        # tokens: their blocks are published by the next step's commit.
        num_full = min(request.num_computed_tokens, request.num_tokens) // self.block_size
        for index in range(request.num_published_blocks, num_full):
            block = self._blocks[request.block_ids[index]]
            parent_uid = self._blocks[request.block_ids[index - 1]].uid if index > 0 else 0
            if block.uid == 0 and (index == 0 or parent_uid != 0):
                block_hash = self._block_hash(request, index)
                tokens = self._tokens(request, index)
                if self._lookup(block_hash, tokens, request.cache_salt, parent_uid) is None:
                    block.block_hash, block.token_ids, block.cache_salt = (
                        block_hash,
                        tokens,
                        request.cache_salt,
                    )
                    block.parent_uid, block.uid = parent_uid, self._next_uid
                    self._next_uid += 1
                    self._cached.setdefault(block_hash, []).append(block.block_id)
        request.num_published_blocks = max(request.num_published_blocks, num_full)

    def free(self, request: BlockTable) -> None:
        """Release the request's blocks, last block first so that a prompt's tail is evicted before
        its head (heads are the most shared). Uncached blocks go to the front: they hold nothing
        worth keeping."""
        for block_id in reversed(request.block_ids):
            block = self._blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
                if block.uid == 0:
                    self._free.move_to_end(block_id, last=False)
        request.block_ids.clear()
        request.num_published_blocks = 0

    # -- internals ----------------------------------------------------------------------------------

    def _tokens(self, request: Request, index: int) -> tuple[int, ...]:
        return tuple(request.all_token_ids[index * self.block_size : (index + 1) * self.block_size])

    def _block_hash(self, request: Request, index: int) -> int:
        hashes = request.block_hashes
        while len(hashes) <= index:
            parent = hashes[-1] if hashes else None
            hashes.append(self._hash_fn(parent, self._tokens(request, len(hashes)), request.cache_salt))
        return hashes[index]

    def _lookup(
        self, block_hash: int, tokens: tuple[int, ...], cache_salt: str | None, parent_uid: int
    ) -> _Block | None:
        for block_id in self._cached.get(block_hash, ()):
            block = self._blocks[block_id]
            if (
                block.token_ids == tokens
                and block.cache_salt == cache_salt
                and block.parent_uid == parent_uid
            ):
                return block
        return None

    def _evict(self, block: _Block) -> None:
        if block.uid == 0:
            return
        assert block.block_hash is not None, f"cached block {block.block_id} has no hash"
        bucket = self._cached[block.block_hash]
        bucket.remove(block.block_id)
        if not bucket:
            del self._cached[block.block_hash]
        block.block_hash, block.uid, block.parent_uid, block.token_ids, block.cache_salt = (
            None,
            0,
            0,
            (),
            None,
        )
