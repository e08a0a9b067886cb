"""The C++ attention kernels (kernels/native/paged_decode.cpp, paged_prefill.cpp) against dense float64
attention and against the torch path they replace, on the engine's CPU cache layout (key tiles stored
transposed), in float32 and bfloat16."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from kernels import ops
from kernels.paged_attention_native import native_attention_supported
from kernels.paged_attention_ref import paged_attention_ref
from tests.engine.conftest import torch_threads
from tests.kernels.conftest import needs_compiler
from tests.kernels.paged_batch import make_paged_batch
from tests.kernels.test_paged_attention import GQA, MIXED_KV_LENS, MIXED_Q_LENS, dense_attention

CPU = torch.device("cpu")

pytestmark = needs_compiler

# Decodes only: one token, exactly one block, one past it, block and window edges, a long one.
DECODE_KV_LENS = [1, 16, 17, 32, 33, 129, 463, 1000]
# Prefills: whole prompts (2 tokens, a block, one past a key chunk, tiles of query positions and a
# ragged tail), prompts after a prefix-cache hit and chunks of long prompts (fewer queries than keys).
PREFILL_Q_LENS = [2, 16, 65, 100, 5, 3, 17, 64, 31]
PREFILL_KV_LENS = [2, 16, 65, 100, 129, 40, 300, 64, 200]


def every_compiled_shape(test: Callable[..., None]) -> Callable[..., None]:
    """Both dtypes, every compiled block and head size, query-head groups of 1 to 8 per KV head."""
    for mark in (
        pytest.mark.parametrize(("num_q_heads", "num_kv_heads"), [*GQA, (9, 3), (14, 2)]),
        pytest.mark.parametrize("head_dim", [64, 128]),
        pytest.mark.parametrize("block_size", [16, 32]),
        pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"]),
    ):
        test = mark(test)
    return test


# bfloat16: the dense oracle rounds its float64 result once, the kernel its float32 one; a few ulps apart.
TOLERANCES = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}


@every_compiled_shape
def test_decodes_match_dense_attention(
    num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> None:
    """Slots past each sequence's length hold NaN (make_paged_batch): a stale row read shows up. Groups of
    1 to 7 query heads per KV head: the kernel takes them up to 4 (head_dim 64) or 2 (128) at a time."""
    batch = make_paged_batch([1] * len(DECODE_KV_LENS), DECODE_KV_LENS, num_q_heads, num_kv_heads, head_dim,
                             dtype, CPU, block_size=block_size, keys_transposed=True)  # fmt: skip
    assert native_attention_supported(batch.query, batch.key_cache, batch.value_cache, batch.args()[3:])
    out = paged_attention_ref(*batch.args(), scale=head_dim**-0.5, native=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out, dense_attention(batch, head_dim**-0.5), **TOLERANCES[dtype])


@every_compiled_shape
def test_prefills_match_dense_attention(
    num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> None:
    """Rows of 1 to 8 query heads per KV head times up to 16 positions, in register tiles of 6 (head_dim
    64) or 3 (128) rows and the remainders; stale slots hold NaN."""
    batch = make_paged_batch(PREFILL_Q_LENS, PREFILL_KV_LENS, num_q_heads, num_kv_heads, head_dim, dtype, CPU,
                             block_size=block_size, keys_transposed=True)  # fmt: skip
    out = paged_attention_ref(*batch.args(), scale=head_dim**-0.5, native=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out, dense_attention(batch, head_dim**-0.5), **TOLERANCES[dtype])


@pytest.mark.parametrize("sliding_window", [1, 7, 16, 64, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_prefills_in_a_sliding_window_match_dense_attention(sliding_window: int, dtype: torch.dtype) -> None:
    """Windows narrower than a tile, a block and a key chunk: some rows see nothing in a chunk."""
    batch = make_paged_batch(PREFILL_Q_LENS, PREFILL_KV_LENS, 6, 2, 64, dtype, CPU, keys_transposed=True)
    out = paged_attention_ref(*batch.args(), scale=0.125, sliding_window=sliding_window, native=True)
    torch.testing.assert_close(out, dense_attention(batch, 0.125, sliding_window), **TOLERANCES[dtype])


def test_one_long_prompt_matches_sdpa() -> None:
    """Many tiles handed out across the threads, costliest first; SDPA's causal mode is the other path."""
    batch = make_paged_batch([1500], [1500], 9, 3, 64, torch.float32, CPU, keys_transposed=True)
    native = paged_attention_ref(*batch.args(), scale=0.125, native=True)
    torch.testing.assert_close(native, paged_attention_ref(*batch.args(), scale=0.125), atol=1e-5, rtol=1e-5)


def test_bfloat16_decodes_match_the_torch_path() -> None:
    """The path it replaces in bfloat16 gathers the K/V and runs SDPA: the same values, to bfloat16's
    rounding."""
    batch = make_paged_batch(MIXED_Q_LENS + [1, 1, 1], MIXED_KV_LENS + [300, 48, 17], 9, 3, 64, torch.bfloat16, CPU,
                             keys_transposed=True)  # fmt: skip
    native = paged_attention_ref(*batch.args(), scale=0.125, native=True)
    torch_path = paged_attention_ref(*batch.args(), scale=0.125, native=False)
    torch.testing.assert_close(native, torch_path, **TOLERANCES[torch.bfloat16])


def test_caches_narrower_than_the_query_are_bfloat16_under_float32_or_fp8() -> None:
    batch = make_paged_batch([1, 1], [40, 70], 4, 2, 64, torch.bfloat16, CPU, keys_transposed=True)
    metadata = batch.args()[3:]
    assert native_attention_supported(batch.query.float(), batch.key_cache, batch.value_cache, metadata)
    wide = make_paged_batch([1, 1], [40, 70], 4, 2, 64, torch.float32, CPU, keys_transposed=True)
    assert not native_attention_supported(wide.query.bfloat16(), wide.key_cache, wide.value_cache, metadata)
    assert not native_attention_supported(wide.query, wide.key_cache, batch.value_cache, metadata)
    half = make_paged_batch([1, 1], [40, 70], 4, 2, 64, torch.float16, CPU, keys_transposed=True)
    assert not native_attention_supported(half.query, half.key_cache, half.value_cache, metadata)
    assert not native_attention_supported(half.query.float(), half.key_cache, half.value_cache, metadata)
    for fp8 in (torch.float8_e4m3fn, torch.float8_e5m2):
        narrow = make_paged_batch([1, 1], [40, 70], 4, 2, 64, fp8, CPU, keys_transposed=True)
        for query in (narrow.query.float(), narrow.query.bfloat16()):
            assert native_attention_supported(query, narrow.key_cache, narrow.value_cache, metadata)
        assert not native_attention_supported(narrow.query.half(), narrow.key_cache, narrow.value_cache, metadata)


@pytest.mark.parametrize(
    ("dtype", "cache_dtype"),
    [
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float8_e4m3fn),
        (torch.float32, torch.float8_e5m2),
        (torch.bfloat16, torch.float8_e4m3fn),
        (torch.bfloat16, torch.float8_e5m2),
    ],
)
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim"), [(9, 3, 64), (8, 1, 128)])
@pytest.mark.parametrize("sliding_window", [None, 16])
@pytest.mark.parametrize("block_size", [16, 32])
def test_a_narrower_cache_matches_dense_attention_over_the_same_values(
    dtype: torch.dtype, cache_dtype: torch.dtype, num_q_heads: int, num_kv_heads: int, head_dim: int,
    sliding_window: int | None, block_size: int,
) -> None:
    """kv_cache_dtype=bfloat16 under a float32 model, or fp8 under either: the kernels widen the cache as they
    read it (fp8 by bit arithmetic, vector_math.h) and keep the query, softmax and output in the model's
    dtype, so they match float64 attention over the same rounded K/V to that dtype's precision; the torch
    path (gathered K/V widened for SDPA) agrees. Stale slots past each sequence hold NaN, in fp8 too. Both
    block sizes: the fp8 decode reads a key line as 4 head dims x 16 positions, or 2 x 32."""
    batch = make_paged_batch(MIXED_Q_LENS + [1, 1, 1], MIXED_KV_LENS + [300, 48, 17], num_q_heads, num_kv_heads,
                             head_dim, cache_dtype, CPU, block_size=block_size, keys_transposed=True)  # fmt: skip
    batch = dataclasses.replace(batch, query=batch.query.to(dtype))
    scale = head_dim**-0.5
    native = paged_attention_ref(*batch.args(), scale=scale, sliding_window=sliding_window, native=True)
    torch_path = paged_attention_ref(*batch.args(), scale=scale, sliding_window=sliding_window, native=False)
    assert native.dtype == torch_path.dtype == dtype
    expected = dense_attention(batch, scale, sliding_window)
    # bfloat16: the kernels round once, SDPA's bfloat16 path rounds its intermediates too.
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1.6e-2, "rtol": 1.6e-2}
    torch.testing.assert_close(native, expected, **tolerance)
    torch.testing.assert_close(torch_path, expected, **tolerance)


@pytest.mark.parametrize(
    ("dtype", "cache_dtype"),
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float8_e4m3fn),
        (torch.float32, torch.float8_e5m2),
    ],
)
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim"), [(9, 3, 64), (14, 2, 128)])
@pytest.mark.parametrize("sliding_window", [None, 16])
@pytest.mark.parametrize("block_size", [16, 32])
def test_decode_work_items_of_whole_sequences_and_of_single_kv_heads_agree(
    dtype: torch.dtype, cache_dtype: torch.dtype, num_q_heads: int, num_kv_heads: int, head_dim: int,
    sliding_window: int | None, block_size: int,
) -> None:
    """The decode kernel gives each thread whole sequences when each thread's share of the positions is at
    least 4 times the longest sequence, (sequence, KV head) pairs otherwise: these 12 sequences on 1 thread
    take the first, on 3 threads the second. Both sum in the same order, so they agree to the bit, and with
    float64 attention over the same cache values."""
    kv_lens = [1, 16, 17, 32, 33, 129, 150, 160, 170, 180, 190, 200]
    assert 4 * max(kv_lens) <= sum(kv_lens) < 3 * 4 * max(kv_lens)
    batch = make_paged_batch([1] * len(kv_lens), kv_lens, num_q_heads, num_kv_heads, head_dim, cache_dtype, CPU,
                             block_size=block_size, keys_transposed=True)  # fmt: skip
    batch = dataclasses.replace(batch, query=batch.query.to(dtype))
    scale = head_dim**-0.5
    outputs = []
    for threads in (1, 3):
        with torch_threads(threads):
            outputs.append(paged_attention_ref(*batch.args(), scale=scale, sliding_window=sliding_window, native=True))
    assert torch.equal(*outputs)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1.6e-2, "rtol": 1.6e-2}
    torch.testing.assert_close(outputs[0], dense_attention(batch, scale, sliding_window), **tolerance)


@pytest.mark.parametrize("sliding_window", [None, 1, 7, 16, 300, 5000])
def test_mixed_step_and_sliding_window_match_the_torch_path(sliding_window: int | None) -> None:
    """A step of prefills, chunks and decodes, all in C++, matches the torch path (embedding_bag for the
    decodes, SDPA over gathered K/V for the rest)."""
    batch = make_paged_batch(MIXED_Q_LENS + [1, 1], MIXED_KV_LENS + [300, 48], 6, 2, 64, torch.float32, CPU,
                             keys_transposed=True)  # fmt: skip
    native = paged_attention_ref(*batch.args(), scale=0.125, sliding_window=sliding_window, native=True)
    torch_path = paged_attention_ref(*batch.args(), scale=0.125, sliding_window=sliding_window, native=False)
    torch.testing.assert_close(native, torch_path, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(native, dense_attention(batch, 0.125, sliding_window), atol=1e-5, rtol=1e-5)


def test_ops_uses_the_native_kernels_only_on_the_auto_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = make_paged_batch([1, 5, 1], [40, 70, 9], 4, 2, 64, torch.float32, CPU, keys_transposed=True)
    calls: list[str] = []
    for name in ("paged_decode", "paged_prefill"):
        kernel = getattr(torch.ops.tritonllm_cpu, name)
        monkeypatch.setattr(
            f"kernels.paged_attention_native.torch.ops.tritonllm_cpu.{name}",
            lambda *args, name=name, kernel=kernel: calls.append(name) or kernel(*args),
        )
    expected = dense_attention(batch, 0.125)
    torch.testing.assert_close(
        ops.paged_attention(*batch.args(), scale=0.125), expected, atol=1e-5, rtol=1e-5
    )
    assert calls == ["paged_decode", "paged_prefill"]
    ops.set_backend("torch")
    try:
        torch.testing.assert_close(
            ops.paged_attention(*batch.args(), scale=0.125), expected, atol=1e-5, rtol=1e-5
        )
    finally:
        ops.set_backend("auto")
    assert calls == ["paged_decode", "paged_prefill"]


@pytest.mark.parametrize(("block_size", "head_dim"), [(8, 64), (16, 96)])
def test_shapes_not_compiled_fall_back_to_torch(block_size: int, head_dim: int) -> None:
    batch = make_paged_batch([1, 1], [40, 9], 4, 2, head_dim, torch.float32, CPU, block_size=block_size,
                             keys_transposed=True)  # fmt: skip
    assert not native_attention_supported(batch.query, batch.key_cache, batch.value_cache, batch.args()[3:])
    out = paged_attention_ref(*batch.args(), scale=0.1, native=True)
    torch.testing.assert_close(out, dense_attention(batch, 0.1), atol=1e-5, rtol=1e-5)


def test_kernel_refuses_a_cache_it_cannot_read() -> None:
    batch = make_paged_batch([1], [20], 4, 2, 64, torch.float32, CPU, keys_transposed=False)
    out = torch.empty_like(batch.query)
    sequences = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="stored transposed"):
        torch.ops.tritonllm_cpu.paged_decode(out, batch.query, batch.key_cache, batch.value_cache, sequences,
                                             batch.query_start_loc, batch.seq_lens, batch.block_tables, 0.1, 0)  # fmt: skip


@pytest.mark.parametrize(("kernel", "q_lens"), [("paged_decode", [1, 1]), ("paged_prefill", [5, 3])])
def test_kernels_refuse_metadata_that_points_outside_their_tensors(kernel: str, q_lens: list[int]) -> None:
    """The reference raises on such metadata; the C++ kernels must too, before reading anything."""
    batch = make_paged_batch(q_lens, [20, 40], 4, 2, 64, torch.float32, CPU, keys_transposed=True)
    out = torch.empty_like(batch.query)
    sequences = torch.tensor([0, 1])

    def attend(seq_lens: torch.Tensor, block_tables: torch.Tensor) -> None:
        getattr(torch.ops.tritonllm_cpu, kernel)(out, batch.query, batch.key_cache, batch.value_cache, sequences,
                                                 batch.query_start_loc, seq_lens, block_tables, 0.1, 0)  # fmt: skip

    with pytest.raises(RuntimeError, match=f"not between its {q_lens[1]} query tokens and its block table"):
        attend(torch.tensor([20, 80], dtype=torch.int32), batch.block_tables)  # past its table's 3 blocks
    with pytest.raises(RuntimeError, match=f"not between its {q_lens[1]} query tokens"):
        attend(
            torch.tensor([20, q_lens[1] - 1], dtype=torch.int32), batch.block_tables
        )  # fewer keys than queries
    for bad_block in (batch.key_cache.shape[0], -1):
        tables = batch.block_tables.clone()
        tables[1, 2] = bad_block
        with pytest.raises(RuntimeError, match="outside the cache"):
            attend(batch.seq_lens, tables)


def test_a_strided_query_reads_as_a_contiguous_one() -> None:
    batch = make_paged_batch([1, 7, 1], [20, 40, 33], 4, 2, 64, torch.float32, CPU, keys_transposed=True)
    strided = batch.query.transpose(0, 1).contiguous().transpose(0, 1)  # same values, head-major storage
    args = (strided, *batch.args()[1:])
    out = paged_attention_ref(*args, scale=0.125, native=True)
    torch.testing.assert_close(out, dense_attention(batch, 0.125), atol=1e-5, rtol=1e-5)
