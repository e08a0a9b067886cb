"""Triton rotary embedding (neox and gptj); the torch reference is `kernels.rotary_ref.rotary_embedding_ref`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotary_kernel(
    x_ptr,  # [T, H, D]: a copy of the input, rotated in place (features past rot_dim stay as they are)
    positions_ptr,  # [T] int64
    cos_sin_ptr,  # [max_pos, ROT_DIM]: cos | sin
    num_heads,
    stride_x_t, stride_x_h,
    stride_cs,
    ROT_DIM: tl.constexpr,
    HALF_PAD: tl.constexpr,  # next power of two >= ROT_DIM // 2
    HEADS_PAD: tl.constexpr,  # next power of two >= num_heads
    IS_NEOX: tl.constexpr,
):
    token = tl.program_id(0)
    pos = tl.load(positions_ptr + token)
    i = tl.arange(0, HALF_PAD)
    i_valid = i < ROT_DIM // 2
    cos = tl.load(cos_sin_ptr + pos * stride_cs + i, mask=i_valid, other=0.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + ROT_DIM // 2 + i, mask=i_valid, other=0.0).to(tl.float32)
    if IS_NEOX:  # pairs (i, i + ROT_DIM / 2)
        first = i
        second = i + ROT_DIM // 2
    else:  # pairs (2i, 2i + 1)
        first = 2 * i
        second = 2 * i + 1
    heads = tl.arange(0, HEADS_PAD)
    mask = (heads < num_heads)[:, None] & i_valid[None, :]
    base = x_ptr + token * stride_x_t + heads[:, None] * stride_x_h  # [HEADS_PAD, 1]
    x1 = tl.load(base + first[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + second[None, :], mask=mask, other=0.0).to(tl.float32)
    out1 = x1 * cos[None, :] - x2 * sin[None, :]
    out2 = x2 * cos[None, :] + x1 * sin[None, :]
    tl.store(base + first[None, :], out1.to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(base + second[None, :], out2.to(x_ptr.dtype.element_ty), mask=mask)


def rotary_embedding_triton(
    positions: torch.Tensor,  # [T] int64
    query: torch.Tensor,  # [T, Hq, D]
    key: torch.Tensor,  # [T, Hkv, D]
    cos_sin_cache: torch.Tensor,  # [max_pos, rot_dim]
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `rotary_embedding_ref`: returns new (query, key)."""
    rot_dim = cos_sin_cache.shape[1]
    assert query.dim() == 3 and key.dim() == 3 and query.shape[::2] == key.shape[::2], (
        f"query [T, Hq, D] and key [T, Hkv, D] disagree: {tuple(query.shape)} {tuple(key.shape)}"
    )
    assert positions.shape == (query.shape[0],), f"positions {tuple(positions.shape)} vs query {tuple(query.shape)}"
    assert rot_dim % 2 == 0 and rot_dim <= query.shape[2], f"cos_sin_cache {tuple(cos_sin_cache.shape)} vs D={query.shape[2]}"
    assert cos_sin_cache.stride(-1) == 1, f"cos_sin_cache must have unit last stride: {cos_sin_cache.stride()}"
    # Work on contiguous copies: the result must be new tensors, and the features past rot_dim come along.
    q_out = query.clone(memory_format=torch.contiguous_format)
    k_out = key.clone(memory_format=torch.contiguous_format)
    for x in (q_out, k_out):
        if x.shape[0] == 0:
            continue
        _rotary_kernel[(x.shape[0],)](
            x_ptr=x, positions_ptr=positions, cos_sin_ptr=cos_sin_cache, num_heads=x.shape[1],
            stride_x_t=x.stride(0), stride_x_h=x.stride(1), stride_cs=cos_sin_cache.stride(0),
            ROT_DIM=rot_dim, HALF_PAD=triton.next_power_of_2(rot_dim // 2),
            HEADS_PAD=triton.next_power_of_2(x.shape[1]), IS_NEOX=is_neox,
        )
    return q_out, k_out
