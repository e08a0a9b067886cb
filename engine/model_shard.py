"""One rank's model and KV cache: the whole model without tensor parallelism, a shard of it with.

Rank 0 (the ModelRunner) and every tensor-parallel worker build one. The KV pool must hold the same
number of blocks on every rank, because rank 0's block manager hands out block ids for all of them: each
rank sizes its pool, and all take the smallest.
"""

from __future__ import annotations

import logging

import torch

from engine.attention_metadata import AttentionMetadata
from engine.config import EngineConfig
from engine.distributed import TensorParallelGroup
from engine.host_memory import keep_freed_memory, zeros_on_huge_pages
from engine.kv_cache import resolve_cache_dtype
from engine.lora import load_adapter
from engine.models import CausalLM, load_model, packed_gemm
from engine.models.lora import attach_adapter

logger = logging.getLogger(__name__)


class ModelShard:
    """The model (this rank's shard) and its KV cache
    [num_layers, 2, num_blocks, num_kv_heads of this rank, block_size, head_dim] (engine.kv_cache)."""

    def __init__(
        self, config: EngineConfig, device: torch.device, dtype: torch.dtype, group: TensorParallelGroup
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.cache_dtype = resolve_cache_dtype(config.kv_cache_dtype, dtype, device)
        self.group = group
        self.block_size = config.block_size
        self.model: CausalLM = load_model(config.model, dtype, device, group)
        # Slot i + 1 is the i-th adapter of lora_modules on every rank (engine.lora_slots numbers them so).
        for slot, (name, path) in enumerate(config.lora_modules.items(), start=1):
            attach_adapter(self.model, load_adapter(name, path), slot)
        if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16):
            self._prepack_weights(config.cpu_weight_format, config.kv_cache_memory)
        elif config.cpu_weight_format not in ("auto", packed_gemm.PLAIN):
            logger.warning(
                "cpu_weight_format=%s applies to float32 and bfloat16 on the CPU; %s on %s keeps its weights as loaded",
                config.cpu_weight_format, dtype, device,
            )  # fmt: skip
        if device.type == "cpu":
            # After packing: the plain weights it freed go back to the kernel first.
            keep_freed_memory()
        self.spec = self.model.spec
        self.num_blocks = group.all_reduce_min(config.num_kv_blocks or self._pool_blocks(config))
        if self.num_blocks < 1:
            raise ValueError(f"no memory left for the KV cache (computed {self.num_blocks} blocks)")
        self.kv_cache = self._allocate_cache(self.num_blocks)
        if config.calculate_kv_scales:
            for attention in self.model.attention_layers():
                attention.kv_scaled = attention.calculate_kv_scales = True
        logger.info(
            "KV cache (tensor-parallel rank %d of %d): %d blocks of %d tokens, %s, on %s",
            group.rank,
            group.size,
            self.num_blocks,
            self.block_size,
            str(self.cache_dtype).removeprefix("torch."),
            device,
        )

    def _prepack_weights(self, weight_format: str, kv_cache_memory: int) -> None:
        if weight_format == "auto":
            costs = packed_gemm.format_costs(self.model.timing_weights())
            # Every rank packs the same way (a step waits for its slowest rank at each all-reduce), so the
            # ranks' costs are summed before the cheapest is taken.
            summed = self.group.all_reduce(torch.tensor(list(costs.values()), dtype=torch.float64))
            weight_format = list(costs)[int(summed.argmin())]
            # The ranks share the host: the second copy is every rank's, beside the KV pool still to come.
            own_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
            all_bytes = int(
                self.group.all_reduce(torch.tensor([float(own_bytes)], dtype=torch.float64)).item()
            )
            refined = packed_gemm.refine(weight_format, self.dtype, all_bytes, kv_cache_memory)
            # Refined on every rank or on none (each reads the memory available at its own moment).
            votes = self.group.all_reduce(
                torch.tensor([float(refined != weight_format)], dtype=torch.float64)
            )
            if int(votes.item()) == self.group.size:
                weight_format = refined
            logger.info(
                "%s CPU weights: %s (cost against F.linear: %s)",
                self.dtype, weight_format, ", ".join(f"{name} {cost:.2f}" for name, cost in costs.items()),
            )  # fmt: skip
        if weight_format != packed_gemm.PLAIN:
            self.model.pack_weights(weight_format)

    @property
    def bytes_per_block(self) -> int:
        """KV bytes of one block on this rank (its KV heads only)."""
        spec = self.spec
        element_size = self.cache_dtype.itemsize
        return spec.num_layers * 2 * self.block_size * self.model.num_kv_heads * spec.head_dim * element_size

    def _allocate_cache(self, num_blocks: int) -> torch.Tensor:
        spec = self.spec
        shape = (spec.num_layers, 2, num_blocks, self.model.num_kv_heads, self.block_size, spec.head_dim)
        if self.device.type == "cpu":
            return zeros_on_huge_pages(shape, self.cache_dtype)
        return torch.zeros(shape, dtype=self.cache_dtype, device=self.device)

    def _pool_blocks(self, config: EngineConfig) -> int:
        if self.device.type == "cpu":
            # kv_cache_memory is the budget of all ranks together (they share the host's memory), so with
            # split KV heads the pool has as many blocks as without tensor parallelism.
            return config.kv_cache_memory // (self.bytes_per_block * self.group.size)
        return self._profile_cuda_blocks(config)

    @torch.inference_mode()
    def _profile_cuda_blocks(self, config: EngineConfig) -> int:
        """Blocks that fit in `gpu_memory_utilization` of this rank's device after weights and a worst-case
        step's activations (a full token budget forward plus logits and sampling for max_num_seqs rows).
        Every rank runs this forward at the same time, so its collectives line up."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        num_tokens = config.max_num_batched_tokens
        blocks = -(-num_tokens // self.block_size)
        scratch = self._allocate_cache(blocks)
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
        rows = min(config.max_num_seqs, num_tokens)
        # A classifier never samples: its head's few logits are nothing to budget for.
        logits = self.model.gather_logits(hidden[:rows]) if self.model.score is None else None
        if logits is not None:
            logits.sort(dim=-1)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        del scratch, hidden, logits
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        # Memory held by others on the device (other processes, the CUDA context) is off limits too.
        other = total - free - torch.cuda.memory_reserved(self.device)
        available = int(total * config.gpu_memory_utilization) - other - peak
        return available // self.bytes_per_block
