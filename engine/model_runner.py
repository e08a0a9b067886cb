"""Runs one scheduled step on the model: flatten -> forward -> logits of the sampled rows -> sample.

The runner owns the device, the model and the KV cache tensor
[num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]; the block manager only hands out
indices into it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.attention_metadata import AttentionMetadata
from engine.config import EngineConfig
from engine.models import CausalLM, load_model
from engine.sampler import Sampler, SamplingBatch
from engine.scheduler import ScheduledChunk, SchedulerOutput

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class RunnerOutput:
    """What one step produced."""

    # One sampled token per chunk whose `sample` is True, in chunk order.
    sampled_token_ids: list[int]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, model_dir: Path) -> torch.dtype:
    """auto: float32 on CPU (no fast half kernels there), the checkpoint's own dtype on CUDA."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cpu":
        return torch.float32
    with open(model_dir / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    return _DTYPES.get(str(config.get("dtype") or config.get("torch_dtype") or "bfloat16"), torch.bfloat16)


class ModelRunner:
    """Owns the model, the KV cache and the sampler; stateless between steps apart from the cache."""

    def __init__(self, config: EngineConfig, max_model_len: int | None = None) -> None:
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device, Path(config.model))
        self.block_size = config.block_size
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.model: CausalLM = load_model(config.model, self.dtype, self.device)
        self.spec = self.model.spec
        self.sampler = Sampler(config.seed, self.device)
        self.num_blocks = config.num_kv_blocks or self._pool_blocks(config)
        if self.num_blocks < 1:
            raise ValueError(f"no memory left for the KV cache (computed {self.num_blocks} blocks)")
        spec = self.spec
        self.kv_cache = torch.zeros(
            (spec.num_layers, 2, self.num_blocks, self.block_size, spec.num_kv_heads, spec.head_dim),
            dtype=self.dtype,
            device=self.device,
        )
        logger.info("KV cache: %d blocks of %d tokens on %s", self.num_blocks, self.block_size, self.device)

    @property
    def bytes_per_block(self) -> int:
        spec = self.spec
        element_size = torch.tensor([], dtype=self.dtype).element_size()
        return spec.num_layers * 2 * self.block_size * spec.num_kv_heads * spec.head_dim * element_size

    @torch.inference_mode()
    def run(self, out: SchedulerOutput) -> RunnerOutput:
        input_ids, positions, attn, sample_rows = self._prepare_inputs(out.chunks)
        hidden = self.model.forward(input_ids, positions, self.kv_cache, attn)
        sampled_chunks = [chunk for chunk in out.chunks if chunk.sample]
        if not sampled_chunks:
            return RunnerOutput(sampled_token_ids=[])
        logits = self.model.compute_logits(hidden[sample_rows])
        tokens = self.sampler(logits, self._sampling_batch(sampled_chunks))
        return RunnerOutput(sampled_token_ids=tokens.tolist())

    def _prepare_inputs(
        self, chunks: list[ScheduledChunk]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        """One varlen batch: input ids, positions, metadata, and the row of each sampled chunk's last token."""
        token_ids: list[int] = []
        starts, lengths, tables = [], [], []
        for chunk in chunks:
            begin = chunk.num_computed_before
            token_ids.extend(chunk.request.all_token_ids[begin : begin + chunk.num_tokens])
            starts.append(begin)
            lengths.append(chunk.num_tokens)
            tables.append(chunk.request.block_ids)
        start = torch.tensor(starts, dtype=torch.int64)
        q_lens = torch.tensor(lengths, dtype=torch.int64)
        seq_lens = start + q_lens
        query_start_loc = torch.zeros(len(chunks) + 1, dtype=torch.int64)
        torch.cumsum(q_lens, 0, out=query_start_loc[1:])
        # Position of token t of sequence s: start_s + (t - query_start_s), without a per-token loop.
        seq_index = torch.repeat_interleave(torch.arange(len(chunks)), q_lens)
        positions = torch.arange(int(query_start_loc[-1])) + (start - query_start_loc[:-1])[seq_index]
        width = max(-(-int(length) // self.block_size) for length in seq_lens.tolist())
        block_tables = torch.zeros((len(chunks), width), dtype=torch.int64)
        for row, table in enumerate(tables):
            used = min(len(table), width)
            block_tables[row, :used] = torch.tensor(table[:used], dtype=torch.int64)
        slot_mapping = (
            block_tables[seq_index, positions // self.block_size] * self.block_size
            + positions % self.block_size
        )
        sample_rows = torch.tensor(
            [int(query_start_loc[i + 1]) - 1 for i, chunk in enumerate(chunks) if chunk.sample],
            dtype=torch.int64,
        )
        attn = AttentionMetadata(
            query_start_loc=self._to_device(query_start_loc.to(torch.int32)),
            seq_lens=self._to_device(seq_lens.to(torch.int32)),
            block_tables=self._to_device(block_tables.to(torch.int32)),
            slot_mapping=self._to_device(slot_mapping),
            max_query_len=int(q_lens.max()),
            max_seq_len=int(seq_lens.max()),
        )
        input_tensor = self._to_device(torch.tensor(token_ids, dtype=torch.int64))
        return input_tensor, self._to_device(positions), attn, self._to_device(sample_rows)

    def _sampling_batch(self, chunks: list[ScheduledChunk]) -> SamplingBatch:
        params = [chunk.request.params for chunk in chunks]
        suppressed_rows: list[int] = []
        suppressed_tokens: list[int] = []
        for row, chunk in enumerate(chunks):
            request = chunk.request
            if request.num_output_tokens < request.params.min_tokens:
                suppressed_rows.extend([row] * len(request.min_tokens_suppressed))
                suppressed_tokens.extend(request.min_tokens_suppressed)

        def column(values: list, dtype: torch.dtype) -> torch.Tensor:
            return self._to_device(torch.tensor(values, dtype=dtype))

        return SamplingBatch(
            temperature=column([0.0 if p.greedy else p.temperature for p in params], torch.float32),
            top_p=column([p.top_p for p in params], torch.float32),
            top_k=column([p.top_k for p in params], torch.int64),
            min_p=column([p.min_p for p in params], torch.float32),
            generators=[chunk.request.generator for chunk in chunks],
            suppressed_rows=column(suppressed_rows, torch.int64),
            suppressed_tokens=column(suppressed_tokens, torch.int64),
            all_greedy=all(p.greedy for p in params),
            need_top_k=any(p.top_k > 0 and not p.greedy for p in params),
            need_top_p=any(p.top_p < 1.0 and not p.greedy for p in params),
            need_min_p=any(p.min_p > 0.0 and not p.greedy for p in params),
        )

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _pool_blocks(self, config: EngineConfig) -> int:
        if self.device.type == "cpu":
            return config.kv_cache_memory // self.bytes_per_block
        return self._profile_cuda_blocks(config.gpu_memory_utilization)

    @torch.inference_mode()
    def _profile_cuda_blocks(self, utilization: float) -> int:
        """Blocks that fit in `utilization` of the device after weights and a worst-case step's
        activations (a full token budget forward plus logits and sampling for max_num_seqs rows)."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        spec = self.spec
        num_tokens = self.max_num_batched_tokens
        blocks = -(-num_tokens // self.block_size)
        scratch = torch.zeros(
            (spec.num_layers, 2, blocks, self.block_size, spec.num_kv_heads, spec.head_dim),
            dtype=self.dtype,
            device=self.device,
        )
        attn = AttentionMetadata(
            query_start_loc=torch.tensor([0, num_tokens], dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device=self.device),
            block_tables=torch.arange(blocks, dtype=torch.int32, device=self.device).unsqueeze(0),
            slot_mapping=torch.arange(num_tokens, dtype=torch.int64, device=self.device),
            max_query_len=num_tokens,
            max_seq_len=num_tokens,
        )
        ids = torch.zeros(num_tokens, dtype=torch.int64, device=self.device)
        hidden = self.model.forward(ids, torch.arange(num_tokens, device=self.device), scratch, attn)
        rows = min(self.max_num_seqs, num_tokens)
        logits = self.model.compute_logits(hidden[:rows])
        logits.sort(dim=-1)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        del scratch, hidden, logits
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        # Memory held by others on the device (other processes, the CUDA context) is off limits too.
        other = total - free - torch.cuda.memory_reserved(self.device)
        available = int(total * utilization) - other - peak
        return available // self.bytes_per_block
