"""Rotary embedding: reference against HF's rotate_half (neox) and complex rotation (gptj), Triton
against the reference."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from kernels import ops
from kernels.rotary_ref import rotary_embedding_ref
from tests.kernels.conftest import DEVICE, assert_close


def cos_sin_cache(rot_dim: int, max_pos: int = 4096, base: float = 10000.0) -> torch.Tensor:
    inv_freq = 1.0 / base ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim)
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(DEVICE)


def make_inputs(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    positions = torch.tensor([0, 1, 5, 17, 463, 4095], device=DEVICE)
    query = torch.randn(6, num_q_heads, head_dim, generator=gen).to(DEVICE, dtype)
    key = torch.randn(6, num_kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    return positions, query, key


def test_reference_neox_matches_hf() -> None:
    positions, query, key = make_inputs(9, 3, 64, torch.float32)
    cache = cos_sin_cache(64)
    cos, sin = cache[positions].chunk(2, dim=-1)
    # HF takes [B, H, T, D] inputs and [B, T, D] cos/sin, with each half table repeated.
    hf_q, hf_k = apply_rotary_pos_emb(query.transpose(0, 1)[None], key.transpose(0, 1)[None],
                                      torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None])
    q, k = rotary_embedding_ref(positions, query, key, cache, is_neox=True)
    assert torch.equal(q, hf_q[0].transpose(0, 1))
    assert torch.equal(k, hf_k[0].transpose(0, 1))


@pytest.mark.parametrize("rot_dim", [64, 32])
def test_reference_gptj_is_complex_rotation(rot_dim: int) -> None:
    """gptj rotates interleaved pairs: (x[2i] + i x[2i+1]) * e^(i theta); features past rot_dim pass through."""
    positions, query, key = make_inputs(4, 2, 64, torch.float32)
    cache = cos_sin_cache(rot_dim)
    cos, sin = cache[positions].chunk(2, dim=-1)
    rotation = torch.complex(cos, sin)[:, None, :]
    q, k = rotary_embedding_ref(positions, query, key, cache, is_neox=False)
    for x, out in ((query, q), (key, k)):
        pairs = torch.view_as_complex(x[..., :rot_dim].reshape(*x.shape[:2], -1, 2).contiguous())
        expected = torch.cat((torch.view_as_real(pairs * rotation).flatten(-2), x[..., rot_dim:]), dim=-1)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize(("head_dim", "rot_dim"), [(64, 64), (128, 128), (128, 64), (80, 80)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_reference(
    triton_backend: None, dtype: torch.dtype, head_dim: int, rot_dim: int, is_neox: bool
) -> None:
    positions, query, key = make_inputs(5, 1, head_dim, dtype)
    cache = cos_sin_cache(rot_dim)
    q, k = ops.rotary_embedding(positions, query, key, cache, is_neox)
    expected_q, expected_k = rotary_embedding_ref(positions, query, key, cache, is_neox)
    assert_close(q, expected_q)
    assert_close(k, expected_k)
    assert torch.equal(q[..., rot_dim:], query[..., rot_dim:])
