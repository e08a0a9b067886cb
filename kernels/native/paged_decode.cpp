// Decode attention straight from the paged float32 CPU cache: one pass over each sequence's keys and
// values per layer, every query head of a KV head served by the same pass.
//
// Work items are (sequence, KV head) pairs, handed out one at a time from a shared counter so that long
// and short sequences balance across the threads of ATen's pool. Each item:
//   scores  every (query head, position) of the blocks in view, from the key tiles that the CPU cache
//           stores transposed ([head_dim, block_size]): a query element times one contiguous row of
//           block_size keys, so a block's scores build up in registers along the head dimension;
//   softmax over each query head's scores, positions outside the window (a last block's stale tail,
//           before a sliding window) set to exactly zero;
//   output  the probability-weighted sum of the value rows ([block_size, head_dim] tiles), written to
//           the query heads' rows of `out`.
// Arithmetic is on 16-float GCC vectors (vector_math.h), compiled for AVX-512, AVX2 and plain x86-64 alike
// and chosen when the library loads, so the build runs on any x86-64 CPU. Block sizes of 16 or 32
// and head sizes of 64 or 128 are compiled; Python sends only those here (`supported` below).
// The torch reference (kernels/paged_attention_ref.py) is the oracle; tests compare the two.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <atomic>
#include <limits>
#include <vector>

#include "vector_math.h"

namespace {

using namespace vector_math;

struct Item {
  const float* query;        // [group_size, head_dim]: the KV head's query heads
  float* out;                // [group_size, head_dim]
  const float* key_tiles;    // the key cache, [blocks, Hkv, head_dim, block_size]
  const float* value_tiles;  // the value cache, [blocks, Hkv, block_size, head_dim]
  const int32_t* block_table;
  int64_t num_kv_heads, kv_head, group_size;
  int64_t kv_len, first_visible;  // positions first_visible .. kv_len - 1 are attended
  float scale;
  float* scores;  // scratch: group_size x (blocks in view x block_size) scores, then group_size x head_dim
};

template <int64_t kBlockSize, int64_t kHeadDim>
CPU_CLONES void attend_kv_head(const Item& item) {
  constexpr int64_t block_chunks = kBlockSize / kLanes, dim_chunks = kHeadDim / kLanes;
  const int64_t first_block = item.first_visible / kBlockSize, end_block = (item.kv_len + kBlockSize - 1) / kBlockSize;
  const int64_t width = (end_block - first_block) * kBlockSize;  // scores per query head
  auto tile = [&](int64_t b) { return (static_cast<int64_t>(item.block_table[b]) * item.num_kv_heads + item.kv_head); };

  // The scaled query sits after the scores: each element then feeds a multiply-add straight from memory.
  float* scaled_query = item.scores + item.group_size * width;
  for (int64_t i = 0; i < item.group_size * kHeadDim; ++i) scaled_query[i] = item.query[i] * item.scale;
  for (int64_t b = first_block; b < end_block; ++b) {
    const float* keys = item.key_tiles + tile(b) * kHeadDim * kBlockSize;
    for (int64_t q = 0; q < item.group_size; ++q) {
      const float* query = scaled_query + q * kHeadDim;
      Vec acc[4][block_chunks] = {};  // four partial sums: independent chains of multiply-adds
      for (int64_t d = 0; d < kHeadDim; d += 4) {
        for (int64_t u = 0; u < 4; ++u) {
          for (int64_t c = 0; c < block_chunks; ++c) acc[u][c] += query[d + u] * load(keys + (d + u) * kBlockSize + c * kLanes);
        }
      }
      float* scores = item.scores + q * width + (b - first_block) * kBlockSize;
      for (int64_t c = 0; c < block_chunks; ++c) store(scores + c * kLanes, acc[0][c] + acc[1][c] + acc[2][c] + acc[3][c]);
    }
  }

  const float hidden = -std::numeric_limits<float>::infinity();
  const int64_t view_start = first_block * kBlockSize;
  for (int64_t q = 0; q < item.group_size; ++q) {
    float* scores = item.scores + q * width;
    std::fill(scores, scores + (item.first_visible - view_start), hidden);
    std::fill(scores + (item.kv_len - view_start), scores + width, hidden);
    Vec top = splat(hidden);
    for (int64_t i = 0; i < width; i += kLanes) {
      const Vec s = load(scores + i);
      top = s > top ? s : top;
    }
    const float maximum = lane_max(top);
    Vec total = {};
    for (int64_t i = 0; i < width; i += kLanes) {
      const Vec e = exp_nonpositive(load(scores + i) - maximum);
      store(scores + i, e);
      total += e;
    }
    const float inverse = 1.0f / lane_sum(total);

    Vec acc[2][dim_chunks] = {};  // even and odd positions: two chains
    for (int64_t b = first_block; b < end_block; ++b) {
      const float* values = item.value_tiles + tile(b) * kBlockSize * kHeadDim;
      const int64_t lo = std::max(item.first_visible, b * kBlockSize), hi = std::min(item.kv_len, (b + 1) * kBlockSize);
      int64_t position = lo;
      for (; position + 1 < hi; position += 2) {
        const float w0 = scores[position - view_start], w1 = scores[position + 1 - view_start];
        const float* row = values + (position - b * kBlockSize) * kHeadDim;
        for (int64_t c = 0; c < dim_chunks; ++c) {
          acc[0][c] += w0 * load(row + c * kLanes);
          acc[1][c] += w1 * load(row + kHeadDim + c * kLanes);
        }
      }
      if (position < hi) {
        const float w = scores[position - view_start];
        const float* row = values + (position - b * kBlockSize) * kHeadDim;
        for (int64_t c = 0; c < dim_chunks; ++c) acc[0][c] += w * load(row + c * kLanes);
      }
    }
    for (int64_t c = 0; c < dim_chunks; ++c) store(item.out + q * kHeadDim + c * kLanes, (acc[0][c] + acc[1][c]) * inverse);
  }
}

using Kernel = void (*)(const Item&);

Kernel kernel_for(int64_t block_size, int64_t head_dim) {
  if (block_size == 16 && head_dim == 64) return attend_kv_head<16, 64>;
  if (block_size == 16 && head_dim == 128) return attend_kv_head<16, 128>;
  if (block_size == 32 && head_dim == 64) return attend_kv_head<32, 64>;
  if (block_size == 32 && head_dim == 128) return attend_kv_head<32, 128>;
  return nullptr;
}

bool supported(int64_t block_size, int64_t head_dim) { return kernel_for(block_size, head_dim) != nullptr; }

void paged_decode(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                  const at::Tensor& value_cache, const at::Tensor& sequences, const at::Tensor& query_start_loc,
                  const at::Tensor& seq_lens, const at::Tensor& block_tables, double scale, int64_t sliding_window) {
  TORCH_CHECK(query.dim() == 3 && query.is_contiguous() && query.scalar_type() == at::kFloat,
              "query must be a contiguous float32 [T, Hq, D] tensor");
  TORCH_CHECK(out.sizes() == query.sizes() && out.is_contiguous() && out.scalar_type() == at::kFloat,
              "out must be a contiguous float32 tensor shaped like query");
  TORCH_CHECK(key_cache.dim() == 4 && key_cache.scalar_type() == at::kFloat, "key_cache must be float32 [N, Hkv, bs, D]");
  const int64_t num_kv_heads = key_cache.size(1), block_size = key_cache.size(2), head_dim = key_cache.size(3);
  const Kernel kernel = kernel_for(block_size, head_dim);
  TORCH_CHECK(kernel != nullptr, "no native decode for block_size ", block_size, " and head_dim ", head_dim);
  TORCH_CHECK(query.size(1) % num_kv_heads == 0 && query.size(2) == head_dim,
              "query heads must be a multiple of the KV heads, with the cache's head_dim");
  TORCH_CHECK(key_cache.stride(2) == 1 && key_cache.stride(3) == block_size && key_cache.stride(1) == block_size * head_dim &&
                  key_cache.stride(0) == num_kv_heads * block_size * head_dim,
              "key_cache tiles must be stored transposed: [N, Hkv, D, bs] contiguous");
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes() && value_cache.is_contiguous() && value_cache.scalar_type() == at::kFloat,
              "value_cache must be a contiguous float32 tensor shaped like key_cache");
  TORCH_CHECK(sequences.scalar_type() == at::kLong && sequences.is_contiguous(), "sequences must be contiguous int64");
  TORCH_CHECK(query_start_loc.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt &&
                  block_tables.scalar_type() == at::kInt && query_start_loc.is_contiguous() && seq_lens.is_contiguous() &&
                  block_tables.dim() == 2 && block_tables.stride(1) == 1,
              "query_start_loc, seq_lens and block_tables must be int32 with contiguous rows");

  const int64_t group_size = query.size(1) / num_kv_heads;
  const int64_t items = sequences.numel() * num_kv_heads;
  const int64_t* seqs = sequences.data_ptr<int64_t>();
  const int32_t* starts = query_start_loc.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const float* queries = query.data_ptr<float>();
  float* outs = out.data_ptr<float>();
  // Every index the kernel follows, checked before any is read: the torch reference raises on bad
  // metadata, and this must not read past a tensor instead.
  const int64_t num_seqs = seq_lens.numel(), num_blocks = key_cache.size(0);
  TORCH_CHECK(query_start_loc.numel() == num_seqs + 1 && block_tables.size(0) == num_seqs,
              "query_start_loc needs one entry more than seq_lens, block_tables one row per sequence");
  for (int64_t i = 0; i < sequences.numel(); ++i) {
    const int64_t seq = seqs[i];
    TORCH_CHECK(seq >= 0 && seq < num_seqs, "decode sequence ", seq, " out of range");
    TORCH_CHECK(starts[seq] >= 0 && starts[seq] < query.size(0), "sequence ", seq, "'s query row out of range");
    const int64_t kv_len = lens[seq], used_blocks = (kv_len + block_size - 1) / block_size;
    TORCH_CHECK(kv_len >= 1 && used_blocks <= block_tables.size(1), "sequence ", seq, " has ", kv_len,
                " tokens: not between 1 and its block table's ", block_tables.size(1) * block_size);
    for (int64_t b = 0; b < used_blocks; ++b) {
      const int32_t block = tables[seq * block_tables.stride(0) + b];
      TORCH_CHECK(block >= 0 && block < num_blocks, "block id ", block, " outside the cache's ", num_blocks);
    }
  }

  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), items);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    std::vector<float> scratch;
    for (int64_t index = next.fetch_add(1); index < items; index = next.fetch_add(1)) {
      const int64_t seq = seqs[index / num_kv_heads], kv_head = index % num_kv_heads;
      const int64_t kv_len = lens[seq];
      const int64_t first = sliding_window > 0 ? std::max<int64_t>(0, kv_len - sliding_window) : 0;
      scratch.resize(group_size * (kv_len + 2 * block_size + head_dim));
      const int64_t offset = starts[seq] * query.stride(0) + kv_head * group_size * head_dim;
      kernel({queries + offset, outs + offset, key_cache.data_ptr<float>(), value_cache.data_ptr<float>(),
              tables + seq * block_tables.stride(0), num_kv_heads, kv_head, group_size, kv_len, first,
              static_cast<float>(scale), scratch.data()});
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tritonllm_cpu, m) {
  m.def(
      "paged_decode(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, Tensor sequences, "
      "Tensor query_start_loc, Tensor seq_lens, Tensor block_tables, float scale, int sliding_window) -> ()");
  m.def("paged_decode_supports(int block_size, int head_dim) -> bool", supported);
}

TORCH_LIBRARY_IMPL(tritonllm_cpu, CPU, m) { m.impl("paged_decode", paged_decode); }
