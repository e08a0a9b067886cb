"""Paged attention: the torch reference against dense attention, the Triton kernel against the reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from kernels import ops
from kernels.paged_attention_ref import paged_attention_ref
from kernels.paged_attention_triton import AttentionTiles, paged_attention_triton
from tests.kernels.conftest import DEVICE, assert_close
from tests.kernels.paged_batch import PagedBatch, make_paged_batch

# One step mixing every kind of sequence: first-token decode, full prefill, a prefill chunk over a
# cached prefix, a long decode, a chunk crossing block boundaries.
MIXED_Q_LENS = [1, 17, 5, 1, 3]
MIXED_KV_LENS = [1, 17, 129, 463, 40]
GQA = [(2, 2), (6, 2), (5, 1), (8, 1)]  # (Hq, Hkv): 1:1, 3:1, 5:1, 8:1


def dense_attention(batch: PagedBatch, scale: float, sliding_window: int | None = None,
                    soft_cap: float | None = None) -> torch.Tensor:
    """Each sequence attended densely in float64 with explicit masks: the oracle for window and cap."""
    outs = []
    starts = batch.query_start_loc.tolist()
    for i, (k, v) in enumerate(zip(batch.dense_keys, batch.dense_values, strict=True)):
        q = batch.query[starts[i]: starts[i + 1]].double().transpose(0, 1)  # [Hq, q_len, D]
        group = q.shape[0] // k.shape[1]
        k = k.double().transpose(0, 1).repeat_interleave(group, 0)  # [Hq, L, D]
        v = v.double().transpose(0, 1).repeat_interleave(group, 0)
        q_pos = torch.arange(k.shape[1] - q.shape[1], k.shape[1], device=q.device)[:, None]
        k_pos = torch.arange(k.shape[1], device=q.device)[None, :]
        visible = k_pos <= q_pos
        if sliding_window is not None:
            visible &= k_pos > q_pos - sliding_window
        scores = q @ k.transpose(1, 2) * scale
        if soft_cap is not None:
            scores = soft_cap * torch.tanh(scores / soft_cap)
        probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        outs.append((probs @ v).transpose(0, 1))
    return torch.cat(outs).to(batch.query.dtype)


# The reference batches decodes of similar KV length (padded to the longest); this step lands two or more
# decodes in each such batch.
DECODE_KV_LENS = [463, 400, 350, 129, 100, 17, 1]
# Decodes padded past a single partial block: the gathered padding must not carry its stale (NaN) rows.
SHORT_DECODE_KV_LENS = [18, 14, 17]


@pytest.mark.parametrize(("q_lens", "kv_lens"), [(MIXED_Q_LENS, MIXED_KV_LENS), ([1] * 7, DECODE_KV_LENS),
                                                 ([1] * 3, SHORT_DECODE_KV_LENS)],
                         ids=["mixed", "decodes", "short-decodes"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads"), GQA)
@pytest.mark.parametrize("keys_transposed", [False, True], ids=["gather", "in-place-decode"])
def test_reference_matches_sdpa(
    num_q_heads: int, num_kv_heads: int, head_dim: int, q_lens: list[int], kv_lens: list[int], keys_transposed: bool
) -> None:
    """With transposed key tiles (the engine's CPU layout) decodes read the cache in place."""
    batch = make_paged_batch(q_lens, kv_lens, num_q_heads, num_kv_heads, head_dim, torch.float32, DEVICE,
                             keys_transposed=keys_transposed)
    out = paged_attention_ref(*batch.args(), scale=head_dim**-0.5)
    starts = batch.query_start_loc.tolist()
    for i, (k, v) in enumerate(zip(batch.dense_keys, batch.dense_values, strict=True)):
        q = batch.query[starts[i]: starts[i + 1]].transpose(0, 1)
        group = num_q_heads // num_kv_heads
        k = k.transpose(0, 1).repeat_interleave(group, 0)
        v = v.transpose(0, 1).repeat_interleave(group, 0)
        # Bottom-right causal: query j sits at position kv_len - q_len + j.
        mask = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).tril(k.shape[1] - q.shape[1])
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(DEVICE), scale=head_dim**-0.5)
        torch.testing.assert_close(out[starts[i]: starts[i + 1]], expected.transpose(0, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("sliding_window", "soft_cap"), [(None, None), (7, None), (None, 5.0), (20, 30.0)])
@pytest.mark.parametrize("keys_transposed", [False, True], ids=["gather", "in-place-decode"])
def test_reference_window_and_soft_cap(sliding_window: int | None, soft_cap: float | None, keys_transposed: bool) -> None:
    batch = make_paged_batch(MIXED_Q_LENS, MIXED_KV_LENS, 6, 2, 64, torch.float32, DEVICE,
                             keys_transposed=keys_transposed)
    out = paged_attention_ref(*batch.args(), scale=0.125, sliding_window=sliding_window, soft_cap=soft_cap)
    expected = dense_attention(batch, 0.125, sliding_window, soft_cap)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# Every GQA ratio at both head sizes in one pass, and split over four KV slices (flash decoding) at D 64:
# the interpreter runs each split as its own programs, so the full cross product would be slow.
TRITON_CASES = [(hq, hkv, d, 1) for hq, hkv in GQA for d in (64, 128)] + [(hq, hkv, 64, 4) for hq, hkv in GQA]


@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim", "num_kv_splits"), TRITON_CASES)
def test_triton_matches_reference(num_q_heads: int, num_kv_heads: int, head_dim: int, num_kv_splits: int) -> None:
    batch = make_paged_batch(MIXED_Q_LENS, MIXED_KV_LENS, num_q_heads, num_kv_heads, head_dim, torch.float32, DEVICE)
    out = paged_attention_triton(*batch.args(), scale=head_dim**-0.5, num_kv_splits=num_kv_splits)
    assert_close(out, paged_attention_ref(*batch.args(), scale=head_dim**-0.5))


# Triton 3.9's interpreter multiplies bfloat16 tl.dot operands as raw bits; only a GPU can check bf16.
BF16_NEEDS_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="interpreter tl.dot is wrong for bf16")


@pytest.mark.parametrize("num_kv_splits", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=BF16_NEEDS_GPU)])
def test_triton_half_precision(dtype: torch.dtype, num_kv_splits: int) -> None:
    batch = make_paged_batch(MIXED_Q_LENS, MIXED_KV_LENS, 6, 2, 64, dtype, DEVICE)
    out = paged_attention_triton(*batch.args(), scale=0.125, num_kv_splits=num_kv_splits)
    assert out.dtype == dtype
    assert_close(out, paged_attention_ref(*batch.args(), scale=0.125))


@pytest.mark.parametrize("num_kv_splits", [1, 3])
@pytest.mark.parametrize("cache_dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=BF16_NEEDS_GPU)]
)
def test_triton_reads_fp8_caches(dtype: torch.dtype, cache_dtype: torch.dtype, num_kv_splits: int) -> None:
    """kv_cache_dtype=fp8: tiles are widened to the query's dtype as they load; the reference widens the
    gathered K/V the same way."""
    batch = make_paged_batch(MIXED_Q_LENS, MIXED_KV_LENS, 6, 2, 64, cache_dtype, DEVICE)
    batch = dataclasses.replace(batch, query=batch.query.to(dtype))
    out = paged_attention_triton(*batch.args(), scale=0.125, num_kv_splits=num_kv_splits)
    assert out.dtype == dtype
    assert_close(out, paged_attention_ref(*batch.args(), scale=0.125))


@pytest.mark.parametrize(("sliding_window", "soft_cap", "num_kv_splits"), [(7, None, 1), (None, 5.0, 2), (20, 30.0, 3)])
def test_triton_window_and_soft_cap(sliding_window: int | None, soft_cap: float | None, num_kv_splits: int) -> None:
    batch = make_paged_batch(MIXED_Q_LENS, MIXED_KV_LENS, 6, 2, 64, torch.float32, DEVICE)
    out = paged_attention_triton(*batch.args(), scale=0.125, sliding_window=sliding_window, soft_cap=soft_cap,
                                 num_kv_splits=num_kv_splits)
    assert_close(out, paged_attention_ref(*batch.args(), scale=0.125, sliding_window=sliding_window,
                                          soft_cap=soft_cap))


@pytest.mark.parametrize(("num_q_heads", "num_kv_heads"), [(2, 2), (5, 1)])
def test_triton_prefill_heavy_batch(num_q_heads: int, num_kv_heads: int) -> None:
    """Long prompts switch the kernel to 64-row query tiles; a decode rides along in the same launch."""
    batch = make_paged_batch([70, 1, 40], [70, 33, 90], num_q_heads, num_kv_heads, 64, torch.float32, DEVICE)
    out = paged_attention_triton(*batch.args(), scale=0.125)
    assert_close(out, paged_attention_ref(*batch.args(), scale=0.125))


@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "num_kv_splits"), [(6, 2, 1), (5, 1, 3)])
def test_triton_explicit_tiles(num_q_heads: int, num_kv_heads: int, num_kv_splits: int) -> None:
    """Tiles a tuning sweep may pick instead of `choose_tiles`'s 16 rows x 64 keys for this batch."""
    batch = make_paged_batch(MIXED_Q_LENS, MIXED_KV_LENS, num_q_heads, num_kv_heads, 64, torch.float32,
                             DEVICE)
    tiles = AttentionTiles(block_m=32, block_n=32, num_warps=4, num_stages=1)
    out = paged_attention_triton(*batch.args(), scale=0.125, num_kv_splits=num_kv_splits, tiles=tiles)
    assert_close(out, paged_attention_ref(*batch.args(), scale=0.125))


@pytest.mark.parametrize(("head_dim", "block_size"), [(80, 16), (96, 32), (64, 8)])
def test_triton_padded_head_dim_and_block_sizes(head_dim: int, block_size: int) -> None:
    batch = make_paged_batch(MIXED_Q_LENS, MIXED_KV_LENS, 4, 2, head_dim, torch.float32, DEVICE,
                             block_size=block_size, num_blocks=4096)
    out = paged_attention_triton(*batch.args(), scale=head_dim**-0.5)
    assert_close(out, paged_attention_ref(*batch.args(), scale=head_dim**-0.5))


def test_ops_dispatches_to_triton(triton_backend: None) -> None:
    batch = make_paged_batch([1, 4], [9, 4], 4, 2, 64, torch.float32, DEVICE)
    out = ops.paged_attention(*batch.args(), scale=0.125)
    assert_close(out, paged_attention_ref(*batch.args(), scale=0.125))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_triton_random_batches(seed: int) -> None:
    """Seed 2 stores the key tiles transposed, as the engine's CPU cache does."""
    """Random mixes of decodes, prompts and chunks: lengths no tile size was chosen to divide."""
    gen = torch.Generator().manual_seed(seed)
    kv_lens = torch.randint(1, 100, (6,), generator=gen).tolist()
    q_lens = [1 if torch.rand(1, generator=gen) < 0.5 else int(torch.randint(1, n + 1, (1,), generator=gen))
              for n in kv_lens]
    batch = make_paged_batch(q_lens, kv_lens, 4, 1, 64, torch.float32, DEVICE, num_blocks=2048, seed=seed,
                             keys_transposed=seed == 2)
    out = paged_attention_triton(*batch.args(), scale=0.125, num_kv_splits=1 + seed % 2)
    assert_close(out, paged_attention_ref(*batch.args(), scale=0.125))


def test_reference_alternates_inference_mode_and_normal_calls() -> None:
    """The engine attends under inference mode, tests and benchmarks outside it, in one process: the
    reference's reused scratch must serve both."""
    batch = make_paged_batch(MIXED_Q_LENS, MIXED_KV_LENS, 4, 2, 64, torch.float32, DEVICE)
    with torch.inference_mode():
        inside = paged_attention_ref(*batch.args(), scale=0.125)
    outside = paged_attention_ref(*batch.args(), scale=0.125)
    assert torch.equal(inside, outside)
