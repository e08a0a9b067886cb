"""The varlen batch description the model runner (and a draft model, engine.draft_model) hands to every
attention layer for one step, and how one is built from per-sequence starts, lengths and block tables."""

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


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to CUDA through pinned memory, so that the copy does not block the host."""
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def varlen_batch(
    starts: list[int], lengths: list[int], block_tables: list[list[int]], block_size: int, device: torch.device
) -> tuple[torch.Tensor, AttentionMetadata]:
    """The positions [T] and metadata, on `device`, of one varlen step in which sequence i computes
    `lengths[i]` tokens from position `starts[i]` on, its K/V going to the blocks `block_tables[i]` (which
    must cover them)."""
    start = torch.tensor(starts, dtype=torch.int64)
    q_lens = torch.tensor(lengths, dtype=torch.int64)
    seq_lens = start + q_lens
    query_start_loc = torch.zeros(len(starts) + 1, dtype=torch.int64)
    torch.cumsum(q_lens, 0, out=query_start_loc[1:])
    # Position of token t of sequence s: start_s + (t - query_start_s), without a per-token loop.
    seq_index = torch.repeat_interleave(torch.arange(len(starts)), q_lens)
    positions = torch.arange(int(query_start_loc[-1])) + (start - query_start_loc[:-1])[seq_index]
    width = max(-(-int(length) // block_size) for length in seq_lens.tolist())
    tables = torch.zeros((len(starts), width), dtype=torch.int64)
    for row, table in enumerate(block_tables):
        used = min(len(table), width)
        tables[row, :used] = torch.tensor(table[:used], dtype=torch.int64)
    slot_mapping = tables[seq_index, positions // block_size] * block_size + positions % block_size
    attn = AttentionMetadata(
        query_start_loc=to_device(query_start_loc.to(torch.int32), device),
        seq_lens=to_device(seq_lens.to(torch.int32), device),
        block_tables=to_device(tables.to(torch.int32), device),
        slot_mapping=to_device(slot_mapping, device),
        max_query_len=int(q_lens.max()),
        max_seq_len=int(seq_lens.max()),
    )
    return to_device(positions, device), attn
