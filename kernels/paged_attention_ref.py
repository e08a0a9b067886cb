"""Torch reference for varlen paged attention: the engine's CPU path and the oracle of the Triton kernels.

Decode sequences (one query token each) run as padded batches of similar KV length: sorted longest first,
a batch takes sequences while they are at least 3/4 of its longest, which bounds the padding to a third
(on 2 cores this beat one padded batch, up to 3x on ragged lengths, and one call per sequence), and
while its gathered K/V stay under MAX_GATHER_ROWS rows. Every other sequence (prefill, chunked prefill)
runs alone, so a long prompt never pads the decodes of its step; a whole prompt uses SDPA's causal mode
instead of an explicit mask. SDPA runs in the cache's dtype: its CPU kernel accumulates half types in
float32 itself, and converting the gathered K/V to float32 first added half the attention's own time
(bfloat16 on 2 cores). Grouped-query heads are folded into the query axis instead of repeating K/V.

Everything that depends only on the step's metadata (the batches, their gather indices and masks) is an
`AttentionPlan`, built once per step: every layer passes the same metadata tensors, and rebuilding it
per layer cost about a tenth of a decode step.

Where the cache allows, attention skips all this and reads the cache itself: when the caller asks for
`native` and the C++ library is built for the cache (float32 or bfloat16 with the key tiles stored
transposed, as the engine's CPU cache is), every sequence goes to kernels.paged_attention_native (decodes
and prefills alike); otherwise, for such a float32 cache (`reads_in_place`), decodes go to
kernels.paged_decode_in_place.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import native_library
from kernels.paged_attention_native import attend_native, native_attention_supported
from kernels.paged_decode_in_place import InPlaceDecode, attend_in_place, plan_in_place, reads_in_place

# Most K (and V) rows one decode batch gathers; a larger batch is split. Past this size batching gains
# nothing, and it bounds the gather workspace.
MAX_GATHER_ROWS = 1 << 16


@dataclass(frozen=True)
class KVGather:
    """Which (cache block, KV head) tiles a batch of n sequences reads, as one dense [n, Hkv, kv_len] run
    of rows per sequence and head.

    Table entries past a sequence's last block (padding, maybe another sequence's blocks) are pointed at
    that last block, and the copied rows past the sequence's end are zeroed: they hold whatever a previous
    owner of the block left, possibly inf or NaN, and a masked-out NaN still poisons softmax(..) @ V.
    """

    tiles: torch.Tensor  # [n * Hkv * num_blocks] int64 tiles (block * Hkv + head), in copy order
    stale_rows: torch.Tensor  # [k] int64 rows of the [n * Hkv * num_blocks * block_size] copy to zero
    n: int
    num_blocks: int
    kv_len: int


@dataclass(frozen=True)
class PromptPlan:
    """A whole prompt (nothing cached before this step), attended alone with SDPA's causal mode."""

    start: int  # its first query row
    length: int  # query and KV length alike
    kv: KVGather


@dataclass(frozen=True)
class GroupPlan:
    """Sequences attended as one batch padded to its longest query and KV length."""

    kv: KVGather
    token_idx: torch.Tensor  # [n, Q] query row of each (sequence, query position); padding clamped
    token_valid: torch.Tensor  # [n, Q] bool, real query positions
    out_rows: torch.Tensor  # token_idx[token_valid]
    mask: torch.Tensor  # [n, 1, G * Q, kv_len] bool, True = may attend
    max_q_len: int


@dataclass(frozen=True)
class AttentionPlan:
    prompts: list[PromptPlan]
    groups: list[GroupPlan]
    in_place: list[InPlaceDecode]  # decodes, when the cache `reads_in_place`
    # [n] int64 sequences for the C++ kernels, when they serve the step: those with one query token, and
    # those with more (None where there are none).
    native_decodes: torch.Tensor | None
    native_prefills: torch.Tensor | None


def paged_attention_ref(
    query: torch.Tensor,  # [T, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    query_start_loc: torch.Tensor,  # [S + 1] int32
    seq_lens: torch.Tensor,  # [S] int32, cached + new tokens
    block_tables: torch.Tensor,  # [S, max_blocks] int32
    scale: float,
    *,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    native: bool = False,
) -> torch.Tensor:
    """Causal attention of each sequence's new query tokens over its whole paged KV; returns [T, Hq, D].
    `native`: the C++ kernels may serve it (the engine's CPU path); off, everything is torch."""
    num_tokens, num_q_heads, head_dim = query.shape
    num_kv_heads, block_size = key_cache.shape[1], key_cache.shape[2]
    group_size = num_q_heads // num_kv_heads
    metadata = (query_start_loc, seq_lens, block_tables)
    native = (
        native and soft_cap is None and native_attention_supported(query, key_cache, value_cache, metadata)
    )
    in_place = not native and soft_cap is None and reads_in_place(query, key_cache, value_cache)
    if native:
        query = query.contiguous()  # the C++ kernels write rows of an output shaped (and strided) like it
    settings = (num_tokens, num_kv_heads, group_size, block_size, head_dim, sliding_window, soft_cap is not None,
                in_place, native)  # fmt: skip
    plan = _plans.get(
        (query_start_loc, seq_lens, block_tables),
        settings,
        lambda: plan_paged_attention(
            query_start_loc, seq_lens, block_tables, block_size, num_tokens, num_kv_heads, group_size,
            sliding_window=sliding_window, explicit_scores=soft_cap is not None,
            in_place_head_dim=head_dim if in_place else None, native=native,
        ),
    )  # fmt: skip
    out = torch.empty_like(query)
    for prompt in plan.prompts:
        # A bfloat16 cache under a float32 query, or an fp8 cache (kv_cache_dtype), is widened here; `to` is
        # free otherwise.
        k = gather_kv(key_cache, prompt.kv, 0).to(query.dtype)  # [1, Hkv, L, D]
        v = gather_kv(value_cache, prompt.kv, 1).to(query.dtype)
        q = query[prompt.start : prompt.start + prompt.length].transpose(0, 1).unsqueeze(0)  # [1, Hq, L, D]
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        out[prompt.start : prompt.start + prompt.length] = o[0].transpose(0, 1)
    for group in plan.groups:
        attend_group(out, query, key_cache, value_cache, group, scale, soft_cap)
    for batch in plan.in_place:
        attend_in_place(out, query, key_cache, value_cache, batch, scale)
    attend_native(out, query, key_cache, value_cache, plan.native_decodes, plan.native_prefills, query_start_loc,
                  seq_lens, block_tables, scale, sliding_window)  # fmt: skip
    return out


def plan_paged_attention(
    query_start_loc: torch.Tensor,  # [S + 1] int32
    seq_lens: torch.Tensor,  # [S] int32
    block_tables: torch.Tensor,  # [S, max_blocks] int32
    block_size: int,
    num_tokens: int,
    num_kv_heads: int,
    group_size: int,  # query heads per KV head
    *,
    sliding_window: int | None,
    explicit_scores: bool,  # soft-capping: no SDPA, so prompts take the masked batch path too
    in_place_head_dim: int | None = None,  # set: decode batches read the cache in place (`reads_in_place`)
    native: bool = False,  # every sequence goes to the C++ kernels (`native_attention_supported`)
) -> AttentionPlan:
    """The batches one step's attention runs, with their gather indices and masks."""
    starts = query_start_loc.tolist()
    kv_lens = seq_lens.tolist()
    q_lens = [end - start for start, end in zip(starts[:-1], starts[1:], strict=True)]
    decodes = [i for i, n in enumerate(q_lens) if n == 1]
    if native:
        prefills = [i for i, n in enumerate(q_lens) if n > 1]
        device = seq_lens.device
        return AttentionPlan([], [], [], _indices(decodes, device), _indices(prefills, device))
    in_place: list[InPlaceDecode] = []
    if in_place_head_dim is not None:
        in_place = plan_in_place(
            decodes, query_start_loc, seq_lens, block_tables, num_kv_heads, group_size, block_size,
            in_place_head_dim, sliding_window,
        )  # fmt: skip
        decodes = []
    batches: list[list[int]] = []
    for i in sorted(decodes, key=lambda i: -kv_lens[i]):
        longest = kv_lens[batches[-1][0]] if batches else 0
        if batches and 4 * kv_lens[i] >= 3 * longest and (len(batches[-1]) + 1) * longest <= MAX_GATHER_ROWS:
            batches[-1].append(i)
        else:
            batches.append([i])
    prompts = []
    for i, n in enumerate(q_lens):
        if n > 1 and n == kv_lens[i] and sliding_window is None and not explicit_scores:
            lengths = torch.tensor([n], device=seq_lens.device)
            gather = plan_kv_gather(block_tables[i : i + 1], lengths, n, block_size, num_kv_heads)
            prompts.append(PromptPlan(starts[i], n, gather))
        elif n > 1:
            batches.append([i])
    groups = [
        plan_group(
            query_start_loc, seq_lens, block_tables, torch.tensor(batch, dtype=torch.long, device=seq_lens.device),
            max(q_lens[i] for i in batch), block_size, num_tokens, num_kv_heads, group_size, sliding_window,
        )
        for batch in batches
    ]  # fmt: skip
    return AttentionPlan(prompts, groups, in_place, None, None)


def _indices(sequences: list[int], device: torch.device) -> torch.Tensor | None:
    return torch.tensor(sequences, dtype=torch.int64, device=device) if sequences else None


def plan_group(
    query_start_loc: torch.Tensor,  # [S + 1] int32
    seq_lens: torch.Tensor,  # [S] int32
    block_tables: torch.Tensor,  # [S, max_blocks] int32
    batch: torch.Tensor,  # [n] int64 sequence indices attended as one padded batch
    max_q_len: int,
    block_size: int,
    num_tokens: int,
    num_kv_heads: int,
    group_size: int,
    sliding_window: int | None,
) -> GroupPlan:
    device = seq_lens.device
    starts = query_start_loc.long()[batch]
    q_lens = query_start_loc.long()[batch + 1] - starts
    kv_lens = seq_lens.long()[batch]
    kv_len = int(kv_lens.max())
    n = batch.shape[0]
    j = torch.arange(max_q_len, device=device)
    token_valid = j < q_lens[:, None]  # [n, Q]
    token_idx = (starts[:, None] + j).clamp(max=num_tokens - 1)  # [n, Q]
    # Padded query rows get positions past the end, so they see every real key and never produce NaN.
    q_pos = kv_lens[:, None] - q_lens[:, None] + j  # [n, Q]
    k_pos = torch.arange(kv_len, device=device)
    visible = (k_pos <= q_pos[:, :, None]) & (k_pos < kv_lens[:, None, None])  # [n, Q, L]
    if sliding_window is not None:
        visible &= k_pos > q_pos[:, :, None] - sliding_window
    # The G query heads sharing a KV head are extra query rows (see attend_group): one mask row each.
    mask = visible.unsqueeze(1).expand(n, group_size, max_q_len, kv_len).reshape(n, 1, -1, kv_len)
    return GroupPlan(
        kv=plan_kv_gather(block_tables[batch], kv_lens, kv_len, block_size, num_kv_heads),
        token_idx=token_idx,
        token_valid=token_valid,
        out_rows=token_idx[token_valid],
        mask=mask,
        max_q_len=max_q_len,
    )


def plan_kv_gather(
    block_tables: torch.Tensor,  # [n, >= ceil(kv_len / block_size)] int
    kv_lens: torch.Tensor,  # [n] int64
    kv_len: int,  # max of kv_lens
    block_size: int,
    num_kv_heads: int,
) -> KVGather:
    n = block_tables.shape[0]
    num_blocks = -(-kv_len // block_size)
    last_block = (kv_lens + block_size - 1) // block_size - 1  # [n]
    source = torch.minimum(torch.arange(num_blocks, device=kv_lens.device), last_block[:, None])  # [n, nb]
    blocks = block_tables.long().gather(1, source)
    # Real rows of each copied block: its share of the sequence (the copies of the last block share its).
    real_rows = (kv_lens[:, None] - source * block_size).clamp(max=block_size)  # [n, nb]
    stale = torch.arange(block_size, device=kv_lens.device) >= real_rows[:, :, None]  # [n, nb, block_size]
    heads = torch.arange(num_kv_heads, device=kv_lens.device)
    tiles = blocks[:, None, :] * num_kv_heads + heads[None, :, None]  # [n, Hkv, nb]
    stale = stale.view(n, 1, -1).expand(n, num_kv_heads, num_blocks * block_size)
    return KVGather(tiles.flatten(), stale.flatten().nonzero().squeeze(1), n, num_blocks, kv_len)


class _GatherWorkspace(threading.local):
    """Per-thread scratch that gathered K/V land in, grown on demand and reused by every layer and step.

    A fresh buffer of tens of MB per gather is served by mmap, and faulting its pages in cost more than
    the gather itself (64 decodes over 1,000 tokens on 2 cores: 53 ms fresh against 14 ms reused).
    Decode batches are capped at MAX_GATHER_ROWS rows; a sequence attended alone is not, so the buffers
    grow to the longest such sequence's KV of one layer, which a fresh gather would allocate anyway.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, which: int, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (which, dtype, device)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            # A normal tensor even when first needed under inference mode: an inference tensor could not
            # be written by callers outside it (tests, benchmarks), while inference mode writes normal ones.
            with torch.inference_mode(False):
                buffer = self.buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel]


class _PlanMemo(threading.local):
    """The plan of the metadata tensors last seen, reused while the very same tensor objects (still alive)
    come back with the same settings, as they do for every layer of a step. Metadata is never written
    after it is built (the runner makes new tensors every step), and inference-mode tensors have no
    version counter to check it with."""

    def __init__(self) -> None:
        self.sources: tuple[weakref.ref[torch.Tensor], ...] = ()
        self.settings: tuple[object, ...] = ()
        self.plan: AttentionPlan | None = None

    def get(
        self, tensors: tuple[torch.Tensor, ...], settings: tuple[object, ...], build: Callable[[], AttentionPlan]
    ) -> AttentionPlan:
        same = (
            self.plan is not None
            and len(self.sources) == len(tensors)
            and all(source() is tensor for source, tensor in zip(self.sources, tensors, strict=True))
            and settings == self.settings
        )
        if not same or self.plan is None:
            self.plan = build()
            self.sources = tuple(weakref.ref(tensor) for tensor in tensors)
            self.settings = settings
        return self.plan


_workspace = _GatherWorkspace()
_plans = _PlanMemo()


def gather_kv(cache: torch.Tensor, plan: KVGather, which: int) -> torch.Tensor:
    """The planned sequences' paged KV as one contiguous-per-head [n, Hkv, kv_len, D] view of the thread's
    workspace (`which`: 0 for keys, 1 for values, both alive at once), valid until the next gather into
    the same buffer; rows past a sequence's own length are zeros.

    A head's rows of a block are contiguous in the cache ([num_blocks, Hkv, block_size, D]), so one
    index_select of whole tiles copies them straight into the [.., kv_len, D] layout attention reads best.
    Tiles stored transposed ([D, block_size], the CPU key cache) are copied as they are, then transposed
    into a second buffer.
    """
    num_cache_blocks, num_kv_heads, block_size, head_dim = cache.shape
    tile = block_size * head_dim
    rows = _workspace.get(which, plan.tiles.numel() * tile, cache.dtype, cache.device).view(-1, tile)
    if cache.is_contiguous():
        torch.index_select(cache.view(num_cache_blocks * num_kv_heads, tile), 0, plan.tiles, out=rows)
    else:
        stored = cache.transpose(2, 3)
        assert stored.is_contiguous(), f"cache tiles must be [block_size, D] or [D, block_size]: {cache.stride()}"
        torch.index_select(stored.view(num_cache_blocks * num_kv_heads, tile), 0, plan.tiles, out=rows)
        transposed = rows.view(-1, head_dim, block_size).transpose(1, 2)
        rows = _workspace.get(which + 2, rows.numel(), cache.dtype, cache.device).view(-1, block_size, head_dim)
        rows.copy_(transposed)
    rows = rows.view(-1, head_dim)
    # index_fill has no fp8 kernel; zero is all zero bits in these formats, so their rows are filled as bytes.
    (rows.view(torch.uint8) if rows.dtype in native_library.FP8_DTYPES else rows).index_fill_(0, plan.stale_rows, 0)
    return rows.view(plan.n, num_kv_heads, plan.num_blocks * block_size, head_dim)[:, :, : plan.kv_len]


def attend_group(
    out: torch.Tensor,  # [T, Hq, D], written at the group's query rows
    query: torch.Tensor,  # [T, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    group: GroupPlan,
    scale: float,
    soft_cap: float | None,
) -> None:
    """Attend a group of sequences as one batch padded to its longest query and KV length."""
    _, num_q_heads, head_dim = query.shape
    num_kv_heads = key_cache.shape[1]
    group_size = num_q_heads // num_kv_heads
    n, max_q_len = group.kv.n, group.max_q_len
    # [n, Q, Hq, D] -> [n, Hkv, G * Q, D]: the G query heads sharing a KV head become extra query rows.
    q = query[group.token_idx].view(n, max_q_len, num_kv_heads, group_size, head_dim)
    q = q.permute(0, 2, 3, 1, 4).reshape(n, num_kv_heads, group_size * max_q_len, head_dim)
    k = gather_kv(key_cache, group.kv, 0).to(query.dtype)
    v = gather_kv(value_cache, group.kv, 1).to(query.dtype)
    if soft_cap is None:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=group.mask, scale=scale)
    else:  # explicit float32 scores: SDPA has no soft-capping
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        scores = soft_cap * torch.tanh(scores / soft_cap)
        o = torch.matmul(torch.softmax(scores.masked_fill(~group.mask, float("-inf")), dim=-1), v.float())
    o = o.view(n, num_kv_heads, group_size, max_q_len, head_dim).permute(0, 3, 1, 2, 4)
    out[group.out_rows] = o.reshape(n, max_q_len, num_q_heads, head_dim)[group.token_valid].to(out.dtype)
