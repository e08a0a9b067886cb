"""The C++ decode-batch projection (kernels/native/small_m_linear.cpp), float32 and bfloat16, against F.linear
computed in float64 from the same values: row counts around its passes of 6, output features that leave a
tail past its tiles of 4 blocks of 16, more tiles than threads (tiles dealt out by a counter), bias, and
the inputs it must refuse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import native_library
from tests.kernels.conftest import needs_compiler

pytestmark = needs_compiler


def supported(dtype: torch.dtype) -> bool:
    return native_library.load() and torch.ops.tritonllm_cpu.small_m_linear_supported(dtype)


DTYPES = [
    pytest.param(torch.float32, marks=pytest.mark.skipif(not supported(torch.float32), reason="needs AVX-512")),
    pytest.param(
        torch.bfloat16, marks=pytest.mark.skipif(not supported(torch.bfloat16), reason="needs AVX512_BF16")
    ),
]
# float32 sums: float32 rounding over up to 1,536 products; bfloat16: float32 sums rounded once to bfloat16,
# within one bfloat16 ulp of the exact product.
TOLERANCES = {torch.float32: {"rtol": 1e-5, "atol": 1e-4}, torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2}}


def random(*shape: int, seed: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [0, 1, 2, 5, 6, 7, 12, 13, 40, 128])
@pytest.mark.parametrize(("out_features", "in_features"), [(96, 64), (16, 2), (112, 40), (144, 1536), (1040, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_a_float64_product(
    dtype: torch.dtype, rows: int, out_features: int, in_features: int, with_bias: bool
) -> None:
    x, weight = random(rows, in_features, seed=1, dtype=dtype), random(out_features, in_features, seed=2, dtype=dtype)
    bias = random(out_features, seed=3, dtype=dtype) if with_bias else None
    packed = torch.ops.tritonllm_cpu.small_m_linear_pack(weight)
    out = torch.ops.tritonllm_cpu.small_m_linear(x, packed, bias)
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    assert out.dtype == dtype and out.shape == (rows, out_features)
    torch.testing.assert_close(out.double(), expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_thread_and_many_give_the_same_product(dtype: torch.dtype) -> None:
    """Which thread takes a tile must not change a single bit of it."""
    x, weight = random(64, 576, seed=1, dtype=dtype), random(49152 // 16, 576, seed=2, dtype=dtype)
    packed = torch.ops.tritonllm_cpu.small_m_linear_pack(weight)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = torch.ops.tritonllm_cpu.small_m_linear(x, packed, None)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.ops.tritonllm_cpu.small_m_linear(x, packed, None), alone)


@pytest.mark.parametrize("dtype", DTYPES)
def test_refuses_what_it_cannot_multiply(dtype: torch.dtype) -> None:
    other = torch.bfloat16 if dtype == torch.float32 else torch.float32
    with pytest.raises(RuntimeError, match="divisible by 16"):
        torch.ops.tritonllm_cpu.small_m_linear_pack(random(24, 64, seed=4, dtype=dtype))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        torch.ops.tritonllm_cpu.small_m_linear_pack(random(16, 64, seed=4, dtype=torch.float16))
    weight = random(32, 64, seed=4, dtype=dtype)
    packed = torch.ops.tritonllm_cpu.small_m_linear_pack(weight)
    with pytest.raises(RuntimeError, match="small_m_linear_pack"):
        torch.ops.tritonllm_cpu.small_m_linear(random(2, 64, seed=5, dtype=dtype), weight, None)
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.tritonllm_cpu.small_m_linear(random(2, 64, seed=5, dtype=other), packed, None)
    with pytest.raises(RuntimeError, match="features"):
        torch.ops.tritonllm_cpu.small_m_linear(random(2, 96, seed=5, dtype=dtype), packed, None)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.tritonllm_cpu.small_m_linear(random(64, 2, seed=5, dtype=dtype).t(), packed, None)
    with pytest.raises(RuntimeError, match="bias"):
        torch.ops.tritonllm_cpu.small_m_linear(random(2, 64, seed=5, dtype=dtype), packed, random(7, seed=7, dtype=dtype))


def test_bfloat16_packs_features_in_pairs() -> None:
    with pytest.raises(RuntimeError, match="even in_features"):
        torch.ops.tritonllm_cpu.small_m_linear_pack(random(16, 63, seed=4))
