"""Which part of each weight a tensor-parallel rank owns.

Attention heads split evenly across ranks. KV heads split too while tp <= num_kv_heads; beyond that they
are replicated: each rank keeps the one KV head its query heads read (tp must then be a multiple of
num_kv_heads, so no rank's query heads straddle two KV heads). The MLP splits its intermediate size; the
vocabulary splits into equal slices, the last one padded when tp does not divide it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.models.spec import ModelSpec


@dataclass(frozen=True)
class RowSlice:
    """Rows [start, start + size) of a checkpoint matrix (or of its bias) whose full height is `total`."""

    start: int
    size: int
    total: int

    @staticmethod
    def whole(total: int) -> RowSlice:
        return RowSlice(0, total, total)

    @staticmethod
    def even(total: int, rank: int, size: int) -> RowSlice:
        """Rank `rank`'s equal share of `total` rows (the caller checked divisibility)."""
        share = total // size
        return RowSlice(rank * share, share, total)


@dataclass(frozen=True)
class HeadShard:
    """The attention heads one rank computes."""

    # Query heads of this rank: global heads [head_start, head_start + num_heads).
    head_start: int
    num_heads: int
    # KV heads this rank stores in its KV cache: global KV heads [kv_head_start, kv_head_start + num_kv_heads).
    kv_head_start: int
    num_kv_heads: int


def check_tensor_parallel(spec: ModelSpec, size: int) -> None:
    """ValueError naming the dimension when `spec` cannot be split across `size` ranks."""
    if size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {size}")
    if spec.num_heads % size:
        raise ValueError(
            f"tensor_parallel_size {size} must divide the number of attention heads ({spec.num_heads})"
        )
    kv = spec.num_kv_heads
    if size <= kv and kv % size:
        raise ValueError(
            f"tensor_parallel_size {size} must divide the number of KV heads ({kv}), or be a multiple "
            "of it (KV heads are then replicated)"
        )
    if size > kv and size % kv:
        raise ValueError(
            f"tensor_parallel_size {size} exceeds the number of KV heads ({kv}) and is not a multiple "
            "of it, so KV heads cannot be replicated evenly"
        )
    if spec.intermediate_size % size:
        raise ValueError(
            f"tensor_parallel_size {size} must divide the MLP intermediate size ({spec.intermediate_size})"
        )
    if spec.moe is not None and spec.moe.intermediate_size % size:
        raise ValueError(
            f"tensor_parallel_size {size} must divide the experts' intermediate size "
            f"({spec.moe.intermediate_size})"
        )


def head_shard(spec: ModelSpec, rank: int, size: int) -> HeadShard:
    check_tensor_parallel(spec, size)
    num_heads = spec.num_heads // size
    if size <= spec.num_kv_heads:
        num_kv = spec.num_kv_heads // size
        return HeadShard(rank * num_heads, num_heads, rank * num_kv, num_kv)
    # Replicated: size // num_kv_heads consecutive ranks share each KV head.
    return HeadShard(rank * num_heads, num_heads, rank // (size // spec.num_kv_heads), 1)


def vocab_slice(vocab_size: int, rank: int, size: int) -> RowSlice:
    """This rank's rows of the embedding / LM head. Every rank holds ceil(vocab / size) rows so the
    gathered logits line up; rows past the vocabulary (last rank only) are padding."""
    share = -(-vocab_size // size)
    return RowSlice(rank * share, share, vocab_size)
