"""KV cache write by slot mapping: reference against a per-token loop, Triton against the reference."""

from __future__ import annotations

import pytest
import torch

from kernels import ops
from kernels.cache_write_ref import write_kv_cache_ref
from tests.kernels.conftest import DEVICE

NUM_BLOCKS, BLOCK_SIZE = 32768, 16
FP8_DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2]


def make_inputs(
    num_kv_heads: int, head_dim: int, dtype: torch.dtype, keys_transposed: bool = False
) -> tuple[torch.Tensor, ...]:
    """Nine tokens, two of them padding (-1), the rest spread over blocks near the top of the pool. With
    keys_transposed the key cache stores its tiles as [D, block_size] (the engine's CPU layout)."""
    gen = torch.Generator().manual_seed(0)
    key = torch.randn(9, num_kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    value = torch.randn(9, num_kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    top = NUM_BLOCKS * BLOCK_SIZE
    slots = [top - 1, top - 16, -1, top - 40, 17, top - 33, -1, top - 2, 0]
    slot_mapping = torch.tensor(slots, dtype=torch.int64, device=DEVICE)
    # Only the touched pages of these uninitialised pools are ever resident.
    value_cache = torch.empty(NUM_BLOCKS, num_kv_heads, BLOCK_SIZE, head_dim, dtype=dtype, device=DEVICE)
    key_cache = torch.empty_like(value_cache)
    if keys_transposed:
        key_cache = torch.empty(NUM_BLOCKS, num_kv_heads, head_dim, BLOCK_SIZE, dtype=dtype, device=DEVICE)
        key_cache = key_cache.transpose(2, 3)
    return key, value, key_cache, value_cache, slot_mapping


@pytest.mark.parametrize("keys_transposed", [False, True])
def test_reference_matches_per_token_copy(keys_transposed: bool) -> None:
    key, value, key_cache, value_cache, slot_mapping = make_inputs(2, 64, torch.float32, keys_transposed)
    write_kv_cache_ref(key, value, key_cache, value_cache, slot_mapping)
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot >= 0:
            assert torch.equal(key_cache[slot // BLOCK_SIZE, :, slot % BLOCK_SIZE], key[t])
            assert torch.equal(value_cache[slot // BLOCK_SIZE, :, slot % BLOCK_SIZE], value[t])


def write_and_compare(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Run ops.write_kv_cache and the reference from the same start; compare every block the batch touches.

    Touched blocks start at a sentinel, so a padding token (-1) written anywhere in them, or a token in
    the wrong slot, shows; the rest of the pool is never read, which keeps a 32k-block pool cheap.
    """
    slots = slot_mapping[slot_mapping >= 0]
    blocks = torch.unique(slots // BLOCK_SIZE)
    expected_k, expected_v = torch.empty_like(key_cache), torch.empty_like(value_cache)  # same strides
    for cache in (key_cache, value_cache, expected_k, expected_v):
        cache[blocks] = 7.0
    write_kv_cache_ref(key, value, expected_k, expected_v, slot_mapping)
    ops.write_kv_cache(key, value, key_cache, value_cache, slot_mapping)
    # Exact: a copy, or fp8's rounding, compared as bytes there (NaN is unequal to itself).
    as_bits = (lambda t: t.view(torch.uint8)) if key_cache.dtype in FP8_DTYPES else (lambda t: t)
    assert torch.equal(as_bits(key_cache[blocks]), as_bits(expected_k[blocks]))
    assert torch.equal(as_bits(value_cache[blocks]), as_bits(expected_v[blocks]))


@pytest.mark.parametrize(("num_kv_heads", "head_dim"), [(1, 64), (2, 128), (3, 80)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_reference(triton_backend: None, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
    write_and_compare(*make_inputs(num_kv_heads, head_dim, dtype))


def test_triton_writes_transposed_key_tiles(triton_backend: None) -> None:
    write_and_compare(*make_inputs(3, 64, torch.float32, keys_transposed=True))


def test_triton_reads_strided_key_value(triton_backend: None) -> None:
    """K and V as column slices of a fused qkv projection output, the way the model runner hands them."""
    qkv = torch.randn(9, 3 * 2 * 64, device=DEVICE)
    key = qkv[:, 128:256].view(9, 2, 64)
    value = qkv[:, 256:].view(9, 2, 64)
    _, _, key_cache, value_cache, slot_mapping = make_inputs(2, 64, torch.float32)
    write_and_compare(key, value, key_cache, value_cache, slot_mapping)


def test_the_reference_saturates_fp8_and_keeps_nan() -> None:
    """vLLM's fp8 cache writes saturate; torch's own conversion would store e5m2's infinity."""
    _, _, key_cache, value_cache, _ = make_inputs(1, 16, torch.float8_e5m2)
    row = torch.tensor([1e6, -1e6, float("inf"), float("nan"), 1.0] + [0.0] * 11, device=DEVICE).view(1, 1, 16)
    write_kv_cache_ref(row, row, key_cache, value_cache, torch.tensor([0], device=DEVICE))
    stored = key_cache[0, 0, 0, :5].float().tolist()
    assert stored[:3] == [57344.0, -57344.0, 57344.0] and stored[4] == 1.0 and stored[3] != stored[3]


def fp8_edge_values(cache_dtype: torch.dtype, count: int) -> torch.Tensor:
    """`count` values on the format's hard cases: every midpoint between neighbouring finite numbers (ties to
    even), subnormals and the smallest normal, past the largest finite number, infinities, NaN, and
    float32 numbers too small for any fp8 step."""
    finite = torch.arange(256, dtype=torch.uint8).view(cache_dtype).float()
    finite = finite[finite.isfinite()].unique()
    special = torch.tensor([1e6, -1e6, float("inf"), float("-inf"), float("nan"), 2.0**-30, -(2.0**-30), 0.0, -0.0])
    values = torch.cat([(finite[1:] + finite[:-1]) / 2, finite, special])
    return values.repeat(-(-count // values.numel()))[:count]


@pytest.mark.parametrize("cache_dtype", FP8_DTYPES, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_writes_fp8_caches_bit_for_bit(triton_backend: None, cache_dtype: torch.dtype, dtype: torch.dtype) -> None:
    """kv_cache_dtype=fp8: the kernel's own rounding (integer arithmetic) stores exactly the reference's bytes,
    ties, subnormals, saturation and NaN included."""
    key, value, key_cache, value_cache, slot_mapping = make_inputs(3, 64, cache_dtype)
    edges = fp8_edge_values(cache_dtype, key.numel()).view(key.shape)
    write_and_compare(edges.to(DEVICE, dtype), (-edges).flip(0).to(DEVICE, dtype), key_cache, value_cache, slot_mapping)
