"""Projection layers split for tensor parallelism, each with its own weight-loading rule.

Column-parallel layers (q|k|v, gate|up) keep a row slice of each checkpoint matrix: a rank computes only
its heads or intermediate features and needs no communication. Row-parallel layers (o_proj, down_proj)
keep the matching column slice, so their partial products are summed by one all-reduce per output. The
vocab-parallel table serves as embedding (masked lookup + all-reduce) and LM head (logits gathered on
rank 0). With one rank every slice is the whole tensor and no collective runs.

Layers read checkpoint tensors through safetensors' lazy slices, so a rank reads only its shard from the
memory-mapped file and never materialises the whole tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from engine.distributed import TensorParallelGroup
from engine.models.packed_gemm import PrepackedWeight, prepack
from engine.models.sharding import RowSlice, vocab_slice

if TYPE_CHECKING:
    from engine.models.lora import LoRABatch, ProjectionLoRA


class CheckpointTensor(Protocol):
    """A checkpoint tensor not read yet (safetensors' `get_slice`): indexing reads just that part."""

    def get_shape(self) -> list[int]: ...

    def __getitem__(self, index: Any) -> torch.Tensor: ...


def load_slice(
    dst: torch.Tensor,
    source: CheckpointTensor,
    checkpoint_name: str,
    rows: RowSlice | None = None,
    cols: RowSlice | None = None,
) -> None:
    """dst <- source[rows, cols] (None: the whole dimension), converting dtype and device. The checkpoint's
    full shape must be dst's with `rows.total` / `cols.total` in place of the sliced dimensions. Rows past
    the checkpoint's end (vocabulary padding) are left untouched."""
    expected = list(dst.shape)
    if rows is not None:
        expected[0] = rows.total
    if cols is not None:
        expected[1] = cols.total
    actual = list(source.get_shape())
    if actual != expected:
        raise ValueError(
            f"checkpoint tensor {checkpoint_name} has shape {tuple(actual)}, expected {tuple(expected)}"
        )
    row_index = slice(None) if rows is None else slice(rows.start, min(rows.start + rows.size, rows.total))
    tensor = source[row_index] if cols is None else source[row_index, cols.start : cols.start + cols.size]
    dst[: tensor.shape[0]].copy_(tensor)


def _parameter(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), False)


class _Projection(nn.Module):
    """A [out, in] weight applied as x @ weight.T, which `pack` may hand to a GEMM library's own layout
    (engine.models.packed_gemm: float32 and bfloat16 on the CPU) once the checkpoint is loaded."""

    weight: nn.Parameter
    packed: PrepackedWeight | None = None
    # The LoRA adapters' updates of this projection (engine.models.lora), None where none targets it.
    lora: ProjectionLoRA | None = None

    def pack(self, format_name: str, keep_weight: bool = False) -> None:
        """Move the weight into the prepacked format `format_name`. The plain copy is freed unless something
        else still reads it (a tied embedding table's lookups), in which case it is held twice."""
        self.packed = prepack(self.weight.data, format_name)
        if not keep_weight:
            del self.weight

    def project(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.packed is not None:
            return self.packed.linear(x, bias)
        return F.linear(x, self.weight, bias)


# Checkpoint projections that live inside one of our fused layers: name -> (fused layer, row block).
FUSED_PROJECTIONS = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class ColumnParallelLinear(_Projection):
    """Projections of the same input stacked along the output dimension (q|k|v, gate|up), so one matmul
    replaces several; this rank holds rows `slices[i]` of projection i's checkpoint matrix."""

    def __init__(
        self,
        in_features: int,
        slices: Sequence[RowSlice],
        bias: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.slices = tuple(slices)
        self.output_sizes = tuple(s.size for s in self.slices)
        self.weight = _parameter((sum(self.output_sizes), in_features), dtype, device)
        self.bias = _parameter((sum(self.output_sizes),), dtype, device) if bias else None

    def forward(self, x: torch.Tensor, lora: LoRABatch | None = None) -> torch.Tensor:
        y = self.project(x, self.bias)
        if lora is not None and self.lora is not None:
            self.lora.add_to(x, y, lora)
        return y

    def load(self, param_name: str, shard: int, source: CheckpointTensor, checkpoint_name: str) -> None:
        """This rank's rows of projection number `shard` into its row block of `weight` or `bias`."""
        start = sum(self.output_sizes[:shard])
        dst = getattr(self, param_name).data[start : start + self.output_sizes[shard]]
        load_slice(dst, source, checkpoint_name, rows=self.slices[shard])

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The merged output cut back into its projections (views, not copies)."""
        return tuple(y.split_with_sizes(self.output_sizes, dim=-1))


class RowParallelLinear(_Projection):
    """y = sum over ranks of x_rank @ W[:, cols_rank].T, plus the bias once: this rank holds the input
    columns `cols` of the checkpoint matrix, matching the features the column-parallel layer before it
    produced here."""

    def __init__(
        self,
        cols: RowSlice,
        out_features: int,
        bias: bool,
        dtype: torch.dtype,
        device: torch.device,
        group: TensorParallelGroup,
    ) -> None:
        super().__init__()
        self.cols = cols
        self.out_features = out_features
        self.group = group
        self.weight = _parameter((out_features, cols.size), dtype, device)
        self.bias = _parameter((out_features,), dtype, device) if bias else None

    def forward(self, x: torch.Tensor, lora: LoRABatch | None = None) -> torch.Tensor:
        single = self.group.size == 1
        y = self.project(x, self.bias if single else None)
        if lora is not None and self.lora is not None:
            # Before the sum: each rank's update covers its input columns, as its product does.
            self.lora.add_to(x, y, lora)
        if single:
            return y
        y = self.group.all_reduce(y)
        # Added after the sum: adding it on every rank would count it tp times.
        return y if self.bias is None else y.add_(self.bias)

    def load(self, param_name: str, shard: int, source: CheckpointTensor, checkpoint_name: str) -> None:
        dst = getattr(self, param_name).data
        load_slice(dst, source, checkpoint_name, cols=self.cols if param_name == "weight" else None)


class VocabParallelEmbedding(_Projection):
    """A [vocab_size, hidden_size] table split by rows across ranks: the token embedding, and the LM head
    (its own, or the embedding itself when tied)."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        dtype: torch.dtype,
        device: torch.device,
        group: TensorParallelGroup,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.group = group
        self.rows = vocab_slice(vocab_size, group.rank, group.size)
        self.weight = _parameter((self.rows.size, hidden_size), dtype, device)
        # Padding rows past the vocabulary (last rank only) must embed to zero and score zero.
        self.weight.data[max(0, vocab_size - self.rows.start) :].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [T] -> [T, hidden_size]: each rank looks up the ids in its slice, zeros elsewhere."""
        if self.group.size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.rows.start
        outside = (local < 0) | (local >= self.rows.size)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.group.all_reduce(out.masked_fill_(outside.unsqueeze(-1), 0))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """hidden [N, hidden_size] -> float32 logits [N, vocab_size] on rank 0; other ranks send their
        slice and get None."""
        local = self.project(hidden, None).float()
        if self.group.size == 1:
            return local
        full = self.group.gather_last_dim(local)
        return None if full is None else full[:, : self.vocab_size]

    def load(self, param_name: str, shard: int, source: CheckpointTensor, checkpoint_name: str) -> None:
        load_slice(self.weight.data, source, checkpoint_name, rows=self.rows)


# Our layers that read their own slice of a checkpoint tensor; everything else is replicated whole.
SHARDED_LAYERS = (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding)
