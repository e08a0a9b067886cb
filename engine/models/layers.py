"""The decoder blocks shared by every supported family: RMSNorm, rotary, paged attention, gated MLP.

Families differ only through `ArchitectureFlags`; every numeric op goes through `kernels.ops`, which picks
the Triton kernel on CUDA and, on the CPU, the C++ kernel where one is built or else the torch reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.attention_metadata import AttentionMetadata
from engine.distributed import TensorParallelGroup
from engine.models.linear import ColumnParallelLinear, RowParallelLinear
from engine.models.moe import SparseMoE
from engine.models.rope import build_cos_sin_cache
from engine.models.sharding import RowSlice, head_shard
from engine.models.spec import ModelSpec
from kernels import ops
from kernels.native_library import FP8_DTYPES

if TYPE_CHECKING:
    from engine.models.lora import LoRABatch

# calculate_kv_scales brings the largest key (as rotation can make it) and value of the forward it measures
# to these (vLLM's K_SCALE_CONSTANT and V_SCALE_CONSTANT): e4m3 reaches 448, so later keys may grow 2.2x
# past the measured peak and values 4.5x before they saturate.
K_SCALE_RANGE = 200.0
V_SCALE_RANGE = 100.0
# A peak below this (a layer of zeros) measures as this, so that no scale is 0.
_SMALLEST_PEAK = 1e-6


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, optionally fused with the residual add that precedes it."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype, device=device), False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, size] -> norm(x) * weight."""
        out = ops.rms_norm(x, self.weight, self.eps)
        assert isinstance(out, torch.Tensor)
        return out

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual) * weight, x + residual): the residual add fused into the norm."""
        out = ops.rms_norm(x, self.weight, self.eps, residual)
        assert isinstance(out, tuple)
        return out


class RotaryEmbedding(nn.Module):
    """The float32 cos/sin table, built once and shared by all layers."""

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        super().__init__()
        self.cos_sin_cache: torch.Tensor
        self.register_buffer("cos_sin_cache", build_cos_sin_cache(spec.rope, device), persistent=False)

    def rotate_and_cache(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> torch.Tensor:
        """Rotates query and key by position, stores the rotated key and the value in the caches at
        slot_mapping; returns the rotated query."""
        # Every supported family rotates halves (HF `rotate_half`), i.e. neox style.
        return ops.rotary_write_kv(
            positions, query, key, value, self.cos_sin_cache, True, key_cache, value_cache, slot_mapping
        )


class Attention(nn.Module):
    """Self-attention over the paged KV cache: this step's K/V are written first, then every query token
    attends to its sequence's cached and new tokens through the block table. Under tensor parallelism
    a rank computes its own heads (`head_shard`) over its own KV cache shard."""

    def __init__(
        self,
        spec: ModelSpec,
        layer_idx: int,
        rotary: RotaryEmbedding,
        device: torch.device,
        group: TensorParallelGroup,
    ) -> None:
        super().__init__()
        flags, dtype, d = spec.flags, spec.dtype, spec.head_dim
        shard = head_shard(spec, group.rank, group.size)
        self.num_heads, self.num_kv_heads, self.head_dim = shard.num_heads, shard.num_kv_heads, d
        self.scale = d**-0.5
        self.sliding_window = spec.sliding_windows[layer_idx]
        q_rows = RowSlice(shard.head_start * d, shard.num_heads * d, spec.num_heads * d)
        kv_rows = RowSlice(shard.kv_head_start * d, shard.num_kv_heads * d, spec.num_kv_heads * d)
        self.qkv_proj = ColumnParallelLinear(
            spec.hidden_size, (q_rows, kv_rows, kv_rows), flags.qkv_bias, dtype, device
        )
        self.o_proj = RowParallelLinear(q_rows, spec.hidden_size, flags.o_proj_bias, dtype, device, group)
        self.q_norm = RMSNorm(d, spec.rms_norm_eps, dtype, device) if flags.qk_norm else None
        self.k_norm = RMSNorm(d, spec.rms_norm_eps, dtype, device) if flags.qk_norm else None
        self.rotary = rotary
        # fp8 KV cache scales (vLLM's k_scale / v_scale): an fp8 cache holds key / k_scale and value /
        # v_scale, so keys and values beyond the format's range (448 for e4m3; Qwen2's biased keys reach
        # thousands) keep their precision instead of saturating. From the checkpoint's calibration (the
        # loader) or measured on the first forward (calculate_kv_scales). Tensors every forward reads, so
        # CUDA graphs captured before a measurement replay with its values. Unused by other cache dtypes.
        self.k_scale = torch.ones((), dtype=torch.float32, device=device)
        self.v_scale = torch.ones((), dtype=torch.float32, device=device)
        # Whether the scales apply: unscaled fp8 caches skip their four multiplications.
        self.kv_scaled = False
        # Measure the scales on the next forward (vLLM's --calculate-kv-scales), then keep them.
        self.calculate_kv_scales = False

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        attn: AttentionMetadata,
        lora: LoRABatch | None = None,
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj.split(self.qkv_proj(hidden, lora))
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q = self._head_norm(self.q_norm, q)
            k = self._head_norm(self.k_norm, k)
        # Scaled where the cache is fp8: rotation is linear, so the key is divided before it and the query
        # takes k_scale back; the output takes v_scale back.
        scaled = self.kv_scaled and key_cache.dtype in FP8_DTYPES
        if scaled:
            if self.calculate_kv_scales:
                self._measure_kv_scales(k, v)
            q, k, v = q * self.k_scale, k / self.k_scale, v / self.v_scale
        q = self.rotary.rotate_and_cache(positions, q, k, v, key_cache, value_cache, attn.slot_mapping)
        out = ops.paged_attention(
            q,
            key_cache,
            value_cache,
            attn.query_start_loc,
            attn.seq_lens,
            attn.block_tables,
            self.scale,
            sliding_window=self.sliding_window,
        )
        if scaled:
            out = out * self.v_scale
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim), lora)

    def _measure_kv_scales(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Scales that bring this forward's largest key to K_SCALE_RANGE and value to V_SCALE_RANGE (vLLM's
        calculate_kv_scales); later keys and values may grow past them by the format's headroom.

        Keys are measured before rotation, by the norm of each rotation pair (element i with i + d/2): the
        largest any element of the pair reaches at any angle. vLLM measures the rotated keys themselves,
        which only the positions of this forward reach; a scale up to 1.41x larger, never saturated by
        the same key at another position.
        """
        pairs = k.float().unflatten(-1, (2, k.shape[-1] // 2))
        key_peak = torch.linalg.vector_norm(pairs, dim=-2).amax()
        self.k_scale.copy_(key_peak.clamp(min=_SMALLEST_PEAK) / K_SCALE_RANGE)
        self.v_scale.copy_(v.abs().amax().float().clamp(min=_SMALLEST_PEAK) / V_SCALE_RANGE)
        self.calculate_kv_scales = False

    @staticmethod
    def _head_norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm applied to each head vector on its own (Qwen3's q/k norm)."""
        return norm(x.reshape(-1, x.shape[-1])).view(x.shape)


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matmul; each tensor-parallel rank
    computes its share of the intermediate features."""

    def __init__(self, spec: ModelSpec, device: torch.device, group: TensorParallelGroup) -> None:
        super().__init__()
        bias, dtype = spec.flags.mlp_bias, spec.dtype
        inter = RowSlice.even(spec.intermediate_size, group.rank, group.size)
        self.gate_up_proj = ColumnParallelLinear(spec.hidden_size, (inter, inter), bias, dtype, device)
        self.down_proj = RowParallelLinear(inter, spec.hidden_size, bias, dtype, device, group)

    def forward(self, x: torch.Tensor, lora: LoRABatch | None = None) -> torch.Tensor:
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x, lora)), lora)


class DecoderLayer(nn.Module):
    """Pre-norm transformer block. The residual stream is carried separately so each norm can fuse the
    residual add of the sublayer before it."""

    def __init__(
        self,
        spec: ModelSpec,
        layer_idx: int,
        rotary: RotaryEmbedding,
        device: torch.device,
        group: TensorParallelGroup,
    ) -> None:
        super().__init__()
        eps, dtype = spec.rms_norm_eps, spec.dtype
        self.input_layernorm = RMSNorm(spec.hidden_size, eps, dtype, device)
        self.self_attn = Attention(spec, layer_idx, rotary, device, group)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, eps, dtype, device)
        sparse = spec.moe is not None and spec.moe.sparse_layers[layer_idx]
        self.mlp: MLP | SparseMoE = SparseMoE(spec, device, group) if sparse else MLP(spec, device, group)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        attn: AttentionMetadata,
        lora: LoRABatch | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden is the previous sublayer's output and residual the stream before it (None at layer 0).
        The caches are this layer's [num_blocks, num_kv_heads, block_size, head_dim] (engine.kv_cache);
        `lora` says which rows take which adapter's updates (None: the base model for every row)."""
        if residual is None:
            residual = hidden
            normed = self.input_layernorm(hidden)
        else:
            normed, residual = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.self_attn(positions, normed, key_cache, value_cache, attn, lora)
        normed, residual = self.post_attention_layernorm.add_and_norm(hidden, residual)
        return self.mlp(normed, lora), residual
