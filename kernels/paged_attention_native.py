"""Attention over the paged CPU cache in C++, float32 or bfloat16: the CPU path of `kernels.paged_attention_ref`
when the native library is built.

  * decodes (one query token): kernels/native/paged_decode.cpp, in place of `kernels.paged_decode_in_place`
    (float32) or gathering the K/V for SDPA (bfloat16, fp8). Decoding 64 sequences of ~310 tokens with
    SmolLM2's heads on 2 cores (EPYC), each layer's cache read cold: ~1.5 ms a layer in float32 (3.3 ms for
    the embedding_bag path), ~0.86 ms in bfloat16; on a 2-core Zen 5 (the cache on huge pages, blocks
    shuffled), float32 queries: 0.76-0.89 ms over a float32 cache, 0.45 over bfloat16, 0.49-0.55 over fp8
    e4m3 (bound by widening the bytes, not by reading them).
  * prefills (more than one query token: a prompt, a chunk of one, a prompt after a prefix-cache hit):
    kernels/native/paged_prefill.cpp, in place of gathering each sequence's K/V for SDPA (causal for a
    whole prompt, an explicit mask otherwise). One layer of SmolLM2 on 2 cores: a 512-token prompt 4.1 ->
    2.0 ms (float32), 8 prompts of 32-512 tokens 14.8 -> 6.9 ms, a 512-token chunk after 1,500 cached
    tokens 18.8 -> 12.2 ms; bfloat16 alike. 8 prompts of 32-512 tokens on a 2-core Zen 5: 3.0-3.1 ms over a
    float32 cache, 3.3-3.5 over bfloat16 or fp8 (fp8 tiles widened once per 64-key chunk: 6.8 ms when every
    register tile widened them again).

Both read the cache where it lies, keep a block's scores in registers and need no per-step index arrays.
Both also take a bfloat16 cache under float32 queries, and an fp8 cache under either (EngineConfig.kv_cache_dtype):
the cache is widened as it is read, the query, softmax and output stay in the query's dtype.
"""

from __future__ import annotations

import functools

import torch

from kernels import native_library
from kernels.paged_decode_in_place import keys_transposed


def native_attention_supported(
    query: torch.Tensor,  # [T, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    metadata: tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # query_start_loc, seq_lens, block_tables
) -> bool:
    """Whether the library is loaded and compiled for this cache's block and head size, the query and both
    caches are float32 or bfloat16 alike (or the caches bfloat16 under a float32 query), the key tiles
    stored transposed and contiguous and the values contiguous (the engine's CPU cache, engine.kv_cache),
    and the step's metadata is what it reads (int32 with contiguous rows, as the engine builds it). The
    query is made contiguous by the caller."""
    num_blocks, num_kv_heads, block_size, head_dim = key_cache.shape
    query_start_loc, seq_lens, block_tables = metadata
    return (
        query.device.type == "cpu"
        and key_cache.dtype == value_cache.dtype
        and native_library.supports_cache(query.dtype, key_cache.dtype)
        and keys_transposed(key_cache, value_cache)
        and key_cache.stride(0) == num_kv_heads * block_size * head_dim
        and all(tensor.dtype == torch.int32 for tensor in metadata)
        and query_start_loc.is_contiguous()
        and seq_lens.is_contiguous()
        and block_tables.stride(1) == 1
        and _compiled_for(block_size, head_dim)
    )


@functools.cache
def _compiled_for(block_size: int, head_dim: int) -> bool:
    """Asked once per shape: every layer of every step asks again."""
    if not native_library.load():
        return False
    kernels = torch.ops.tritonllm_cpu
    return bool(kernels.paged_decode_supports(block_size, head_dim)) and bool(
        kernels.paged_prefill_supports(block_size, head_dim)
    )


def attend_native(
    out: torch.Tensor,  # [T, Hq, D] contiguous, written at the given sequences' query rows
    query: torch.Tensor,  # [T, Hq, D] contiguous
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D], tiles stored transposed
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D], contiguous
    decodes: torch.Tensor | None,  # [n] int64 indices of the sequences that bring one query token
    prefills: torch.Tensor | None,  # [m] int64 indices of those that bring more
    query_start_loc: torch.Tensor,  # [S + 1] int32
    seq_lens: torch.Tensor,  # [S] int32
    block_tables: torch.Tensor,  # [S, max_blocks] int32
    scale: float,
    sliding_window: int | None,
) -> None:
    metadata = (query_start_loc, seq_lens, block_tables, scale, sliding_window or 0)
    if decodes is not None:
        torch.ops.tritonllm_cpu.paged_decode(out, query, key_cache, value_cache, decodes, *metadata)
    if prefills is not None:
        torch.ops.tritonllm_cpu.paged_prefill(out, query, key_cache, value_cache, prefills, *metadata)
