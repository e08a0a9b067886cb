"""Torch reference for writing this step's K/V rows into the paged cache by flat slot."""

from __future__ import annotations

import torch

from kernels.native_library import FP8_DTYPES


def write_kv_cache_ref(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D], written in place
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D], written in place
    slot_mapping: torch.Tensor,  # [T] int64: block_id * block_size + offset, -1 = padding to skip
) -> None:
    """Copy token t's K/V into slot slot_mapping[t] of the caches; tokens with slot -1 are skipped."""
    keep = (slot_mapping >= 0).nonzero().squeeze(1)
    slots = slot_mapping[keep]
    block_size = key_cache.shape[2]
    blocks, offsets = slots // block_size, slots % block_size
    key_cache[blocks, :, offsets] = to_cache_dtype(key[keep], key_cache.dtype)  # token t's [Hkv, D] rows
    value_cache[blocks, :, offsets] = to_cache_dtype(value[keep], value_cache.dtype)


def to_cache_dtype(x: torch.Tensor, cache_dtype: torch.dtype) -> torch.Tensor:
    """x as a cache of `cache_dtype` stores it: rounded to nearest, and into an fp8 cache saturated at the
    format's largest finite value first (vLLM's fp8 cache writes saturate too; torch alone would give e5m2
    an infinity), NaN kept."""
    if cache_dtype in FP8_DTYPES:
        largest = torch.finfo(cache_dtype).max
        x = x.clamp(-largest, largest)
    return x.to(cache_dtype)
