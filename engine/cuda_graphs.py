"""CUDA graphs for decode steps: the model forward captured once per padded batch size, then replayed.

A decode step of a small model launches about fifteen kernels per layer, each finishing long before Python
has launched the next: on an H200 a Qwen3-1.7B-shaped model took 18 ms per eager step at batch 16 while
the GPU mostly idled. Replaying a captured graph issues the whole forward at once.

Only steps in which every sequence brings exactly one token (pure decode) are replayed; prefill and mixed
steps run eagerly. A step is staged into static buffers padded to the next captured size: padded rows
write no KV (slot -1) and attend to a single key, and their outputs are dropped. Everything the captured
kernels read lives in those buffers (or, for the fp8 KV cache scales, in tensors the layers fill in place),
so a replay sees the new step's values. vLLM's `--enforce-eager`
(EngineConfig.enforce_eager) turns this off.
"""

from __future__ import annotations

import bisect
import logging
import time

import torch

from engine.attention_metadata import AttentionMetadata
from engine.models import CausalLM

logger = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, 8, then every multiple of 16 up to max_num_seqs (padding a step
    costs at most 15 rows of compute, which decode hardly notices)."""
    sizes = [size for size in (1, 2, 4, 8) if size <= max_num_seqs]
    sizes += list(range(16, max_num_seqs + 1, 16))
    if sizes[-1] < max_num_seqs:
        sizes.append(max_num_seqs)
    return sizes


class DecodeBatchBuffers:
    """Static inputs of a decode forward for up to `max_batch` sequences, and the staging of one step."""

    def __init__(self, max_batch: int, max_blocks_per_seq: int, block_size: int, device: torch.device) -> None:
        self.max_batch = max_batch
        self.max_seq_len = max_blocks_per_seq * block_size
        self.input_ids = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((max_batch,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(max_batch, dtype=torch.int32, device=device)
        # Stale rows keep valid block ids (zeros at first): padded rows read one key of whichever block.
        self.block_tables = torch.zeros((max_batch, max_blocks_per_seq), dtype=torch.int32, device=device)
        # One query token per sequence: query_start_loc is 0..max_batch, once and for all.
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=device)

    def view(self, size: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """The first `size` rows as forward inputs (what a graph of that size is captured on)."""
        attn = AttentionMetadata(
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size],
            slot_mapping=self.slot_mapping[:size],
            max_query_len=1,
            max_seq_len=self.max_seq_len,
        )
        return self.input_ids[:size], self.positions[:size], attn

    def stage(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionMetadata, size: int) -> None:
        """Copy a decode step of n <= size sequences into rows :n and pad rows n:size."""
        n = input_ids.shape[0]
        width = attn.block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(attn.slot_mapping)
        self.seq_lens[:n].copy_(attn.seq_lens)
        self.block_tables[:n, :width].copy_(attn.block_tables)
        self.slot_mapping[n:size].fill_(-1)
        self.seq_lens[n:size].fill_(1)


class DecodeCudaGraphs:
    """One captured forward per size of `capture_sizes`, sharing a memory pool (replays never overlap)."""

    def __init__(
        self, model: CausalLM, kv_cache: torch.Tensor, max_num_seqs: int, max_model_len: int, block_size: int
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.sizes = capture_sizes(max_num_seqs)
        max_blocks_per_seq = -(-max_model_len // block_size)
        self.buffers = DecodeBatchBuffers(self.sizes[-1], max_blocks_per_seq, block_size, kv_cache.device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.replays = 0
        self._capture()

    @torch.inference_mode()
    def _capture(self) -> None:
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        # calculate_kv_scales measures on the first real forward, not on these: the graphs read the scale
        # tensors it fills when they replay.
        measuring = [layer for layer in self.model.attention_layers() if layer.calculate_kv_scales]
        for layer in measuring:
            layer.calculate_kv_scales = False
        try:
            for size in reversed(self.sizes):  # largest first: smaller graphs reuse its pool blocks
                input_ids, positions, attn = self.buffers.view(size)
                self.model(input_ids, positions, self.kv_cache, attn)  # compiles this size's kernels outside capture
                torch.cuda.synchronize(self.kv_cache.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.outputs[size] = self.model(input_ids, positions, self.kv_cache, attn)
                self.graphs[size] = graph
            torch.cuda.synchronize(self.kv_cache.device)
        finally:
            for layer in measuring:
                layer.calculate_kv_scales = True
        logger.info(
            "captured decode CUDA graphs for %d batch sizes (1..%d) in %.1f s",
            len(self.sizes), self.sizes[-1], time.perf_counter() - start,
        )

    def can_run(self, num_seqs: int, attn: AttentionMetadata) -> bool:
        """A pure decode step that fits the largest graph and the block-table width captured."""
        return (
            attn.max_query_len == 1
            and num_seqs <= self.sizes[-1]
            and attn.block_tables.shape[1] <= self.buffers.block_tables.shape[1]
        )

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionMetadata) -> torch.Tensor:
        """Hidden states [n, hidden_size] of a decode step; valid until the next replay."""
        n = input_ids.shape[0]
        size = self.sizes[bisect.bisect_left(self.sizes, n)]
        self.buffers.stage(input_ids, positions, attn, size)
        self.graphs[size].replay()
        self.replays += 1
        return self.outputs[size][:n]
