// Decode attention straight from the paged CPU cache (float32 or bfloat16, also under float32 queries, or
// fp8 under either): one pass over each sequence's keys and values per layer for up to 4 query heads of a
// KV head (2 at head_dim 128; a larger group takes a second pass, from cache).
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
// Arithmetic is on 16-float GCC vectors (vector_math.h), whatever the cache's dtype: a bfloat16 or fp8
// cache is widened as it is read (a half or a quarter of float32's bytes to stream, and no copy), and the
// output is rounded to bfloat16 once, as SDPA's does. Compiled for AVX-512, AVX2 and plain x86-64 alike
// and chosen when the library loads, so the build runs on any x86-64 CPU. Block sizes of 16 or 32
// and head sizes of 64 or 128 are compiled; Python sends only those here (`supported` below).
// The torch reference (kernels/paged_attention_ref.py) is the oracle; tests compare the two.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <atomic>
#include <limits>
#include <vector>

#include "paged_attention_checks.h"
#include "vector_math.h"

namespace {

using namespace vector_math;

// Blocks lie anywhere in the pool, where the hardware prefetcher cannot follow, so each row of the tile
// kPrefetchBlocks blocks ahead is asked for as the same row of this one is read, into L2 (locality 2:
// prefetcht1). Into L1 the prefetches take the few L1 miss buffers the loads need: 64 sequences x 310
// positions over 30 layers' caches on the EPYC, one block ahead into L1 read 20 GB/s (float32) and 17.5
// (bfloat16), two ahead into L2 27 and 22 (three ahead: 26.5 and 21).
constexpr int64_t kPrefetchBlocks = 2;
constexpr int kPrefetchLocality = 2;

template <typename T>
ALWAYS_INLINE void prefetch(const T* address) {
  __builtin_prefetch(address, 0, kPrefetchLocality);
}

// Q: the query's and output's element type; C: the cache's (Q, bfloat16 under a float32 Q, or fp8).
template <typename Q, typename C>
struct Item {
  const Q* query;        // [group_size, head_dim]: the KV head's query heads
  Q* out;                // [group_size, head_dim]
  const C* key_tiles;    // the key cache, [blocks, Hkv, head_dim, block_size]
  const C* value_tiles;  // the value cache, [blocks, Hkv, block_size, head_dim]
  const int32_t* block_table;
  int64_t num_kv_heads, kv_head, group_size;
  int64_t kv_len, first_visible;  // positions first_visible .. kv_len - 1 are attended
  float scale;
  float* scores;  // scratch: group_size x (blocks in view x block_size) scores, then group_size x head_dim
};

// fp8 tiles are read a cache line (64 bytes, 16 lanes of 4) at a time, each lane's k-th byte widened after a
// shift (vector_math.h load_packed): reading 16 bytes and zero-extending them took 8 shuffles a vector, and
// left the kernel no faster than over a float32 cache. So a key line holds kDimsPerLine head dims of every
// position of the block, lane j dim j / kLanesPerDim and positions 4 (j % kLanesPerDim) .. + 3; byte k
// of the lanes is multiplied by the query elements of their dims, and the lanes of one position summed once
// per block. A value line holds 64 dims of one position, lane j dims 4j .. 4j + 3.
template <int64_t kBlockSize>
struct PackedKeys {
  static constexpr int64_t kLanesPerDim = kBlockSize / 4, kDimsPerLine = kLanes / kLanesPerDim;
};

typedef float Vec8 __attribute__((vector_size(8 * sizeof(float))));
typedef float Vec4 __attribute__((vector_size(4 * sizeof(float))));

ALWAYS_INLINE Vec8 add_halves(Vec v) {
  return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
}

// The scores of one block's kBlockSize positions, written in position order from sums[k] (position 4i + k
// in the lanes i % kLanesPerDim of sums[k], for each of the line's dims).
template <int64_t kBlockSize>
ALWAYS_INLINE void store_packed_scores(const Vec (&sums)[4], float* scores) {
  if constexpr (kBlockSize == 16) {
    Vec4 s[4];
    for (int64_t k = 0; k < 4; ++k) {
      const Vec8 half = add_halves(sums[k]);
      s[k] = __builtin_shufflevector(half, half, 0, 1, 2, 3) + __builtin_shufflevector(half, half, 4, 5, 6, 7);
    }
    const Vec8 s01 = __builtin_shufflevector(s[0], s[1], 0, 4, 1, 5, 2, 6, 3, 7);
    const Vec8 s23 = __builtin_shufflevector(s[2], s[3], 0, 4, 1, 5, 2, 6, 3, 7);
    store(scores, __builtin_shufflevector(s01, s23, 0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15));
  } else {
    static_assert(kBlockSize == 32);
    Vec8 s[4];
    for (int64_t k = 0; k < 4; ++k) s[k] = add_halves(sums[k]);
    const Vec s01 = __builtin_shufflevector(s[0], s[1], 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    const Vec s23 = __builtin_shufflevector(s[2], s[3], 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    store(scores, __builtin_shufflevector(s01, s23, 0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23));
    store(scores + kLanes, __builtin_shufflevector(s01, s23, 8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31));
  }
}

// Scores of one block for G heads from an fp8 key tile; query_lanes[g][line]: the scaled query elements of
// the line's dims, each repeated over its lanes.
template <typename C, int64_t kBlockSize, int64_t kHeadDim, int64_t G>
ALWAYS_INLINE void packed_key_scores(const C* keys, const C* ahead_keys, const Vec (*query_lanes)[kHeadDim / PackedKeys<kBlockSize>::kDimsPerLine],
                                     float* scores, int64_t width) {
  Vec sums[G][4] = {};
  for (int64_t line = 0; line < kHeadDim / PackedKeys<kBlockSize>::kDimsPerLine; ++line) {
    prefetch(ahead_keys + line * 64);
    const BitsVec packed = load_packed(keys + line * 64);
    for (int64_t k = 0; k < 4; ++k) {
      const Vec x = widen_fp8<C>(packed << (24 - 8 * k));
      for (int64_t g = 0; g < G; ++g) sums[g][k] += query_lanes[g][line] * x;
    }
  }
  for (int64_t g = 0; g < G; ++g) store_packed_scores<kBlockSize>(sums[g], scores + g * width);
}

// Heads q0 .. q0 + G - 1 of the KV head's group, every key and value row loaded (and, from bfloat16,
// widened) once for all G of them: loads and conversions, not multiply-adds, bounded the kernel when each
// head made its own pass. Inlined into attend_kv_head's clones, so it is compiled for each CPU level too.
template <typename Q, typename C, int64_t kBlockSize, int64_t kHeadDim, int64_t G>
ALWAYS_INLINE void attend_heads(const Item<Q, C>& item, int64_t q0) {
  constexpr int64_t block_chunks = kBlockSize / kLanes, dim_chunks = kHeadDim / kLanes;
  const int64_t first_block = item.first_visible / kBlockSize, end_block = (item.kv_len + kBlockSize - 1) / kBlockSize;
  const int64_t width = (end_block - first_block) * kBlockSize;  // scores per query head
  auto tile = [&](int64_t b) { return (static_cast<int64_t>(item.block_table[b]) * item.num_kv_heads + item.kv_head); };

  // The scaled query sits after the scores: each element then feeds a multiply-add straight from memory.
  float* scaled_query = item.scores + item.group_size * width + q0 * kHeadDim;
  for (int64_t i = 0; i < G * kHeadDim; ++i)
    scaled_query[i] = static_cast<float>(item.query[q0 * kHeadDim + i]) * item.scale;
  float* head_scores = item.scores + q0 * width;
  // Over fp8: the scaled query elements of each key line's dims, each repeated over its lanes (PackedKeys).
  using Packed = PackedKeys<kBlockSize>;
  constexpr int64_t key_lines = kHeadDim / Packed::kDimsPerLine;
  Vec query_lanes[is_fp8_type<C> ? G : 1][key_lines];
  if constexpr (is_fp8_type<C>)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t line = 0; line < key_lines; ++line)
        for (int64_t j = 0; j < kLanes; ++j)
          query_lanes[g][line][j] = scaled_query[g * kHeadDim + line * Packed::kDimsPerLine + j / Packed::kLanesPerDim];
  for (int64_t b = first_block; b < end_block; ++b) {
    const C* keys = item.key_tiles + tile(b) * kHeadDim * kBlockSize;
    const C* ahead_keys = item.key_tiles + tile(std::min(b + kPrefetchBlocks, end_block - 1)) * kHeadDim * kBlockSize;
    if constexpr (is_fp8_type<C>) {
      packed_key_scores<C, kBlockSize, kHeadDim, G>(keys, ahead_keys, query_lanes, head_scores + (b - first_block) * kBlockSize,
                                                   width);
      continue;
    }
    Vec acc[G][2][block_chunks] = {};  // even and odd head dims: two chains per head
    for (int64_t d = 0; d < kHeadDim; d += 2) {
      for (int64_t u = 0; u < 2; ++u) {
        for (int64_t c = 0; c < block_chunks; ++c) {
          const int64_t at = (d + u) * kBlockSize + c * kLanes;
          if (at * sizeof(C) % 64 == 0) prefetch(ahead_keys + at);
          const Vec k = load(keys + at);
          for (int64_t g = 0; g < G; ++g) acc[g][u][c] += scaled_query[g * kHeadDim + d + u] * k;
        }
      }
    }
    for (int64_t g = 0; g < G; ++g)
      for (int64_t c = 0; c < block_chunks; ++c)
        store(head_scores + g * width + (b - first_block) * kBlockSize + c * kLanes, acc[g][0][c] + acc[g][1][c]);
  }

  const float hidden = -std::numeric_limits<float>::infinity();
  const int64_t view_start = first_block * kBlockSize;
  float inverse[G];
  for (int64_t g = 0; g < G; ++g) {
    float* scores = head_scores + g * width;
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
    inverse[g] = 1.0f / lane_sum(total);
  }

  // Over fp8, lane j of acc[g][line * 4 + k] sums dim line * 64 + 4j + k (a value line's byte k of each lane).
  Vec acc[G][dim_chunks] = {};
  for (int64_t b = first_block; b < end_block; ++b) {
    const C* values = item.value_tiles + tile(b) * kBlockSize * kHeadDim;
    const C* ahead_values =
        item.value_tiles + tile(std::min(b + kPrefetchBlocks, end_block - 1)) * kBlockSize * kHeadDim;
    const int64_t lo = std::max(item.first_visible, b * kBlockSize), hi = std::min(item.kv_len, (b + 1) * kBlockSize);
    for (int64_t position = lo; position < hi; ++position) {
      const int64_t row = (position - b * kBlockSize) * kHeadDim;
      if constexpr (is_fp8_type<C>) {
        for (int64_t line = 0; line < kHeadDim / 64; ++line) {
          prefetch(ahead_values + row + line * 64);
          const BitsVec packed = load_packed(values + row + line * 64);
          for (int64_t k = 0; k < 4; ++k) {
            const Vec v = widen_fp8<C>(packed << (24 - 8 * k));
            for (int64_t g = 0; g < G; ++g) acc[g][line * 4 + k] += head_scores[g * width + position - view_start] * v;
          }
        }
      } else {
        for (int64_t c = 0; c < dim_chunks; ++c) {
          if ((row + c * kLanes) * sizeof(C) % 64 == 0) prefetch(ahead_values + row + c * kLanes);
          const Vec v = load(values + row + c * kLanes);
          for (int64_t g = 0; g < G; ++g) acc[g][c] += head_scores[g * width + position - view_start] * v;
        }
      }
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    if constexpr (is_fp8_type<C>) {  // back to dim order, once per head
      alignas(64) float dims[kHeadDim];
      for (int64_t c = 0; c < dim_chunks; ++c)
        for (int64_t j = 0; j < kLanes; ++j) dims[c / 4 * 64 + 4 * j + c % 4] = acc[g][c][j];
      for (int64_t c = 0; c < dim_chunks; ++c) acc[g][c] = load(dims + c * kLanes);
    }
    for (int64_t c = 0; c < dim_chunks; ++c) store(item.out + (q0 + g) * kHeadDim + c * kLanes, acc[g][c] * inverse[g]);
  }
}

template <typename Q, typename C, int64_t kBlockSize, int64_t kHeadDim>
CPU_CLONES void attend_kv_head(const Item<Q, C>& item) {
  // Heads per pass: the value accumulators (heads x head_dim / 16 vectors) stay within 16 of the 32 AVX-512
  // registers.
  constexpr int64_t max_heads = 256 / kHeadDim;
  for (int64_t q0 = 0; q0 < item.group_size; q0 += max_heads) {
    switch (std::min(max_heads, item.group_size - q0)) {
      case 1: attend_heads<Q, C, kBlockSize, kHeadDim, 1>(item, q0); break;
      case 2: attend_heads<Q, C, kBlockSize, kHeadDim, 2>(item, q0); break;
      case 3: if constexpr (max_heads >= 3) attend_heads<Q, C, kBlockSize, kHeadDim, 3>(item, q0); break;
      default: if constexpr (max_heads >= 4) attend_heads<Q, C, kBlockSize, kHeadDim, 4>(item, q0); break;
    }
  }
}

template <typename Q, typename C>
using Kernel = void (*)(const Item<Q, C>&);

template <typename Q, typename C>
Kernel<Q, C> kernel_for(int64_t block_size, int64_t head_dim) {
  if (block_size == 16 && head_dim == 64) return attend_kv_head<Q, C, 16, 64>;
  if (block_size == 16 && head_dim == 128) return attend_kv_head<Q, C, 16, 128>;
  if (block_size == 32 && head_dim == 64) return attend_kv_head<Q, C, 32, 64>;
  if (block_size == 32 && head_dim == 128) return attend_kv_head<Q, C, 32, 128>;
  return nullptr;
}

// Every dtype pair is compiled for the same shapes.
bool supported(int64_t block_size, int64_t head_dim) { return kernel_for<float, float>(block_size, head_dim) != nullptr; }

template <typename Q, typename C>
void attend_all(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                const at::Tensor& value_cache, const at::Tensor& sequences, const at::Tensor& query_start_loc,
                const at::Tensor& seq_lens, const at::Tensor& block_tables, double scale, int64_t sliding_window) {
  const int64_t num_kv_heads = key_cache.size(1), block_size = key_cache.size(2), head_dim = key_cache.size(3);
  const Kernel<Q, C> kernel = kernel_for<Q, C>(block_size, head_dim);
  const int64_t group_size = query.size(1) / num_kv_heads;
  const int64_t items = sequences.numel() * num_kv_heads;
  const int64_t* seqs = sequences.data_ptr<int64_t>();
  const int32_t* starts = query_start_loc.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const Q* queries = query.data_ptr<Q>();
  Q* outs = out.data_ptr<Q>();
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
      kernel({queries + offset, outs + offset, key_cache.data_ptr<C>(), value_cache.data_ptr<C>(),
              tables + seq * block_tables.stride(0), num_kv_heads, kv_head, group_size, kv_len, first,
              static_cast<float>(scale), scratch.data()});
    }
  });
}

void paged_decode(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                  const at::Tensor& value_cache, const at::Tensor& sequences, const at::Tensor& query_start_loc,
                  const at::Tensor& seq_lens, const at::Tensor& block_tables, double scale, int64_t sliding_window) {
  paged_attention_checks::check_tensors("paged_decode", supported, out, query, key_cache, value_cache, sequences,
                                        query_start_loc, seq_lens, block_tables);
  paged_attention_checks::check_sequences(query, key_cache, sequences, query_start_loc, seq_lens, block_tables,
                                          [](const int32_t*, int64_t) -> int64_t { return 1; });
  with_element_types(query.scalar_type(), key_cache.scalar_type(), [&](auto element, auto cache_element) {
    attend_all<decltype(element), decltype(cache_element)>(out, query, key_cache, value_cache, sequences,
                                                           query_start_loc, seq_lens, block_tables, scale,
                                                           sliding_window);
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
