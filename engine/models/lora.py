"""LoRA updates inside the model: every loaded adapter's low-rank product, added to the rows of the
requests that chose it (an adapter per request, several in one batch, none for the others).

Adapters sit in slots 1.. (0 is the base model; engine.lora_slots says which is where). Under tensor parallelism each rank keeps its
share: a column-parallel projection (q|k|v, gate|up) the rows of B that match its output rows (A whole);
a row-parallel one (o, down) the columns of A that match its input columns (B whole), so its partial
update is summed by the same all-reduce as its partial product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.lora import LoRAAdapter
from engine.models.linear import FUSED_PROJECTIONS, ColumnParallelLinear, RowParallelLinear

if TYPE_CHECKING:
    from engine.models.causal_lm import CausalLM


@dataclass(frozen=True)
class LoRABatch:
    """The step's token rows by adapter slot: (slot, mask), mask [T, 1] in the model's dtype (1 on the
    slot's rows, 0 elsewhere), None where the slot has every row."""

    groups: tuple[tuple[int, torch.Tensor | None], ...]

    @staticmethod
    def from_slots(slots: torch.Tensor, dtype: torch.dtype) -> LoRABatch | None:
        """slots [T]: the adapter slot of each token (0: none). None when no token has an adapter."""
        groups = []
        for slot in torch.unique(slots).tolist():
            if slot != 0:
                rows = slots == slot
                groups.append((slot, None if bool(rows.all()) else rows.unsqueeze(1).to(dtype)))
        return LoRABatch(tuple(groups)) if groups else None


# Rows up to which a CPU model narrower than float32 computes its LoRA updates in float32 (_SlotUpdate):
# measured on 2 Zen 4 cores, float32 wins up to ~32 rows, bfloat16 beyond.
FLOAT32_MAX_ROWS = 32


@dataclass(frozen=True)
class _OutputPart:
    """One targeted projection of a (possibly fused) layer: its output columns and B (this rank's rows,
    scaled), its rank columns following the previous part's."""

    out_start: int
    b: torch.Tensor


@dataclass(frozen=True)
class _SlotUpdate:
    """y += (x @ a_t) @ b_t: a_t [in, R] stacks the A of every targeted projection of the layer (q, k
    and v in one matmul), b_t [R, out] puts each one's B in its block of output columns (zeros
    elsewhere), so a layer's update is two matmuls whatever it fuses: at decode sizes the count of small
    ops, not their arithmetic, is what an update costs."""

    a_t: torch.Tensor
    b_t: torch.Tensor
    # float32 copies for steps of few rows on the CPU when the model's dtype is narrower: a bfloat16
    # matmul of 16 rows by rank 24 costs ~40 us there (the fixed cost of oneDNN's call), a float32 one
    # ~8; None where the model's own dtype serves every size.
    a_t_float: torch.Tensor | None = None
    b_t_float: torch.Tensor | None = None

    def apply(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> None:
        """y += the update of x's rows (those `mask` keeps; all without one), in place."""
        if self.a_t_float is not None and self.b_t_float is not None and x.shape[0] <= FLOAT32_MAX_ROWS:
            xa = x.float() @ self.a_t_float
            if mask is not None:
                xa.mul_(mask)
            y.add_(xa @ self.b_t_float)  # rounded to y's dtype as the sum is stored
            return
        xa = x @ self.a_t
        if mask is not None:
            xa.mul_(mask)
        y.addmm_(xa, self.b_t)


class ProjectionLoRA:
    """The adapters' updates of one projection layer, by slot."""

    def __init__(self) -> None:
        self._updates: dict[int, _SlotUpdate] = {}

    def set(self, slot: int, a: torch.Tensor, parts: tuple[_OutputPart, ...], out_features: int) -> None:
        """a [R, in] in the model's dtype and device; the parts' B [size, rank] (their ranks summing to R) in
        any, copied into a's."""
        b_t = a.new_zeros((a.shape[0], out_features))
        rank_start = 0
        for part in parts:
            rank, size = part.b.shape[1], part.b.shape[0]
            b_t[rank_start : rank_start + rank, part.out_start : part.out_start + size] = part.b.T
            rank_start += rank
        a_t = a.T.contiguous()
        if a.device.type == "cpu" and a.dtype != torch.float32:
            self._updates[slot] = _SlotUpdate(a_t, b_t, a_t.float(), b_t.float())
        else:
            self._updates[slot] = _SlotUpdate(a_t, b_t)

    def remove(self, slot: int) -> None:
        self._updates.pop(slot, None)

    def add_to(self, x: torch.Tensor, y: torch.Tensor, batch: LoRABatch) -> None:
        """y [T, out] += each row's adapter update of x [T, in], in place. An adapter that has some of the
        rows computes x @ A.T on all of them and zeroes the others: one multiplication by the mask costs less
        than gathering its rows and scattering their updates back (an update is R columns wide)."""
        for slot, mask in batch.groups:
            update = self._updates.get(slot)
            if update is not None:  # else this adapter leaves this projection alone
                update.apply(x, y, mask)


def attach_adapter(model: CausalLM, adapter: LoRAAdapter, slot: int) -> None:
    """Put the adapter in `slot` of every projection it targets (this rank's share, in the model's dtype
    and device). Shapes that do not fit the model are refused naming the adapter and tensor, before any
    projection changes."""
    dtype, device = model.spec.dtype, next(model.parameters()).device
    by_layer: dict[str, list[tuple[int, str]]] = {}
    for module_name in adapter.weights:
        parent, _, leaf = module_name.rpartition(".")
        fused, shard = FUSED_PROJECTIONS.get(leaf, (leaf, 0))
        by_layer.setdefault(f"{parent}.{fused}", []).append((shard, module_name))
    updates = []
    for layer_name, targets in by_layer.items():
        try:
            layer = model.model.get_submodule(layer_name)
        except AttributeError:  # e.g. a layer index past this model's depth
            raise ValueError(f"LoRA adapter {adapter.name!r}: the model has no {targets[0][1]}") from None
        if isinstance(layer, ColumnParallelLinear):
            a, parts = _column_update(adapter, layer, sorted(targets))
        else:  # engine.lora reads only q/k/v/gate/up (column-parallel) and o/down (row-parallel) targets
            assert isinstance(layer, RowParallelLinear)
            a, parts = _row_update(adapter, layer, targets[0][1])
        updates.append((layer, a, parts))
    for layer, a, parts in updates:
        if layer.lora is None:
            layer.lora = ProjectionLoRA()
        out_features = sum(layer.output_sizes) if isinstance(layer, ColumnParallelLinear) else layer.out_features
        layer.lora.set(slot, a.to(device, dtype), parts, out_features)


def detach_adapter(model: CausalLM, slot: int) -> None:
    """Empty `slot` in every projection (the adapter that was there no longer changes any)."""
    for module in model.modules():
        if isinstance(module, ColumnParallelLinear | RowParallelLinear) and module.lora is not None:
            module.lora.remove(slot)


def _check(adapter: LoRAAdapter, module_name: str, a: torch.Tensor, b: torch.Tensor, in_size: int, out_size: int) -> None:
    if a.shape[1] != in_size or b.shape[0] != out_size:
        raise ValueError(
            f"LoRA adapter {adapter.name!r}: {module_name} has A {tuple(a.shape)} and B {tuple(b.shape)}; the "
            f"model's projection is {out_size} x {in_size}"
        )


def _column_update(
    adapter: LoRAAdapter, layer: ColumnParallelLinear, targets: list[tuple[int, str]]
) -> tuple[torch.Tensor, tuple[_OutputPart, ...]]:
    factors, parts = [], []
    for shard, module_name in targets:
        weights, rows = adapter.weights[module_name], layer.slices[shard]
        _check(adapter, module_name, weights.a, weights.b, layer.in_features, rows.total)
        parts.append(_OutputPart(sum(layer.output_sizes[:shard]), weights.b[rows.start : rows.start + rows.size]))
        factors.append(weights.a)
    return torch.cat(factors), tuple(parts)


def _row_update(
    adapter: LoRAAdapter, layer: RowParallelLinear, module_name: str
) -> tuple[torch.Tensor, tuple[_OutputPart, ...]]:
    weights, cols = adapter.weights[module_name], layer.cols
    _check(adapter, module_name, weights.a, weights.b, cols.total, layer.out_features)
    a = weights.a[:, cols.start : cols.start + cols.size]
    return a, (_OutputPart(0, weights.b),)
