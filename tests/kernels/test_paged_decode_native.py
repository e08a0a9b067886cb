"""The C++ decode attention (kernels/native/paged_decode.cpp) against dense float64 attention and against
the torch path it replaces, on the engine's CPU cache layout (key tiles stored transposed), in float32 and
bfloat16."""

from __future__ import annotations

import pytest
import torch

from kernels import ops
from kernels.paged_attention_ref import paged_attention_ref
from kernels.paged_decode_native import native_decode_supported
from tests.kernels.conftest import needs_compiler
from tests.kernels.paged_batch import make_paged_batch
from tests.kernels.test_paged_attention import GQA, MIXED_KV_LENS, MIXED_Q_LENS, dense_attention

CPU = torch.device("cpu")

pytestmark = needs_compiler

# Decodes only: one token, exactly one block, one past it, block and window edges, a long one.
DECODE_KV_LENS = [1, 16, 17, 32, 33, 129, 463, 1000]


# bfloat16: the dense oracle rounds its float64 result once, the kernel its float32 one; a few ulps apart.
TOLERANCES = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads"), [*GQA, (9, 3), (14, 2)])
def test_decodes_match_dense_attention(
    num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> None:
    """Slots past each sequence's length hold NaN (make_paged_batch): a stale row read shows up. Groups of
    1 to 7 query heads per KV head: the kernel takes them up to 4 (head_dim 64) or 2 (128) at a time."""
    batch = make_paged_batch([1] * len(DECODE_KV_LENS), DECODE_KV_LENS, num_q_heads, num_kv_heads, head_dim,
                             dtype, CPU, block_size=block_size, keys_transposed=True)  # fmt: skip
    assert native_decode_supported(batch.query, batch.key_cache, batch.value_cache, batch.args()[3:])
    out = paged_attention_ref(*batch.args(), scale=head_dim**-0.5, native=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out, dense_attention(batch, head_dim**-0.5), **TOLERANCES[dtype])


def test_bfloat16_decodes_match_the_torch_path() -> None:
    """The path it replaces in bfloat16 gathers the K/V and runs SDPA: the same values, to bfloat16's
    rounding."""
    batch = make_paged_batch(MIXED_Q_LENS + [1, 1, 1], MIXED_KV_LENS + [300, 48, 17], 9, 3, 64, torch.bfloat16, CPU,
                             keys_transposed=True)  # fmt: skip
    native = paged_attention_ref(*batch.args(), scale=0.125, native=True)
    torch_path = paged_attention_ref(*batch.args(), scale=0.125, native=False)
    torch.testing.assert_close(native, torch_path, **TOLERANCES[torch.bfloat16])


def test_mixed_dtypes_are_not_the_kernels() -> None:
    batch = make_paged_batch([1, 1], [40, 70], 4, 2, 64, torch.bfloat16, CPU, keys_transposed=True)
    metadata = batch.args()[3:]
    assert not native_decode_supported(batch.query.float(), batch.key_cache, batch.value_cache, metadata)
    half = make_paged_batch([1, 1], [40, 70], 4, 2, 64, torch.float16, CPU, keys_transposed=True)
    assert not native_decode_supported(half.query, half.key_cache, half.value_cache, metadata)


@pytest.mark.parametrize("sliding_window", [None, 1, 7, 16, 300, 5000])
def test_mixed_step_and_sliding_window_match_the_torch_path(sliding_window: int | None) -> None:
    """Prefills and chunks of the same step still run in torch; decodes in C++ match the embedding_bag path."""
    batch = make_paged_batch(MIXED_Q_LENS + [1, 1], MIXED_KV_LENS + [300, 48], 6, 2, 64, torch.float32, CPU,
                             keys_transposed=True)  # fmt: skip
    native = paged_attention_ref(*batch.args(), scale=0.125, sliding_window=sliding_window, native=True)
    torch_path = paged_attention_ref(*batch.args(), scale=0.125, sliding_window=sliding_window, native=False)
    torch.testing.assert_close(native, torch_path, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(native, dense_attention(batch, 0.125, sliding_window), atol=1e-5, rtol=1e-5)


def test_ops_uses_the_native_kernel_only_on_the_auto_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = make_paged_batch([1, 1], [40, 70], 4, 2, 64, torch.float32, CPU, keys_transposed=True)
    calls: list[int] = []
    kernel = torch.ops.tritonllm_cpu.paged_decode
    monkeypatch.setattr(
        "kernels.paged_decode_native.torch.ops.tritonllm_cpu.paged_decode",
        lambda *args: calls.append(1) or kernel(*args),
    )
    expected = dense_attention(batch, 0.125)
    torch.testing.assert_close(ops.paged_attention(*batch.args(), scale=0.125), expected, atol=1e-5, rtol=1e-5)
    assert calls == [1]
    ops.set_backend("torch")
    try:
        torch.testing.assert_close(ops.paged_attention(*batch.args(), scale=0.125), expected, atol=1e-5, rtol=1e-5)
    finally:
        ops.set_backend("auto")
    assert calls == [1]


@pytest.mark.parametrize(("block_size", "head_dim"), [(8, 64), (16, 96)])
def test_shapes_not_compiled_fall_back_to_torch(block_size: int, head_dim: int) -> None:
    batch = make_paged_batch([1, 1], [40, 9], 4, 2, head_dim, torch.float32, CPU, block_size=block_size,
                             keys_transposed=True)  # fmt: skip
    assert not native_decode_supported(batch.query, batch.key_cache, batch.value_cache, batch.args()[3:])
    out = paged_attention_ref(*batch.args(), scale=0.1, native=True)
    torch.testing.assert_close(out, dense_attention(batch, 0.1), atol=1e-5, rtol=1e-5)


def test_kernel_refuses_a_cache_it_cannot_read() -> None:
    batch = make_paged_batch([1], [20], 4, 2, 64, torch.float32, CPU, keys_transposed=False)
    out = torch.empty_like(batch.query)
    sequences = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="stored transposed"):
        torch.ops.tritonllm_cpu.paged_decode(out, batch.query, batch.key_cache, batch.value_cache, sequences,
                                             batch.query_start_loc, batch.seq_lens, batch.block_tables, 0.1, 0)  # fmt: skip


def test_kernel_refuses_metadata_that_points_outside_its_tensors() -> None:
    """The reference raises on such metadata; the C++ kernel must too, before reading anything."""
    batch = make_paged_batch([1, 1], [20, 40], 4, 2, 64, torch.float32, CPU, keys_transposed=True)
    out = torch.empty_like(batch.query)
    sequences = torch.tensor([0, 1])

    def decode(seq_lens: torch.Tensor, block_tables: torch.Tensor) -> None:
        torch.ops.tritonllm_cpu.paged_decode(out, batch.query, batch.key_cache, batch.value_cache, sequences,
                                             batch.query_start_loc, seq_lens, block_tables, 0.1, 0)  # fmt: skip

    with pytest.raises(RuntimeError, match="not between 1 and its block table"):
        decode(torch.tensor([20, 80], dtype=torch.int32), batch.block_tables)  # past its table's 3 blocks
    with pytest.raises(RuntimeError, match="not between 1"):
        decode(torch.tensor([0, 40], dtype=torch.int32), batch.block_tables)
    tables = batch.block_tables.clone()
    tables[1, 0] = batch.key_cache.shape[0]
    with pytest.raises(RuntimeError, match="outside the cache"):
        decode(batch.seq_lens, tables)


def test_a_strided_query_reads_as_a_contiguous_one() -> None:
    batch = make_paged_batch([1, 1, 1], [20, 40, 33], 4, 2, 64, torch.float32, CPU, keys_transposed=True)
    strided = batch.query.transpose(0, 1).contiguous().transpose(0, 1)  # same values, head-major storage
    args = (strided, *batch.args()[1:])
    out = paged_attention_ref(*args, scale=0.125, native=True)
    torch.testing.assert_close(out, dense_attention(batch, 0.125), atol=1e-5, rtol=1e-5)
