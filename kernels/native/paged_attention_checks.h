// Argument checks shared by the paged attention kernels (paged_decode.cpp, paged_prefill.cpp). The torch
// reference raises on bad metadata; a C++ kernel must refuse it too, before reading anything.
#pragma once

#include <ATen/core/Tensor.h>

#include "vector_math.h"

namespace paged_attention_checks {

// The tensors' dtypes and shapes, and the engine's CPU cache layout (key tiles stored transposed).
inline void check_tensors(const char* kernel, bool (*supported)(int64_t, int64_t), const at::Tensor& out,
                          const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& value_cache,
                          const at::Tensor& sequences, const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                          const at::Tensor& block_tables) {
  const at::ScalarType dtype = query.scalar_type();
  TORCH_CHECK(vector_math::is_supported(dtype), kernel, " takes float32 or bfloat16, got ", dtype);
  TORCH_CHECK(query.dim() == 3 && query.is_contiguous(), "query must be a contiguous [T, Hq, D] tensor");
  TORCH_CHECK(out.sizes() == query.sizes() && out.is_contiguous() && out.scalar_type() == dtype,
              "out must be a contiguous tensor shaped like query, of its dtype");
  const at::ScalarType cache_dtype = key_cache.scalar_type();
  TORCH_CHECK(key_cache.dim() == 4 && vector_math::is_supported_cache(dtype, cache_dtype),
              "key_cache must be [N, Hkv, bs, D] of query's dtype, bfloat16 under a float32 query, or fp8, got ", cache_dtype);
  const int64_t num_kv_heads = key_cache.size(1), block_size = key_cache.size(2), head_dim = key_cache.size(3);
  TORCH_CHECK(supported(block_size, head_dim), kernel, " is not compiled for block_size ", block_size, " and head_dim ",
              head_dim);
  TORCH_CHECK(query.size(1) % num_kv_heads == 0 && query.size(2) == head_dim,
              "query heads must be a multiple of the KV heads, with the cache's head_dim");
  TORCH_CHECK(key_cache.stride(2) == 1 && key_cache.stride(3) == block_size && key_cache.stride(1) == block_size * head_dim &&
                  key_cache.stride(0) == num_kv_heads * block_size * head_dim,
              "key_cache tiles must be stored transposed: [N, Hkv, D, bs] contiguous");
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes() && value_cache.is_contiguous() && value_cache.scalar_type() == cache_dtype,
              "value_cache must be a contiguous tensor shaped like key_cache, of its dtype");
  TORCH_CHECK(sequences.scalar_type() == at::kLong && sequences.is_contiguous(), "sequences must be contiguous int64");
  TORCH_CHECK(query_start_loc.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt &&
                  block_tables.scalar_type() == at::kInt && query_start_loc.is_contiguous() && seq_lens.is_contiguous() &&
                  block_tables.dim() == 2 && block_tables.stride(1) == 1,
              "query_start_loc, seq_lens and block_tables must be int32 with contiguous rows");
  TORCH_CHECK(query_start_loc.numel() == seq_lens.numel() + 1 && block_tables.size(0) == seq_lens.numel(),
              "query_start_loc needs one entry more than seq_lens, block_tables one row per sequence");
}

// Every index the kernel follows for each of `sequences`: its query rows (`query_rows` of them from its
// start: 1 for a decode, all its new tokens for a prefill), its length (at least its query rows, at most its
// block table) and its blocks.
template <typename QueryRows>
void check_sequences(const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& sequences,
                     const at::Tensor& query_start_loc, const at::Tensor& seq_lens, const at::Tensor& block_tables,
                     QueryRows&& query_rows) {
  const int64_t* seqs = sequences.data_ptr<int64_t>();
  const int32_t* starts = query_start_loc.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int64_t num_seqs = seq_lens.numel(), num_blocks = key_cache.size(0), block_size = key_cache.size(2);
  for (int64_t i = 0; i < sequences.numel(); ++i) {
    const int64_t seq = seqs[i];
    TORCH_CHECK(seq >= 0 && seq < num_seqs, "sequence ", seq, " out of range");
    const int64_t rows = query_rows(starts, seq), kv_len = lens[seq];
    TORCH_CHECK(starts[seq] >= 0 && rows >= 1 && starts[seq] + rows <= query.size(0), "sequence ", seq,
                "'s query rows out of range");
    const int64_t used_blocks = (kv_len + block_size - 1) / block_size;
    TORCH_CHECK(kv_len >= rows && used_blocks <= block_tables.size(1), "sequence ", seq, " has ", kv_len,
                " tokens: not between its ", rows, " query tokens and its block table's ", block_tables.size(1) * block_size);
    for (int64_t b = 0; b < used_blocks; ++b) {
      const int32_t block = tables[seq * block_tables.stride(0) + b];
      TORCH_CHECK(block >= 0 && block < num_blocks, "block id ", block, " outside the cache's ", num_blocks);
    }
  }
}

}  // namespace paged_attention_checks
