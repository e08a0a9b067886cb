"""Triton KV cache write by flat slot; the torch reference is `kernels.cache_write_ref.write_kv_cache_ref`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_cache_kernel(
    key_ptr,  # [T, Hkv, D]
    value_ptr,  # [T, Hkv, D]
    key_cache_ptr,  # [num_blocks, Hkv, BLOCK_SIZE, D]
    value_cache_ptr,  # [num_blocks, Hkv, BLOCK_SIZE, D]
    slot_mapping_ptr,  # [T] int64, -1 = skip
    stride_k_t, stride_k_h,
    stride_v_t, stride_v_h,
    stride_kc_b, stride_kc_h, stride_kc_s, stride_kc_d,
    stride_vc_b, stride_vc_h, stride_vc_s, stride_vc_d,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
):
    token = tl.program_id(0)
    head = tl.program_id(1)
    slot = tl.load(slot_mapping_ptr + token)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    dims = tl.arange(0, HEAD_DIM_PAD)
    mask = dims < HEAD_DIM
    k = tl.load(key_ptr + token * stride_k_t + head * stride_k_h + dims, mask=mask)
    v = tl.load(value_ptr + token * stride_v_t + head * stride_v_h + dims, mask=mask)
    kc = key_cache_ptr + block * stride_kc_b + head * stride_kc_h + offset * stride_kc_s + dims * stride_kc_d
    vc = value_cache_ptr + block * stride_vc_b + head * stride_vc_h + offset * stride_vc_s + dims * stride_vc_d
    tl.store(kc, k.to(key_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(vc, v.to(value_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache_triton(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    slot_mapping: torch.Tensor,  # [T] int64
) -> None:
    """Same contract as `write_kv_cache_ref`: in-place copy of each token's K/V into its slot."""
    num_tokens, num_kv_heads, head_dim = key.shape
    assert value.shape == key.shape, f"key {tuple(key.shape)} and value {tuple(value.shape)} differ"
    assert key_cache.shape == value_cache.shape and key_cache.shape[1] == num_kv_heads, (
        f"caches must be [num_blocks, {num_kv_heads}, block_size, {head_dim}]: "
        f"key {tuple(key_cache.shape)} value {tuple(value_cache.shape)}"
    )
    assert slot_mapping.shape == (num_tokens,) and slot_mapping.dtype == torch.int64, (
        f"slot_mapping must be [T={num_tokens}] int64: {tuple(slot_mapping.shape)} {slot_mapping.dtype}"
    )
    for name, t in (("key", key), ("value", value)):
        assert t.stride(-1) == 1, f"{name} must have unit last stride: {t.stride()}"
    if num_tokens == 0:
        return
    _write_kv_cache_kernel[(num_tokens, num_kv_heads)](
        key_ptr=key, value_ptr=value, key_cache_ptr=key_cache, value_cache_ptr=value_cache,
        slot_mapping_ptr=slot_mapping,
        stride_k_t=key.stride(0), stride_k_h=key.stride(1),
        stride_v_t=value.stride(0), stride_v_h=value.stride(1),
        stride_kc_b=key_cache.stride(0), stride_kc_h=key_cache.stride(1),
        stride_kc_s=key_cache.stride(2), stride_kc_d=key_cache.stride(3),
        stride_vc_b=value_cache.stride(0), stride_vc_h=value_cache.stride(1),
        stride_vc_s=value_cache.stride(2), stride_vc_d=value_cache.stride(3),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=triton.next_power_of_2(head_dim), BLOCK_SIZE=key_cache.shape[2],
    )
