"""Torch reference for RMSNorm, optionally fused with the residual add that precedes it."""

from __future__ import annotations

from typing import overload

import torch


@overload
def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: None = None) -> torch.Tensor: ...
@overload
def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]: ...
def rms_norm_ref(
    x: torch.Tensor,  # [..., H]
    weight: torch.Tensor,  # [H]
    eps: float,
    residual: torch.Tensor | None = None,  # [..., H], same shape as x
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """HF LlamaRMSNorm over the last axis: weight * (x_f32 * rsqrt(mean(x^2) + eps)).to(dtype).

    With a residual, normalises x + residual (added in x's dtype, as the HF decoder layer does) and also
    returns that sum, which is the next layer's residual.
    """
    summed = x if residual is None else x + residual
    h = summed.float()
    normed = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    # In place: the product above is already a fresh tensor (multiplication commutes, so the values are
    # HF's `weight * h`, rounded to x's dtype either way).
    normed.mul_(weight)
    return normed if residual is None else (normed, summed)
