"""Builds a mixed varlen batch in a paged KV pool, plus the dense per-sequence K/V it was built from."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedBatch:
    query: torch.Tensor  # [T, Hq, D]
    key_cache: torch.Tensor  # [num_blocks, Hkv, block_size, D]
    value_cache: torch.Tensor  # [num_blocks, Hkv, block_size, D]
    query_start_loc: torch.Tensor  # [S + 1] int32
    seq_lens: torch.Tensor  # [S] int32
    block_tables: torch.Tensor  # [S, max_blocks] int32, 0-padded
    dense_keys: list[torch.Tensor]  # per sequence [kv_len, Hkv, D]
    dense_values: list[torch.Tensor]  # per sequence [kv_len, Hkv, D]

    def args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.query, self.key_cache, self.value_cache, self.query_start_loc, self.seq_lens,
                self.block_tables)


def make_paged_batch(
    q_lens: list[int],
    kv_lens: list[int],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    block_size: int = 16,
    num_blocks: int = 32768,
    seed: int = 0,
    keys_transposed: bool = False,
) -> PagedBatch:
    """Sequence i has kv_lens[i] tokens in the cache, the last q_lens[i] of them queried this step.

    The pool is allocated uninitialised so a full-size pool costs only the pages of the blocks in use;
    those sit scattered among the top ids. Slots past a sequence's length hold NaN, so any read of
    them shows up in the output. With keys_transposed the key cache stores each tile as [D, block_size],
    as the engine does on the CPU (engine.kv_cache).
    """
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in kv_lens]
    top = torch.randperm(4 * sum(blocks_per_seq), generator=gen)[: sum(blocks_per_seq)]
    ids = (num_blocks - 1 - top).tolist()
    value_cache = torch.empty(num_blocks, num_kv_heads, block_size, head_dim, dtype=dtype, device=device)
    key_cache = torch.empty_like(value_cache)
    if keys_transposed:
        key_cache = torch.empty(num_blocks, num_kv_heads, head_dim, block_size, dtype=dtype, device=device)
        key_cache = key_cache.transpose(2, 3)
    block_tables = torch.zeros(len(kv_lens), max(blocks_per_seq), dtype=torch.int32)
    dense_keys: list[torch.Tensor] = []
    dense_values: list[torch.Tensor] = []
    for i, (n, nb) in enumerate(zip(kv_lens, blocks_per_seq, strict=True)):
        seq_blocks, ids = ids[:nb], ids[nb:]
        block_tables[i, :nb] = torch.tensor(seq_blocks)
        for cache, dense in ((key_cache, dense_keys), (value_cache, dense_values)):
            rows = torch.full((nb * block_size, num_kv_heads, head_dim), float("nan"))
            rows[:n] = torch.randn(n, num_kv_heads, head_dim, generator=gen)
            cache[seq_blocks] = rows.view(nb, block_size, num_kv_heads, head_dim).transpose(1, 2).to(device, dtype)
            dense.append(rows[:n].to(device, dtype))
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    query = torch.randn(starts[-1], num_q_heads, head_dim, generator=gen).to(device, dtype)
    return PagedBatch(
        query=query,
        key_cache=key_cache,
        value_cache=value_cache,
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(kv_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        dense_keys=dense_keys,
        dense_values=dense_values,
    )
