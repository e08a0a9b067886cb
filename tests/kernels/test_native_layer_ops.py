"""The C++ per-layer CPU ops (kernels/native/layer_ops.cpp) against their torch references, through
`kernels.ops` as the engine calls them: strided rows as the fused projections hand them over, feature
counts that leave a tail past the 16-float vectors, partial rotary, padding slots, both cache layouts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from kernels import native_library, ops
from kernels.activation_ref import silu_and_mul_ref
from kernels.cache_write_ref import write_kv_cache_ref
from kernels.rms_norm_ref import rms_norm_ref
from kernels.rotary_ref import rotary_embedding_ref
from tests.kernels.conftest import needs_compiler

pytestmark = needs_compiler

TOLERANCE = {"atol": 2e-6, "rtol": 2e-6}
# bfloat16 results are rounded as the references round them; float32 sums in another order may still land
# a value on the neighbouring bfloat16 (torch's default bfloat16 tolerance covers one such ulp).
TOLERANCES = {torch.float32: TOLERANCE, torch.bfloat16: {"atol": 1e-5, "rtol": 1.6e-2}}
# fp8 caches are written from the activations rounded as the reference rounds them, then narrowed by c10's own
# conversion after the same saturation: bit for bit.
EXACT = {"atol": 0.0, "rtol": 0.0}
TOLERANCES |= {torch.float8_e4m3fn: EXACT, torch.float8_e5m2: EXACT}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])


@pytest.fixture
def native_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the native ops called, so each test shows the C++ path ran (not the reference again)."""
    assert native_library.load()
    calls: list[str] = []
    namespace = torch.ops.tritonllm_cpu
    for name in ("rms_norm", "add_rms_norm", "silu_and_mul", "rotary_write_kv"):
        kernel = getattr(namespace, name)
        monkeypatch.setattr(namespace, name, lambda *args, _name=name, _kernel=kernel: calls.append(_name) or _kernel(*args))
    yield calls


@DTYPES
@pytest.mark.parametrize("features", [576, 100, 7])
def test_rms_norm_with_and_without_residual(features: int, dtype: torch.dtype, native_calls: list[str]) -> None:
    gen = torch.Generator().manual_seed(features)
    packed = torch.randn(9, 2 * features, generator=gen).to(dtype)
    x = packed[:, :features]  # rows a projection's width apart
    residual = torch.randn(9, features, generator=gen).to(dtype)
    weight = torch.randn(features, generator=gen).to(dtype)
    tolerance = TOLERANCES[dtype]
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-6), rms_norm_ref(x, weight, 1e-6), **tolerance)
    normed, summed = ops.rms_norm(x, weight, 1e-5, residual)
    expected_normed, expected_summed = rms_norm_ref(x, weight, 1e-5, residual)
    torch.testing.assert_close(normed, expected_normed, **tolerance)
    assert torch.equal(summed, expected_summed)
    assert native_calls == ["rms_norm", "add_rms_norm"]


@DTYPES
@pytest.mark.parametrize("rows", [1, 5, 300])
@pytest.mark.parametrize("intermediate", [1536, 37])
def test_silu_and_mul(rows: int, intermediate: int, dtype: torch.dtype, native_calls: list[str]) -> None:
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 2 * intermediate, generator=gen) * 6  # gates well past +-5: both sigmoid branches
    x[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])
    x = x.to(dtype)
    torch.testing.assert_close(ops.silu_and_mul(x), silu_and_mul_ref(x), **TOLERANCES[dtype])
    assert native_calls == ["silu_and_mul"]


@pytest.mark.parametrize(
    ("dtype", "cache_dtype"),
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float8_e4m3fn),
        (torch.bfloat16, torch.float8_e4m3fn),
        (torch.float32, torch.float8_e5m2),
        (torch.bfloat16, torch.float8_e5m2),
    ],
    ids=["float32", "bfloat16", "bfloat16-cache", "fp8e4m3-cache", "bfloat16-fp8e4m3-cache", "fp8e5m2-cache",
         "bfloat16-fp8e5m2-cache"],
)
@pytest.mark.parametrize("keys_transposed", [True, False], ids=["cpu-cache", "row-cache"])
@pytest.mark.parametrize(("head_dim", "rot_dim"), [(64, 64), (128, 64)])
def test_rotary_write_kv(
    head_dim: int,
    rot_dim: int,
    keys_transposed: bool,
    dtype: torch.dtype,
    cache_dtype: torch.dtype,
    native_calls: list[str],
) -> None:
    """The rotated keys and the values land in the cache rounded to its dtype (a bfloat16 cache under float32
    activations, or an fp8 cache: kv_cache_dtype), exactly where the reference's rotate-then-write puts them;
    into fp8 saturated (values scaled past both formats' largest finite numbers)."""
    gen = torch.Generator().manual_seed(head_dim + rot_dim)
    tokens, q_heads, kv_heads, block_size, num_blocks = 11, 6, 2, 16, 8
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_dim, generator=gen)
    qkv[:3] *= 1e5  # past e4m3's 448 and e5m2's 57344
    qkv = qkv.to(dtype)
    q, k, v = qkv.split([q_heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = q.view(tokens, q_heads, head_dim)  # views of the fused projection, as the attention layer passes
    k = k.view(tokens, kv_heads, head_dim)
    v = v.view(tokens, kv_heads, head_dim)
    cos_sin = torch.randn(4096, rot_dim, generator=gen)
    positions = torch.tensor([0, 1, 2, 17, 4095, 5, 6, 7, 8, 9, 10])
    slots = torch.tensor([3, 4, 5, -1, 127, 16, 17, 18, 40, -1, 100])

    def caches() -> tuple[torch.Tensor, torch.Tensor]:
        values = torch.full((num_blocks, kv_heads, block_size, head_dim), float("nan"), dtype=cache_dtype)
        if keys_transposed:
            keys = torch.full((num_blocks, kv_heads, head_dim, block_size), float("nan"), dtype=cache_dtype)
            keys = keys.transpose(2, 3)
        else:
            keys = torch.full_like(values, float("nan"))
        return keys, values

    key_cache, value_cache = caches()
    rotated = ops.rotary_write_kv(positions, q, k, v, cos_sin, True, key_cache, value_cache, slots)
    expected_q, expected_k = rotary_embedding_ref(positions, q, k, cos_sin, True)
    expected_keys, expected_values = caches()
    write_kv_cache_ref(expected_k, v, expected_keys, expected_values, slots)
    torch.testing.assert_close(rotated, expected_q, **TOLERANCES[dtype])
    torch.testing.assert_close(key_cache, expected_keys, equal_nan=True, **TOLERANCES[cache_dtype])
    torch.testing.assert_close(value_cache, expected_values, equal_nan=True, atol=0, rtol=0)
    assert native_calls == ["rotary_write_kv"]


def test_the_torch_backend_skips_native_ops(native_calls: list[str]) -> None:
    x = torch.randn(4, 64)
    ops.set_backend("torch")
    try:
        ops.silu_and_mul(x)
        ops.rms_norm(x, torch.ones(64), 1e-6)
    finally:
        ops.set_backend("auto")
    assert native_calls == []


def test_float16_and_mixed_dtypes_stay_on_the_reference(native_calls: list[str]) -> None:
    x = torch.randn(4, 64, dtype=torch.float16)
    torch.testing.assert_close(ops.silu_and_mul(x), silu_and_mul_ref(x))
    bfloat16 = x.to(torch.bfloat16)
    torch.testing.assert_close(ops.rms_norm(bfloat16, torch.ones(64), 1e-6), rms_norm_ref(bfloat16, torch.ones(64), 1e-6))
    assert native_calls == []


def test_rotary_write_kv_refuses_a_bad_slot_before_writing(native_calls: list[str]) -> None:
    query = torch.randn(3, 4, 64)
    key = torch.randn(3, 2, 64)
    key_cache = torch.zeros(2, 2, 64, 16).transpose(2, 3)
    value_cache = torch.zeros(2, 2, 16, 64)
    with pytest.raises(RuntimeError, match="slot 32 outside the cache"):
        ops.rotary_write_kv(torch.arange(3), query, key, key, torch.randn(10, 64), True, key_cache, value_cache,
                            torch.tensor([0, 1, 32]))  # fmt: skip
    assert native_calls == ["rotary_write_kv"]
    assert not key_cache.any() and not value_cache.any(), "nothing may be written when a slot is bad"


def test_rms_norm_with_a_broadcast_residual_takes_the_reference(native_calls: list[str]) -> None:
    x, residual, weight = torch.randn(5, 64), torch.randn(1, 64), torch.randn(64)
    normed, summed = ops.rms_norm(x, weight, 1e-6, residual)
    expected_normed, expected_summed = rms_norm_ref(x, weight, 1e-6, residual)
    torch.testing.assert_close(normed, expected_normed)
    assert torch.equal(summed, expected_summed)
    assert native_calls == []
