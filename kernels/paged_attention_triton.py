"""Triton unified paged attention over a varlen batch: prefill, chunked prefill and decode in one launch.

Each program owns one KV head and a tile of BLOCK_M rows, where a row is (query token, query head of that
KV head's group): BLOCK_M // G consecutive tokens of one sequence times the G heads that share the KV head,
so K/V tiles are loaded once per group and any GQA ratio works. Programs find their sequence by binary
search over query_start_loc, so the grid is an upper bound the host computes without reading the batch.
With NUM_SPLITS > 1 (flash decoding) each program also owns a slice of the KV range and writes a
normalised partial output plus its log-sum-exp; `_merge_splits_kernel` combines the slices.
The torch reference with the same signature is `kernels.paged_attention_ref.paged_attention_ref`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.native_library import FP8_DTYPES

_MAX_SPLITS = 16
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _find_seq(query_start_loc_ptr, num_seqs, pid, BLOCK_Q: tl.constexpr):
    """Sequence whose query tiles include tile pid; sequence i's tiles start at qsl[i] // BLOCK_Q + i."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_tile = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_tile <= pid:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _paged_attention_kernel(
    out_ptr,  # [T, Hq, D] query dtype if NUM_SPLITS == 1, else [NUM_SPLITS, T, Hq, D] float32 partials
    lse_ptr,  # [NUM_SPLITS, T, Hq] float32 log2-sum-exp2 per partial row (unused if NUM_SPLITS == 1)
    q_ptr,  # [T, Hq, D]
    k_cache_ptr,  # [num_blocks, Hkv, BLOCK_SIZE, D], any strides
    v_cache_ptr,  # [num_blocks, Hkv, BLOCK_SIZE, D], any strides
    query_start_loc_ptr,  # [S + 1] int32
    seq_lens_ptr,  # [S] int32
    block_tables_ptr,  # [S, max_blocks] int32
    num_seqs,
    scale,  # softmax scale on q.k
    soft_cap,  # cap on raw scaled scores (used if USE_SOFT_CAP)
    sliding_window,  # keys within this many positions of the query, itself included (if USE_WINDOW)
    stride_q_t, stride_q_h,
    stride_k_b, stride_k_h, stride_k_s, stride_k_d,
    stride_v_b, stride_v_h, stride_v_s, stride_v_d,
    stride_bt_s,
    stride_o_split, stride_o_t, stride_o_h,
    stride_lse_split, stride_lse_t,
    GROUP_SIZE: tl.constexpr,  # query heads per KV head
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,  # next power of two >= HEAD_DIM
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    BLOCK_M: tl.constexpr,  # rows per program: BLOCK_Q tokens x GROUP_SIZE heads, padded
    BLOCK_Q: tl.constexpr,  # query tokens per program (BLOCK_M // GROUP_SIZE)
    BLOCK_N: tl.constexpr,  # keys per inner iteration
    NUM_SPLITS: tl.constexpr,
    USE_SOFT_CAP: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" keeps float32 products exact; "tf32" elsewhere
):
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq = _find_seq(query_start_loc_ptr, num_seqs, pid, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    q_tile = pid - (q_start // BLOCK_Q + seq)
    if q_tile * BLOCK_Q >= q_len:
        return
    kv_len = tl.load(seq_lens_ptr + seq)
    context = kv_len - q_len  # tokens cached before this step's queries

    rows = tl.arange(0, BLOCK_M)
    q_local = q_tile * BLOCK_Q + rows // GROUP_SIZE  # token index within the sequence's queries
    head = kv_head * GROUP_SIZE + rows % GROUP_SIZE
    row_valid = (rows // GROUP_SIZE < BLOCK_Q) & (q_local < q_len)
    q_pos = context + q_local  # [BLOCK_M] absolute position of each row's token
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_valid = dims < HEAD_DIM

    q_offs = (q_start + q_local)[:, None] * stride_q_t + head[:, None] * stride_q_h + dims[None, :]
    q = tl.load(q_ptr + q_offs, mask=row_valid[:, None] & dim_valid[None, :], other=0.0)  # [BLOCK_M, D]

    # KV range this program needs: up to its last token (causal), from its first token's window.
    last_pos = tl.minimum(context + (q_tile + 1) * BLOCK_Q, kv_len)
    first_pos = 0
    if USE_WINDOW:
        first_pos = tl.maximum(context + q_tile * BLOCK_Q - sliding_window + 1, 0)
    first_tile = first_pos // BLOCK_N
    num_tiles = tl.cdiv(last_pos, BLOCK_N) - first_tile
    tiles_per_split = tl.cdiv(num_tiles, NUM_SPLITS)
    tile_lo = first_tile + split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, first_tile + num_tiles)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    cols = tl.arange(0, BLOCK_N)
    for tile in range(tile_lo, tile_hi):
        k_pos = tile * BLOCK_N + cols  # [BLOCK_N]
        k_in = k_pos < kv_len
        block = tl.load(block_tables_ptr + seq * stride_bt_s + k_pos // BLOCK_SIZE, mask=k_in, other=0)
        block = block.to(tl.int64)  # block * stride overflows int32 for large pools
        slot = k_pos % BLOCK_SIZE
        k_offs = (block[None, :] * stride_k_b + kv_head * stride_k_h + slot[None, :] * stride_k_s
                  + dims[:, None] * stride_k_d)
        k = tl.load(k_cache_ptr + k_offs, mask=k_in[None, :] & dim_valid[:, None], other=0.0)  # [D, BLOCK_N]
        k = k.to(q.dtype)  # an fp8 cache (kv_cache_dtype) is widened to the query's dtype; free otherwise
        s = tl.dot(q, k, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        s = s * scale
        if USE_SOFT_CAP:
            # cap * tanh(s / cap) with tanh(y) = 1 - 2 / (exp(2y) + 1): no tanh in the portable tl.math.
            s = soft_cap * (1.0 - 2.0 / (tl.exp(2.0 * s / soft_cap) + 1.0))
        s = s * LOG2E  # the online softmax runs in base 2
        visible = k_in[None, :] & (k_pos[None, :] <= q_pos[:, None])
        if USE_WINDOW:
            visible = visible & (k_pos[None, :] > q_pos[:, None] - sliding_window)
        s = tl.where(visible, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_offs = (block[:, None] * stride_v_b + kv_head * stride_v_h + slot[:, None] * stride_v_s
                  + dims[None, :] * stride_v_d)
        v = tl.load(v_cache_ptr + v_offs, mask=k_in[:, None] & dim_valid[None, :], other=0.0)  # [BLOCK_N, D]
        v = v.to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_offs = split * stride_o_split + (q_start + q_local)[:, None] * stride_o_t + head[:, None] * stride_o_h
    tl.store(out_ptr + o_offs + dims[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_valid[:, None] & dim_valid[None, :])
    if NUM_SPLITS > 1:
        lse = m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i))  # m_i is -inf where the split saw no key
        lse_offs = split * stride_lse_split + (q_start + q_local) * stride_lse_t + head
        tl.store(lse_ptr + lse_offs, lse, mask=row_valid)


@triton.jit
def _merge_splits_kernel(
    out_ptr,  # [T, Hq, D]
    partial_ptr,  # [NUM_SPLITS, T, Hq, D] float32
    lse_ptr,  # [NUM_SPLITS, T, Hq] float32, base 2; -inf where a split saw no key
    stride_o_t, stride_o_h,
    stride_p_split, stride_p_t, stride_p_h,
    stride_lse_split, stride_lse_t,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,  # next power of two >= NUM_SPLITS
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
):
    token = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_DIM_PAD)
    lse = tl.load(lse_ptr + splits * stride_lse_split + token * stride_lse_t + head,
                  mask=splits < NUM_SPLITS, other=float("-inf"))  # [SPLITS_PAD]
    weight = tl.exp2(lse - tl.max(lse, axis=0))  # every row has a split that saw its own key
    p_offs = splits[:, None] * stride_p_split + token * stride_p_t + head * stride_p_h + dims[None, :]
    partial = tl.load(partial_ptr + p_offs, mask=(splits < NUM_SPLITS)[:, None] & (dims < HEAD_DIM)[None, :],
                      other=0.0)  # [SPLITS_PAD, D]
    out = tl.sum(partial * weight[:, None], axis=0) / tl.sum(weight, axis=0)
    tl.store(out_ptr + token * stride_o_t + head * stride_o_h + dims, out.to(out_ptr.dtype.element_ty),
             mask=dims < HEAD_DIM)


@dataclass(frozen=True)
class AttentionTiles:
    """Launch shape of `_paged_attention_kernel`: `choose_tiles` picks one per step, a tuning sweep
    (`kernels.tune_attention`) passes its own. It changes speed only, never the result beyond rounding."""

    block_m: int  # rows per program (query tokens x heads of one group); raised to the group's power of two
    block_n: int  # keys per inner iteration
    num_warps: int
    num_stages: int  # software-pipelining depth of the K/V loads (Triton's NVIDIA default is 3)


def choose_tiles(num_tokens: int, num_seqs: int, group_size: int, head_dim: int) -> AttentionTiles:
    """Decode-heavy steps use the smallest tile tl.dot allows (16 rows); prefill-heavy steps a taller one,
    so each K/V tile loaded serves more query rows. Heads wider than 128 take 32-key tiles, others 64."""
    block_m = 16 if num_tokens < 16 * num_seqs else 64
    return AttentionTiles(
        block_m=max(block_m, triton.next_power_of_2(group_size)),
        block_n=32 if head_dim > 128 else 64,
        num_warps=4,
        num_stages=2,  # the H200 sweep (kernels.tune_attention): 2 beat Triton's default 3 by 2-7%
    )


def choose_num_splits(num_tokens: int, num_seqs: int, num_kv_heads: int, block_q: int, device: torch.device) -> int:
    """Split the KV range only when the batch alone leaves most SMs idle (small decode batches). A sweep on
    an H200 (kernels.tune_attention) found 32 splits 1.26x faster than this choice (8) at 4 x 16k keys,
    but the same heuristic aiming at 32 measured 1.8x slower in kernels.bench on the next run: left
    as it was until a quieter measurement settles it."""
    programs = (num_tokens // block_q + num_seqs) * num_kv_heads
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    if programs >= num_sms:
        return 1
    return min(_MAX_SPLITS, triton.next_power_of_2(triton.cdiv(2 * num_sms, programs)))


def paged_attention_triton(
    query: torch.Tensor,  # [T, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D], any strides (engine.kv_cache)
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D], any strides
    query_start_loc: torch.Tensor,  # [S + 1] int32
    seq_lens: torch.Tensor,  # [S] int32
    block_tables: torch.Tensor,  # [S, max_blocks] int32
    scale: float,
    *,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    num_kv_splits: int | None = None,  # None: chosen from the batch size; 1 disables flash decoding
    tiles: AttentionTiles | None = None,  # None: `choose_tiles`; set by tuning sweeps
) -> torch.Tensor:
    """Same contract as `paged_attention_ref`; returns [T, Hq, D] in the query's dtype."""
    num_tokens, num_q_heads, head_dim = query.shape
    _, num_kv_heads, block_size, kv_dim = key_cache.shape
    num_seqs = seq_lens.shape[0]
    assert query.dim() == 3 and query.stride(-1) == 1, f"query must be [T, Hq, D] with unit last stride: {query.shape} {query.stride()}"
    assert key_cache.shape == value_cache.shape and kv_dim == head_dim, (
        f"caches must be [num_blocks, Hkv, block_size, D={head_dim}]: key {tuple(key_cache.shape)} value {tuple(value_cache.shape)}"
    )
    assert key_cache.dtype == value_cache.dtype and key_cache.dtype in (query.dtype, *FP8_DTYPES), (
        f"the caches must be of the query's dtype or fp8 alike: {query.dtype} {key_cache.dtype} {value_cache.dtype}"
    )
    assert num_q_heads % num_kv_heads == 0, f"Hq={num_q_heads} is not a multiple of Hkv={num_kv_heads}"
    assert query_start_loc.shape == (num_seqs + 1,) and block_tables.shape[0] == num_seqs, (
        f"query_start_loc {tuple(query_start_loc.shape)} / block_tables {tuple(block_tables.shape)} "
        f"do not match seq_lens {tuple(seq_lens.shape)}"
    )
    for name, t in (("query_start_loc", query_start_loc), ("seq_lens", seq_lens), ("block_tables", block_tables)):
        assert t.dtype == torch.int32, f"{name} must be int32, got {t.dtype}"
    assert block_tables.stride(-1) == 1, f"block_tables must have unit last stride: {block_tables.stride()}"
    assert sliding_window is None or sliding_window > 0, f"sliding_window must be positive: {sliding_window}"

    group_size = num_q_heads // num_kv_heads
    tiles = tiles or choose_tiles(num_tokens, num_seqs, group_size, head_dim)
    assert all(n >= 16 and n & (n - 1) == 0 for n in (tiles.block_m, tiles.block_n)), (
        f"tile sizes must be powers of two >= 16 (tl.dot, tl.arange): {tiles}"
    )
    # A program holds at least one token's whole group of heads: a tile smaller than the group is widened.
    block_m = max(tiles.block_m, triton.next_power_of_2(group_size))
    block_q = block_m // group_size
    num_splits = num_kv_splits or choose_num_splits(num_tokens, num_seqs, num_kv_heads, block_q, query.device)
    out = torch.empty_like(query)
    if num_tokens == 0:
        return out
    if num_splits == 1:
        partial, lse = out, out.new_empty(0, dtype=torch.float32)
        o_strides = (0, out.stride(0), out.stride(1))
        lse_strides = (0, 0)
    else:
        partial = query.new_empty(num_splits, num_tokens, num_q_heads, head_dim, dtype=torch.float32)
        lse = query.new_empty(num_splits, num_tokens, num_q_heads, dtype=torch.float32)
        o_strides = (partial.stride(0), partial.stride(1), partial.stride(2))
        lse_strides = (lse.stride(0), lse.stride(1))
    grid = (num_tokens // block_q + num_seqs, num_kv_heads, num_splits)
    _paged_attention_kernel[grid](
        out_ptr=partial, lse_ptr=lse, q_ptr=query, k_cache_ptr=key_cache, v_cache_ptr=value_cache,
        query_start_loc_ptr=query_start_loc, seq_lens_ptr=seq_lens, block_tables_ptr=block_tables,
        num_seqs=num_seqs, scale=scale, soft_cap=soft_cap or 1.0,
        sliding_window=sliding_window or 0,
        stride_q_t=query.stride(0), stride_q_h=query.stride(1),
        stride_k_b=key_cache.stride(0), stride_k_h=key_cache.stride(1),
        stride_k_s=key_cache.stride(2), stride_k_d=key_cache.stride(3),
        stride_v_b=value_cache.stride(0), stride_v_h=value_cache.stride(1),
        stride_v_s=value_cache.stride(2), stride_v_d=value_cache.stride(3),
        stride_bt_s=block_tables.stride(0),
        stride_o_split=o_strides[0], stride_o_t=o_strides[1], stride_o_h=o_strides[2],
        stride_lse_split=lse_strides[0], stride_lse_t=lse_strides[1],
        GROUP_SIZE=group_size, HEAD_DIM=head_dim, HEAD_DIM_PAD=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_Q=block_q, BLOCK_N=tiles.block_n,
        NUM_SPLITS=num_splits, USE_SOFT_CAP=soft_cap is not None, USE_WINDOW=sliding_window is not None,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    if num_splits > 1:
        _merge_splits_kernel[(num_tokens, num_q_heads)](
            out_ptr=out, partial_ptr=partial, lse_ptr=lse,
            stride_o_t=out.stride(0), stride_o_h=out.stride(1),
            stride_p_split=partial.stride(0), stride_p_t=partial.stride(1), stride_p_h=partial.stride(2),
            stride_lse_split=lse.stride(0), stride_lse_t=lse.stride(1),
            NUM_SPLITS=num_splits, SPLITS_PAD=triton.next_power_of_2(num_splits),
            HEAD_DIM=head_dim, HEAD_DIM_PAD=triton.next_power_of_2(head_dim),
        )
    return out
