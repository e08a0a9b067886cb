"""RMSNorm: reference against Hugging Face's LlamaRMSNorm, Triton against the reference."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from kernels import ops
from kernels.rms_norm_ref import rms_norm_ref
from tests.kernels.conftest import DEVICE, assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def hf_norm(weight: torch.Tensor, eps: float) -> LlamaRMSNorm:
    norm = LlamaRMSNorm(weight.shape[0], eps=eps).to(DEVICE, weight.dtype)
    norm.weight.data.copy_(weight)
    return norm


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_matches_hf(dtype: torch.dtype) -> None:
    x = torch.randn(7, 576, device=DEVICE).to(dtype)
    residual = torch.randn(7, 576, device=DEVICE).to(dtype)
    weight = (1 + 0.1 * torch.randn(576, device=DEVICE)).to(dtype)
    norm = hf_norm(weight, 1e-5)
    assert torch.equal(rms_norm_ref(x, weight, 1e-5), norm(x))
    normed, summed = rms_norm_ref(x, weight, 1e-5, residual)
    # The HF decoder layer adds the residual in the model dtype, then normalises the sum.
    assert torch.equal(summed, x + residual)
    assert torch.equal(normed, norm(x + residual))


@pytest.mark.parametrize("hidden", [64, 576, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_reference(triton_backend: None, dtype: torch.dtype, hidden: int) -> None:
    x = torch.randn(5, hidden, device=DEVICE).to(dtype)
    residual = torch.randn(5, hidden, device=DEVICE).to(dtype)
    weight = (1 + 0.1 * torch.randn(hidden, device=DEVICE)).to(dtype)
    assert_close(ops.rms_norm(x, weight, 1e-6), rms_norm_ref(x, weight, 1e-6))
    normed, summed = ops.rms_norm(x, weight, 1e-6, residual)
    expected_normed, expected_summed = rms_norm_ref(x, weight, 1e-6, residual)
    assert_close(normed, expected_normed)
    assert_close(summed, expected_summed)


def test_triton_per_head_norm(triton_backend: None) -> None:
    """Qwen3's q/k norm: the same kernel over the last axis of [T, H, D]."""
    x = torch.randn(4, 6, 64, device=DEVICE)
    weight = torch.randn(64, device=DEVICE)
    assert_close(ops.rms_norm(x, weight, 1e-6), rms_norm_ref(x, weight, 1e-6))
