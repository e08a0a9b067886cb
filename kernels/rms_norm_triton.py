"""Triton RMSNorm with optional fused residual add; the torch reference is `kernels.rms_norm_ref.rms_norm_ref`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    out_ptr,  # [R, H] x dtype
    sum_out_ptr,  # [R, H] x dtype: x + residual (written only if HAS_RESIDUAL)
    x_ptr,  # [R, H]
    residual_ptr,  # [R, H] (read only if HAS_RESIDUAL)
    weight_ptr,  # [H]
    eps,
    hidden,
    stride_x, stride_r, stride_o, stride_s,
    BLOCK_H: tl.constexpr,  # next power of two >= hidden
    HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < hidden
    h = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        # Add in float32 and round the sum to x's dtype before normalising: what torch's half-precision
        # add does, and the HF decoder layer adds the residual in the model dtype.
        r = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        summed = (h + r).to(x_ptr.dtype.element_ty)
        tl.store(sum_out_ptr + row * stride_s + cols, summed, mask=mask)
        h = summed.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / hidden + eps)
    normed = (h * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)  # HF casts before the weight multiply
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(
    x: torch.Tensor,  # [..., H]
    weight: torch.Tensor,  # [H]
    eps: float,
    residual: torch.Tensor | None = None,  # same shape as x
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `rms_norm_ref`."""
    hidden = x.shape[-1]
    assert weight.shape == (hidden,), f"weight {tuple(weight.shape)} does not match x {tuple(x.shape)}"
    assert residual is None or (residual.shape == x.shape and residual.dtype == x.dtype), (
        f"residual {tuple(residual.shape)} {residual.dtype} does not match x {tuple(x.shape)} {x.dtype}"
    )
    x2 = x.reshape(-1, hidden)
    assert x2.stride(-1) == 1, f"x must have unit last stride: {x.stride()}"
    out = torch.empty_like(x2)
    r2 = x2 if residual is None else residual.reshape(-1, hidden)
    summed = torch.empty_like(x2) if residual is not None else out
    if x2.shape[0] > 0:
        _rms_norm_kernel[(x2.shape[0],)](
            out_ptr=out, sum_out_ptr=summed, x_ptr=x2, residual_ptr=r2, weight_ptr=weight,
            eps=eps, hidden=hidden,
            stride_x=x2.stride(0), stride_r=r2.stride(0), stride_o=out.stride(0), stride_s=summed.stride(0),
            BLOCK_H=triton.next_power_of_2(hidden), HAS_RESIDUAL=residual is not None,
        )
    if residual is None:
        return out.view(x.shape)
    return out.view(x.shape), summed.view(x.shape)
