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


def load_weights(
    model_dir: str,
    config: EngineConfig,
    device: torch.device,
    dtype: torch.dtype,
    group: TensorParallelGroup,
    lora_modules: dict[str, str],
) -> CausalLM:
    """The checkpoint in `model_dir` (this rank's shard of it) as the engine runs it: `lora_modules` attached
    (slot i + 1: the i-th) and CPU weights packed as config.cpu_weight_format says."""
    model = load_model(model_dir, dtype, device, group)
    # Slot i + 1 is the i-th adapter of lora_modules on every rank (engine.lora_slots numbers them so).
    for slot, (name, path) in enumerate(lora_modules.items(), start=1):
        attach_adapter(model, load_adapter(name, path), slot)
    if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16):
        _prepack_weights(model, dtype, group, config.cpu_weight_format, config.kv_cache_memory)
    elif config.cpu_weight_format not in ("auto", packed_gemm.PLAIN):
        logger.warning(
            "cpu_weight_format=%s applies to float32 and bfloat16 on the CPU; %s on %s keeps its weights as loaded",
            config.cpu_weight_format, dtype, device,
        )  # fmt: skip
    if device.type == "cpu":
        # After packing: the plain weights it freed go back to the kernel first.
        keep_freed_memory()
    return model


def measure_kv_scales(model: CausalLM) -> None:
    """Have every layer measure its fp8 KV cache scales on the model's next forward (calculate_kv_scales).
    Called once the model's forwards are real ones: after the CUDA memory profile's, which runs on dummy
    tokens."""
    for attention in model.attention_layers():
        attention.kv_scaled = attention.calculate_kv_scales = True


def kv_bytes_per_block(model: CausalLM, cache_dtype: torch.dtype, block_size: int) -> int:
    """KV bytes of one block of `model`'s cache (on this rank: its KV heads only)."""
    spec = model.spec
    return spec.num_layers * 2 * block_size * model.num_kv_heads * spec.head_dim * cache_dtype.itemsize


def allocate_kv_cache(
    model: CausalLM, num_blocks: int, block_size: int, cache_dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """`model`'s zeroed KV cache of `num_blocks` blocks (layout: engine.kv_cache)."""
    spec = model.spec
    shape = (spec.num_layers, 2, num_blocks, model.num_kv_heads, block_size, spec.head_dim)
    if device.type == "cpu":
        return zeros_on_huge_pages(shape, cache_dtype)
    return torch.zeros(shape, dtype=cache_dtype, device=device)


def _prepack_weights(
    model: CausalLM, dtype: torch.dtype, group: TensorParallelGroup, weight_format: str, kv_cache_memory: int
) -> None:
    if weight_format == "auto":
        costs = packed_gemm.format_costs(model.timing_weights())
        # Every rank packs the same way (a step waits for its slowest rank at each all-reduce), so the
        # ranks' costs are summed before the cheapest is taken.
        summed = group.all_reduce(torch.tensor(list(costs.values()), dtype=torch.float64))
        weight_format = list(costs)[int(summed.argmin())]
        # The ranks share the host: the second copy is every rank's, beside the KV pool still to come.
        own_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        all_bytes = int(group.all_reduce(torch.tensor([float(own_bytes)], dtype=torch.float64)).item())
        refined = packed_gemm.refine(weight_format, dtype, all_bytes, kv_cache_memory)
        # Refined on every rank or on none (each reads the memory available at its own moment).
        votes = group.all_reduce(torch.tensor([float(refined != weight_format)], dtype=torch.float64))
        if int(votes.item()) == group.size:
            weight_format = refined
        logger.info(
            "%s CPU weights: %s (cost against F.linear: %s)",
            dtype, weight_format, ", ".join(f"{name} {cost:.2f}" for name, cost in costs.items()),
        )  # fmt: skip
    if weight_format != packed_gemm.PLAIN:
        model.pack_weights(weight_format)


class ModelShard:
    """The model (this rank's shard) and its KV cache
    [num_layers, 2, num_blocks, num_kv_heads of this rank, block_size, head_dim] (engine.kv_cache)."""

    def __init__(
        self,
        config: EngineConfig,
        device: torch.device,
        dtype: torch.dtype,
        group: TensorParallelGroup,
        extra_bytes_per_block: int = 0,
    ) -> None:
        """`extra_bytes_per_block`: the KV bytes per block of a second cache this rank keeps beside its own,
        with as many blocks (the draft model's, engine.draft_model); the pool is sized for both."""
        self.device = device
        self.dtype = dtype
        self.cache_dtype = resolve_cache_dtype(config.kv_cache_dtype, dtype, device)
        self.group = group
        self.block_size = config.block_size
        self.model = load_weights(config.model, config, device, dtype, group, config.lora_modules)
        self.spec = self.model.spec
        self.bytes_per_block = kv_bytes_per_block(self.model, self.cache_dtype, self.block_size)
        self.num_blocks = group.all_reduce_min(config.num_kv_blocks or self._pool_blocks(config, extra_bytes_per_block))
        if self.num_blocks < 1:
            raise ValueError(f"no memory left for the KV cache (computed {self.num_blocks} blocks)")
        self.kv_cache = allocate_kv_cache(self.model, self.num_blocks, self.block_size, self.cache_dtype, device)
        if config.calculate_kv_scales:
            measure_kv_scales(self.model)
        logger.info(
            "KV cache (tensor-parallel rank %d of %d): %d blocks of %d tokens, %s, on %s",
            group.rank,
            group.size,
            self.num_blocks,
            self.block_size,
            str(self.cache_dtype).removeprefix("torch."),
            device,
        )

    def _pool_blocks(self, config: EngineConfig, extra_bytes_per_block: int) -> int:
        if self.device.type == "cpu":
            # kv_cache_memory is the budget of all ranks together (they share the host's memory), so with
            # split KV heads the pool has as many blocks as without tensor parallelism; the extra cache is
            # rank 0's alone.
            return config.kv_cache_memory // (self.bytes_per_block * self.group.size + extra_bytes_per_block)
        return self._profile_cuda_memory(config) // (self.bytes_per_block + extra_bytes_per_block)

    @torch.inference_mode()
    def _profile_cuda_memory(self, config: EngineConfig) -> int:
        """Bytes left for KV caches in `gpu_memory_utilization` of this rank's device after the weights
        (a draft model's, loaded before, among them) and a worst-case step's activations (a full token budget
        forward plus logits and sampling for max_num_seqs rows). Every rank runs this forward at the same
        time, so its collectives line up."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        num_tokens = config.max_num_batched_tokens
        blocks = -(-num_tokens // self.block_size)
        scratch = allocate_kv_cache(self.model, blocks, self.block_size, self.cache_dtype, self.device)
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
        return int(total * config.gpu_memory_utilization) - other - peak
