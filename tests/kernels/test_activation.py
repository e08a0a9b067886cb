"""SiLU-and-mul: reference against the HF Llama MLP formula, Triton against the reference."""

from __future__ import annotations

import pytest
import torch
from transformers.activations import ACT2FN

from kernels import ops
from kernels.activation_ref import silu_and_mul_ref
from tests.kernels.conftest import DEVICE, assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_matches_hf_mlp(dtype: torch.dtype) -> None:
    gate = torch.randn(5, 96, device=DEVICE).to(dtype)
    up = torch.randn(5, 96, device=DEVICE).to(dtype)
    # LlamaMLP: down_proj(act_fn(gate_proj(x)) * up_proj(x)).
    assert torch.equal(silu_and_mul_ref(torch.cat((gate, up), dim=-1)), ACT2FN["silu"](gate) * up)


@pytest.mark.parametrize("inter", [96, 1536, 3000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_reference(triton_backend: None, dtype: torch.dtype, inter: int) -> None:
    x = (3 * torch.randn(4, 2 * inter, device=DEVICE)).to(dtype)
    assert_close(ops.silu_and_mul(x), silu_and_mul_ref(x))
