"""Projection layers with their own weight-loading rule.

Each linear layer knows how a checkpoint tensor lands in its parameters. That is the seam where tensor
parallelism will later plug in: a column-parallel variant loads a row slice of each shard, a row-parallel
one a column slice plus an all-reduce in forward. Nothing here shards today.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def copy_checked(dst: torch.Tensor, tensor: torch.Tensor, checkpoint_name: str) -> None:
    """dst <- tensor (converting dtype and device), refusing a shape mismatch with a message naming it."""
    if tuple(dst.shape) != tuple(tensor.shape):
        raise ValueError(
            f"checkpoint tensor {checkpoint_name} has shape {tuple(tensor.shape)}, expected {tuple(dst.shape)}"
        )
    dst.copy_(tensor)


class Linear(nn.Module):
    """y = x @ W.T + b, with W in the checkpoint's [out_features, in_features] layout."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device), False)
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), False) if bias else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def load(self, param_name: str, tensor: torch.Tensor, checkpoint_name: str) -> None:
        """Copy one checkpoint tensor into `weight` or `bias`, converting dtype and device."""
        copy_checked(getattr(self, param_name).data, tensor, checkpoint_name)


class MergedLinear(Linear):
    """Several projections of the same input stacked along the output dimension (q|k|v, gate|up), so one
    matmul replaces several; the checkpoint's separate tensors load into consecutive row blocks."""

    def __init__(
        self,
        in_features: int,
        output_sizes: Sequence[int],
        bias: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__(in_features, sum(output_sizes), bias, dtype, device)
        self.output_sizes = tuple(output_sizes)

    def load_shard(self, param_name: str, shard: int, tensor: torch.Tensor, checkpoint_name: str) -> None:
        """Copy the checkpoint tensor of projection number `shard` into its row block."""
        param = getattr(self, param_name)
        start = sum(self.output_sizes[:shard])
        copy_checked(param.data[start : start + self.output_sizes[shard]], tensor, checkpoint_name)

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The merged output cut back into its projections (views, not copies)."""
        return tuple(y.split(self.output_sizes, dim=-1))
