"""Torch reference for the gated SiLU activation of Llama-style MLPs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:  # x [T, 2 * I] -> [T, I]
    """silu(gate) * up where x holds [gate | up] along its last axis (the fused gate_up projection)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)  # in place: silu's output is already a fresh tensor
