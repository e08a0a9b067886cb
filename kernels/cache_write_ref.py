"""Torch reference for writing this step's K/V rows into the paged cache by flat slot."""

from __future__ import annotations

import torch


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
    key_cache[blocks, :, offsets] = key[keep].to(key_cache.dtype)  # token t's [Hkv, D] rows
    value_cache[blocks, :, offsets] = value[keep].to(value_cache.dtype)
