"""The varlen batch description the model runner hands to every attention layer for one step."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """One engine step flattened into a single varlen batch of S sequences and T query tokens.

    Sequence i owns query tokens ``query_start_loc[i]:query_start_loc[i+1]``; they are the last
    ``q_len_i`` of its ``seq_lens[i]`` tokens, so query token j of sequence i sits at position
    ``seq_lens[i] - q_len_i + j`` and attends causally to KV positions ``<=`` that one.
    Decode is simply a sequence whose q_len is 1; prefill chunks and decodes mix freely.
    """

    # [S + 1] int32: prefix sums of per-sequence query lengths; query_start_loc[-1] == T.
    query_start_loc: torch.Tensor
    # [S] int32: total KV length per sequence after this step's tokens are written (cached + new).
    seq_lens: torch.Tensor
    # [S, max_blocks_per_seq] int32: physical KV block ids per sequence, padded with 0 past its end.
    block_tables: torch.Tensor
    # [T] int64: flat cache slot (block_id * block_size + offset) for each query token's K/V; -1 skips.
    slot_mapping: torch.Tensor
    # Largest per-sequence query length in the batch (host int, sizes kernel grids without a sync).
    max_query_len: int
    # Largest seq_lens entry in the batch (host int).
    max_seq_len: int
