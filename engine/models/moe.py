"""The sparse mixture-of-experts MLP of Qwen3-MoE: a router picks each token's top-k experts, each a gated
MLP like the dense one, and the token's output is their outputs weighted by the router's probabilities.

Every expert is a gate|up ColumnParallelLinear and a down projection, named as checkpoints name them
(`mlp.experts.<e>.{gate,up,down}_proj`, `mlp.gate` the router), so loading, CPU weight packing and tensor
parallelism treat them as any projection: each rank holds every expert's share of its intermediate
features, and the partial outputs of all experts are summed across ranks by one all-reduce. An expert runs
on the rows routed to it only (gathered, then scattered back with their weights), which is what makes a
30B-parameter model with 3B active parameters cost about what 3B do. The per-step expert counts are read
on the host, so CUDA decode graphs are not captured for these models (engine.model_runner).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.distributed import TensorParallelGroup
from engine.models.linear import ColumnParallelLinear, RowParallelLinear
from engine.models.sharding import RowSlice
from engine.models.spec import ModelSpec
from kernels import ops

if TYPE_CHECKING:
    from engine.models.lora import LoRABatch


class Expert(nn.Module):
    def __init__(self, spec: ModelSpec, inter: RowSlice, device: torch.device) -> None:
        super().__init__()
        dtype = spec.dtype
        self.gate_up_proj = ColumnParallelLinear(spec.hidden_size, (inter, inter), False, dtype, device)
        # Unreduced: SparseMoE sums every expert's partial output across ranks once.
        self.down_proj = RowParallelLinear(
            inter, spec.hidden_size, False, dtype, device, TensorParallelGroup.single()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))


class SparseMoE(nn.Module):
    def __init__(self, spec: ModelSpec, device: torch.device, group: TensorParallelGroup) -> None:
        super().__init__()
        assert spec.moe is not None, "a mixture of experts needs the spec's MoESpec"
        moe = spec.moe
        self.top_k = moe.top_k
        self.norm_topk_prob = moe.norm_topk_prob
        self.group = group
        # The router, whole on every rank: all ranks route every token alike.
        self.gate = ColumnParallelLinear(
            spec.hidden_size, (RowSlice.whole(moe.num_experts),), False, spec.dtype, device
        )
        inter = RowSlice.even(moe.intermediate_size, group.rank, group.size)
        self.experts = nn.ModuleList(Expert(spec, inter, device) for _ in range(moe.num_experts))

    def forward(self, x: torch.Tensor, lora: LoRABatch | None = None) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]: sum over each token's top-k experts of weight * expert(x). No LoRA
        adapter reaches the experts (engine.lora refuses their tensors), so `lora` changes nothing here."""
        probabilities = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        weights, chosen = probabilities.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights /= weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype).flatten()
        # The (token, choice) pairs grouped by expert: pair p is token p // top_k's choice p % top_k.
        pairs = chosen.flatten().argsort(stable=True)
        counts = torch.bincount(chosen.flatten(), minlength=len(self.experts)).tolist()
        out = torch.zeros_like(x)
        start = 0
        for expert, count in zip(self.experts, counts, strict=True):
            if count:
                mine = pairs[start : start + count]
                tokens = mine // self.top_k
                out.index_add_(0, tokens, expert(x[tokens]) * weights[mine].unsqueeze(1))
                start += count
        return out if self.group.size == 1 else self.group.all_reduce(out)
