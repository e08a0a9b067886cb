"""Triton SiLU-and-mul; the torch reference is `kernels.activation_ref.silu_and_mul_ref`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_and_mul_kernel(
    out_ptr,  # [T, I]
    x_ptr,  # [T, 2 * I]: gate | up
    inter,  # I
    stride_x, stride_o,
    BLOCK: tl.constexpr,  # columns per program
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    # Round silu to the input dtype before the multiply, as torch's F.silu(gate) * up does.
    act = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:  # [T, 2 * I] -> [T, I]
    """Same contract as `silu_and_mul_ref`."""
    assert x.dim() == 2 and x.shape[1] % 2 == 0, f"x must be [T, 2 * I]: {tuple(x.shape)}"
    assert x.stride(-1) == 1, f"x must have unit last stride: {x.stride()}"
    inter = x.shape[1] // 2
    out = x.new_empty(x.shape[0], inter)
    block = min(1024, triton.next_power_of_2(inter))
    if x.shape[0] > 0:
        _silu_and_mul_kernel[(x.shape[0], triton.cdiv(inter, block))](
            out_ptr=out, x_ptr=x, inter=inter, stride_x=x.stride(0), stride_o=out.stride(0), BLOCK=block,
        )
    return out
