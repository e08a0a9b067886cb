"""Triton KV cache write by flat slot; the torch reference is `kernels.cache_write_ref.write_kv_cache_ref`.

An fp8 cache (kv_cache_dtype) is written as bytes the kernel rounds itself, with integer arithmetic and one
float addition: exactly torch's round-to-nearest-even, saturating like the reference, on every GPU and
under TRITON_INTERPRET alike (the interpreter's own fp8 conversion truncates and drops carries).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_FP8_FORMATS = {torch.float8_e4m3fn: 1, torch.float8_e5m2: 2}  # CACHE_FORMAT of each fp8 cache dtype


@triton.jit
def _fp8_bits(x, MANTISSA_BITS: tl.constexpr, BIAS: tl.constexpr, LARGEST: tl.constexpr):
    """float32 x -> the fp8 format's bits (int32, 0..255), rounded to nearest even, saturated at +-LARGEST,
    NaN kept (0x7f with x's sign)."""
    SHIFT: tl.constexpr = 23 - MANTISSA_BITS
    # Below the smallest normal 2^(1 - BIAS) the format steps by 2^(1 - BIAS - MANTISSA_BITS): adding a
    # float whose own step is that rounds |x| to it (nearest even, in the float unit), and the sum's low bits
    # count the steps. That count reaching 2^MANTISSA_BITS is the smallest normal's encoding, as it must.
    MAGIC_EXPONENT: tl.constexpr = 24 - BIAS - MANTISSA_BITS
    sign = (x.to(tl.uint32, bitcast=True) >> 24) & 0x80  # before clamping: min/max may drop a NaN's sign
    magnitude = tl.minimum(tl.maximum(x, -LARGEST), LARGEST).to(tl.uint32, bitcast=True) & 0x7FFFFFFF
    rebiased = magnitude - ((127 - BIAS) << 23)
    normal = (rebiased + ((1 << (SHIFT - 1)) - 1) + ((rebiased >> SHIFT) & 1)) >> SHIFT
    magic = (MAGIC_EXPONENT + 127) << 23
    sum_bits = (magnitude.to(tl.float32, bitcast=True) + (2.0**MAGIC_EXPONENT)).to(tl.uint32, bitcast=True)
    subnormal = sum_bits - magic
    rounded = tl.where(magnitude < ((128 - BIAS) << 23), subnormal, normal)
    return (tl.where(x != x, 0x7F, rounded) | sign).to(tl.int32)


@triton.jit
def _to_cache(x, CACHE_FORMAT: tl.constexpr):
    """x as the cache stores it: CACHE_FORMAT 0 keeps the cache's own element type (the caller converts),
    1 is fp8 e4m3 and 2 fp8 e5m2, as bytes."""
    if CACHE_FORMAT == 1:
        return _fp8_bits(x.to(tl.float32), 3, 7, 448.0).to(tl.uint8)
    elif CACHE_FORMAT == 2:
        return _fp8_bits(x.to(tl.float32), 2, 15, 57344.0).to(tl.uint8)
    else:
        return x


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
    CACHE_FORMAT: tl.constexpr,  # _to_cache's: 0 the cache's dtype, 1 fp8 e4m3, 2 fp8 e5m2 (caches as uint8)
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
    tl.store(kc, _to_cache(k, CACHE_FORMAT).to(key_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(vc, _to_cache(v, CACHE_FORMAT).to(value_cache_ptr.dtype.element_ty), mask=mask)


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
    assert key_cache.dtype == value_cache.dtype, f"cache dtypes differ: {key_cache.dtype} {value_cache.dtype}"
    assert slot_mapping.shape == (num_tokens,) and slot_mapping.dtype == torch.int64, (
        f"slot_mapping must be [T={num_tokens}] int64: {tuple(slot_mapping.shape)} {slot_mapping.dtype}"
    )
    for name, t in (("key", key), ("value", value)):
        assert t.stride(-1) == 1, f"{name} must have unit last stride: {t.stride()}"
    if num_tokens == 0:
        return
    cache_format = _FP8_FORMATS.get(key_cache.dtype, 0)
    if cache_format:
        key_cache, value_cache = key_cache.view(torch.uint8), value_cache.view(torch.uint8)
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
        CACHE_FORMAT=cache_format,
    )
