"""Test harness: lays sequences out in a paged KV cache with shuffled block ids and builds each step's
AttentionMetadata the way a model runner would."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention_metadata import AttentionMetadata
from engine.models import CausalLM, ModelSpec

CPU = torch.device("cpu")


@dataclass
class Step:
    """One forward step's inputs."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    attn: AttentionMetadata
    # Per scheduled sequence: its row range in the step's [T] outputs.
    rows: list[slice]


class PagedSequences:
    """Token sequences sharing one KV cache; each owns a fixed, shuffled (non-contiguous) set of blocks."""

    def __init__(
        self,
        spec: ModelSpec,
        sequences: list[list[int]],
        block_size: int,
        seed: int = 0,
        device: torch.device = CPU,
        cache_dtype: torch.dtype | None = None,
    ) -> None:
        """`cache_dtype`: the KV cache's element type (EngineConfig.kv_cache_dtype); None = the model's."""
        self.sequences = sequences
        self.device = device
        self.block_size = block_size
        blocks_per_seq = max(-(-len(s) // block_size) for s in sequences)
        # Spare blocks so ids run well past what the sequences need and scatter across the pool.
        num_blocks = 2 * blocks_per_seq * len(sequences) + 3
        order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))
        self.block_tables = order[: blocks_per_seq * len(sequences)].view(len(sequences), blocks_per_seq)
        self.kv_cache = torch.zeros(
            spec.num_layers,
            2,
            num_blocks,
            spec.num_kv_heads,
            block_size,
            spec.head_dim,
            dtype=cache_dtype or spec.dtype,
            device=device,
        )
        self.num_computed = [0] * len(sequences)

    def step(self, chunks: dict[int, int]) -> Step:
        """Schedule `chunks[seq] = n` new tokens per sequence (prefill chunk or a decode of one)."""
        ids, positions, slots, query_start, seq_lens, rows = [], [], [], [0], [], []
        for seq, count in chunks.items():
            start = self.num_computed[seq]
            pos = torch.arange(start, start + count)
            blocks = self.block_tables[seq][pos // self.block_size]
            rows.append(slice(query_start[-1], query_start[-1] + count))
            ids.append(torch.tensor(self.sequences[seq][start : start + count]))
            positions.append(pos)
            slots.append(blocks * self.block_size + pos % self.block_size)
            query_start.append(query_start[-1] + count)
            seq_lens.append(start + count)
            self.num_computed[seq] = start + count
        dev = self.device
        attn = AttentionMetadata(
            query_start_loc=torch.tensor(query_start, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=self.block_tables[list(chunks)].to(dev, torch.int32),
            slot_mapping=torch.cat(slots).to(dev, torch.int64),
            max_query_len=max(chunks.values()),
            max_seq_len=max(seq_lens),
        )
        return Step(
            torch.cat(ids).to(dev, torch.int64), torch.cat(positions).to(dev, torch.int64), attn, rows
        )


def paged_logits(model: CausalLM, generated: list[int], prompt_length: int, cache_dtype: torch.dtype) -> torch.Tensor:
    """Our logits along `generated`: the prompt in one step, then a decode per token, over a paged cache."""
    paged = PagedSequences(model.spec, [generated], block_size=16, seed=7, cache_dtype=cache_dtype)
    rows = []
    with torch.inference_mode():
        for count in [prompt_length] + [1] * (len(generated) - prompt_length - 1):
            step = paged.step({0: count})
            rows.append(model.compute_logits(model(step.input_ids, step.positions, paged.kv_cache, step.attn)))
    return torch.cat(rows)
