"""The engine's entry point to every numeric kernel: Triton on CUDA tensors, the torch reference otherwise.

The Triton modules are imported on first use, not here: `@triton.jit` decides at decoration time whether
a kernel runs compiled or under TRITON_INTERPRET, so importing them with the engine would fix that choice
before a test process has had a chance to set the variable.
"""

from __future__ import annotations

from typing import overload

import torch

from kernels import native_library
from kernels.activation_ref import silu_and_mul_ref
from kernels.cache_write_ref import write_kv_cache_ref
from kernels.paged_attention_ref import paged_attention_ref
from kernels.rms_norm_ref import rms_norm_ref
from kernels.rotary_ref import rotary_embedding_ref

BACKENDS = ("auto", "torch", "triton")
_backend = "auto"


def set_backend(name: str) -> None:
    """auto: Triton for CUDA tensors, otherwise the native C++ kernels where they are built (kernels.native_library)
    and the torch references for the rest; torch/triton force one (triton on CPU needs TRITON_INTERPRET=1 set
    before the first kernel call)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {BACKENDS}")
    _backend = name


def _triton(x: torch.Tensor) -> bool:
    return _backend == "triton" or (_backend == "auto" and x.is_cuda)


def _native(*tensors: torch.Tensor) -> bool:
    """The C++ CPU kernels (kernels/native) take CPU tensors of one dtype, float32 or bfloat16, under the
    auto backend, once built."""
    # Asked several times a layer: plain loops and `is_cpu` cost a third of a generator over `device.type`.
    # The library is loaded last, so CUDA tensors never build it.
    if _backend != "auto":
        return False
    dtype = tensors[0].dtype
    if dtype not in native_library.DTYPES:
        return False
    for tensor in tensors:
        if not tensor.is_cpu or tensor.dtype != dtype:
            return False
    return native_library.load()


def paged_attention(
    query: torch.Tensor,  # [T, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    query_start_loc: torch.Tensor,  # [S + 1] int32
    seq_lens: torch.Tensor,  # [S] int32: cached + this step's tokens, already in the cache
    block_tables: torch.Tensor,  # [S, max_blocks] int32
    scale: float,
    *,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """Causal varlen attention of this step's query tokens over their sequences' paged KV; [T, Hq, D]."""
    if _triton(query):
        from kernels.paged_attention_triton import paged_attention_triton

        return paged_attention_triton(
            query, key_cache, value_cache, query_start_loc, seq_lens, block_tables, scale,
            sliding_window=sliding_window, soft_cap=soft_cap,
        )
    return paged_attention_ref(
        query, key_cache, value_cache, query_start_loc, seq_lens, block_tables, scale,
        sliding_window=sliding_window, soft_cap=soft_cap, native=_backend == "auto",
    )


def write_kv_cache(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    slot_mapping: torch.Tensor,  # [T] int64, -1 = skip
) -> None:
    """Store each token's K/V at its flat cache slot (block_id * block_size + offset), in place."""
    if _triton(key):
        from kernels.cache_write_triton import write_kv_cache_triton

        write_kv_cache_triton(key, value, key_cache, value_cache, slot_mapping)
    else:
        write_kv_cache_ref(key, value, key_cache, value_cache, slot_mapping)


def rotary_write_kv(
    positions: torch.Tensor,  # [T] int64
    query: torch.Tensor,  # [T, Hq, D]
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    cos_sin_cache: torch.Tensor,  # [max_pos, rot_dim]: cos | sin
    is_neox: bool,
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    slot_mapping: torch.Tensor,  # [T] int64, -1 = skip
) -> torch.Tensor:
    """rotary_embedding then write_kv_cache of the rotated keys; returns the rotated query. On the CPU one
    native pass does both (the rotated keys go straight into the cache)."""
    if (
        is_neox
        and _native(query, key, value)
        and native_library.supports_cache(query.dtype, key_cache.dtype)
        and key_cache.dtype == value_cache.dtype
        and key_cache.is_cpu
        and value_cache.is_cpu
        and query.stride(2) == key.stride(2) == value.stride(2) == 1
        and cos_sin_cache.dtype == torch.float32
        and cos_sin_cache.device.type == "cpu"
        and cos_sin_cache.is_contiguous()
        and positions.dtype == slot_mapping.dtype == torch.int64
        and positions.is_contiguous()
        and slot_mapping.is_contiguous()
    ):
        return torch.ops.tritonllm_cpu.rotary_write_kv(
            positions, query, key, value, cos_sin_cache, key_cache, value_cache, slot_mapping
        )
    query, key = rotary_embedding(positions, query, key, cos_sin_cache, is_neox)
    write_kv_cache(key, value, key_cache, value_cache, slot_mapping)
    return query


@overload
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: None = None) -> torch.Tensor: ...
@overload
def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]: ...
def rms_norm(
    x: torch.Tensor,  # [T, H]
    weight: torch.Tensor,  # [H]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, H]
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """norm(x) * weight, or (norm(x + residual) * weight, x + residual) when a residual is given."""
    if _triton(x):
        from kernels.rms_norm_triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps, residual)
    if x.dim() == 2 and x.stride(1) == 1 and weight.is_contiguous() and _native(x, weight):
        if residual is None:
            return torch.ops.tritonllm_cpu.rms_norm(x, weight, eps)
        if residual.shape == x.shape and residual.stride(1) == 1 and _native(x, residual):
            normed, summed = torch.ops.tritonllm_cpu.add_rms_norm(x, residual, weight, eps)
            return normed, summed
    return rms_norm_ref(x, weight, eps, residual)


def rotary_embedding(
    positions: torch.Tensor,  # [T] int64
    query: torch.Tensor,  # [T, Hq, D]
    key: torch.Tensor,  # [T, Hkv, D]
    cos_sin_cache: torch.Tensor,  # [max_pos, rot_dim]: cos | sin
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding of the first rot_dim features of each head; returns new (query, key)."""
    if _triton(query):
        from kernels.rotary_triton import rotary_embedding_triton

        return rotary_embedding_triton(positions, query, key, cos_sin_cache, is_neox)
    return rotary_embedding_ref(positions, query, key, cos_sin_cache, is_neox)


def greedy_argmax(logits: torch.Tensor) -> torch.Tensor:  # [N, V] -> [N] int64
    """Each row's argmax as torch.argmax(dim=-1) answers it (the first index of the largest value; a NaN
    ranks above every number); torch's own operator is the reference and the path off the C++ kernels."""
    if logits.dim() == 2 and logits.dtype == torch.float32 and logits.stride(1) == 1 and logits.shape[1] > 0:
        if _native(logits):
            return torch.ops.tritonllm_cpu.greedy_argmax(logits)
    return logits.argmax(dim=-1)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # [T, 2 * I] -> [T, I]
    """silu(x[:, :I]) * x[:, I:]."""
    if _triton(x):
        from kernels.activation_triton import silu_and_mul_triton

        return silu_and_mul_triton(x)
    if x.dim() == 2 and x.stride(1) == 1 and _native(x):
        return torch.ops.tritonllm_cpu.silu_and_mul(x)
    return silu_and_mul_ref(x)
