"""The C++ decode-batch bfloat16 projection (kernels/native/small_m_linear.cpp) against F.linear computed in
float64 from the same bfloat16 values: row counts around its passes of 6, output features that leave a
tail past its tiles of 4 blocks of 16, bias, and the inputs it must refuse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import native_library
from tests.kernels.conftest import needs_compiler

pytestmark = [
    needs_compiler,
    pytest.mark.skipif(
        not (native_library.load() and torch.ops.tritonllm_cpu.small_m_linear_supported()),
        reason="needs a CPU with AVX512_BF16",
    ),
]


def random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16()


@pytest.mark.parametrize("rows", [0, 1, 2, 5, 6, 7, 12, 13, 40, 128])
@pytest.mark.parametrize(("out_features", "in_features"), [(96, 64), (16, 2), (112, 40), (144, 1536), (1040, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_a_float64_product(rows: int, out_features: int, in_features: int, with_bias: bool) -> None:
    x, weight = random(rows, in_features, seed=1), random(out_features, in_features, seed=2)
    bias = random(out_features, seed=3) if with_bias else None
    packed = torch.ops.tritonllm_cpu.small_m_linear_pack(weight)
    out = torch.ops.tritonllm_cpu.small_m_linear(x, packed, bias)
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    assert out.dtype == torch.bfloat16 and out.shape == (rows, out_features)
    # float32 sums rounded once to bfloat16: within one bfloat16 ulp of the exact product.
    torch.testing.assert_close(out.double(), expected, rtol=1.6e-2, atol=1e-2)


def test_refuses_what_it_cannot_multiply() -> None:
    with pytest.raises(RuntimeError, match="divisible by 16"):
        torch.ops.tritonllm_cpu.small_m_linear_pack(random(24, 64, seed=4))
    with pytest.raises(RuntimeError, match="even in_features"):
        torch.ops.tritonllm_cpu.small_m_linear_pack(random(16, 63, seed=4))
    weight = random(32, 64, seed=4)
    packed = torch.ops.tritonllm_cpu.small_m_linear_pack(weight)
    with pytest.raises(RuntimeError, match="small_m_linear_pack"):
        torch.ops.tritonllm_cpu.small_m_linear(random(2, 64, seed=5), weight, None)
    with pytest.raises(RuntimeError, match="bfloat16"):
        torch.ops.tritonllm_cpu.small_m_linear(random(2, 64, seed=5).float(), packed, None)
    with pytest.raises(RuntimeError, match="features"):
        torch.ops.tritonllm_cpu.small_m_linear(random(2, 96, seed=5), packed, None)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.tritonllm_cpu.small_m_linear(random(64, 2, seed=5).t(), packed, None)
    with pytest.raises(RuntimeError, match="bias"):
        torch.ops.tritonllm_cpu.small_m_linear(random(2, 64, seed=5), packed, random(7, seed=7))
