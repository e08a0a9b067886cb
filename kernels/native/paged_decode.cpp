// Decode attention straight from the paged CPU cache (float32 or bfloat16, also under float32 queries, or
// fp8 under either): one pass over each sequence's keys and values per layer for up to 4 query heads of a
// KV head (2 at head_dim 128; a larger group takes a second pass, from cache).
//
// Work items are sequences, with all their KV heads (a (sequence, KV head) pair each when there are too few
// sequences, or one too long, to keep every thread busy to the end), handed out one at a time from a shared
// counter so that long and short sequences balance across the threads of ATen's pool. A block's tiles of every KV head lie side by
// side, so a whole sequence reads 6-12 KB in one stretch per block where one head read 2-4 KB and jumped:
// decoding 64 sequences x 330 tokens of SmolLM2 over 30 cold layers on a 2-core Zen 5, 4-7% less time a
// layer with the blocks shuffled, 13-20% with them in order, 22-27% over fp8; the engine's decode steps of
// 64 sequences 8-10% shorter. Each item:
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

// Blocks lie anywhere in the pool, where the hardware prefetcher cannot follow, so each row of the tiles
// kPrefetchBlocks blocks ahead is asked for as the same row of this one is read, into L2 (locality 2:
// prefetcht1). Into L1 the prefetches take the few L1 miss buffers the loads need: 64 sequences x 310
// positions over 30 layers' caches on the EPYC, a (sequence, KV head) per item, one block ahead into L1
// read 20 GB/s (float32) and 17.5 (bfloat16), two ahead into L2 27 and 22 (three ahead: 26.5 and 21). With
// whole sequences per item (three tiles a block) one block ahead into L2 reads the most on a Zen 5: 0-7%
// more than two ahead, 4 ahead 3-7% less.
constexpr int64_t kPrefetchBlocks = 1;
constexpr int kPrefetchLocality = 2;

template <typename T>
ALWAYS_INLINE void prefetch(const T* address) {
  __builtin_prefetch(address, 0, kPrefetchLocality);
}

// Q: the query's and output's element type; C: the cache's (Q, bfloat16 under a float32 Q, or fp8).
template <typename Q, typename C>
struct Item {
  const Q* query;        // [kv_heads * group_size, head_dim]: the query heads of the item's KV heads
  Q* out;                // [kv_heads * group_size, head_dim]
  const C* key_tiles;    // the key cache, [blocks, Hkv, head_dim, block_size]
  const C* value_tiles;  // the value cache, [blocks, Hkv, block_size, head_dim]
  const int32_t* block_table;
  int64_t num_kv_heads, first_kv_head, kv_heads, group_size;
  int64_t kv_len, first_visible;  // positions first_visible .. kv_len - 1 are attended
  float scale;
  float* scratch;  // per (KV head, query head): scores, scaled query, output sums, inverse, fp8 query lanes
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

// Scores of one block for G heads from an fp8 key tile; query_lanes + (g * key_lines + line) * kLanes: the
// scaled query elements of the line's dims, each repeated over its lanes.
template <typename C, int64_t kBlockSize, int64_t kHeadDim, int64_t G>
ALWAYS_INLINE void packed_key_scores(const C* keys, const C* ahead_keys, const float* query_lanes, float* scores,
                                     int64_t width) {
  constexpr int64_t key_lines = kHeadDim / PackedKeys<kBlockSize>::kDimsPerLine;
  Vec sums[G][4] = {};
  for (int64_t line = 0; line < key_lines; ++line) {
    prefetch(ahead_keys + line * 64);
    const BitsVec packed = load_packed(keys + line * 64);
    for (int64_t k = 0; k < 4; ++k) {
      const Vec x = widen_fp8<C>(packed << (24 - 8 * k));
      for (int64_t g = 0; g < G; ++g) sums[g][k] += load(query_lanes + (g * key_lines + line) * kLanes) * x;
    }
  }
  for (int64_t g = 0; g < G; ++g) store_packed_scores<kBlockSize>(sums[g], scores + g * width);
}

// Heads q0 .. q0 + G - 1 of each of the item's KV heads' groups, every key and value row loaded (and, from
// bfloat16, widened) once for all G of them: loads and conversions, not multiply-adds, bounded the kernel
// when each head made its own pass. A block's tiles of the item's KV heads lie side by side, so each pass
// reads them in one stretch, block after block. Inlined into attend_sequence's clones, so it is compiled
// for each CPU level too.
template <typename Q, typename C, int64_t kBlockSize, int64_t kHeadDim, int64_t G>
ALWAYS_INLINE void attend_heads(const Item<Q, C>& item, int64_t q0) {
  constexpr int64_t block_chunks = kBlockSize / kLanes, dim_chunks = kHeadDim / kLanes;
  constexpr int64_t tile_size = kBlockSize * kHeadDim;
  const int64_t first_block = item.first_visible / kBlockSize, end_block = (item.kv_len + kBlockSize - 1) / kBlockSize;
  const int64_t width = (end_block - first_block) * kBlockSize;  // scores per query head
  const int64_t kv_heads = item.kv_heads;
  // The first of the item's tiles in block b.
  auto tiles = [&](int64_t b) { return (static_cast<int64_t>(item.block_table[b]) * item.num_kv_heads + item.first_kv_head) * tile_size; };

  // Scratch, each for every (KV head, head): the scores, then the scaled queries (each element then feeds
  // a multiply-add straight from memory), the output sums carried from block to block (a pass over one
  // block's tiles needs every head's: more than the registers hold), the inverses of the softmax
  // denominators, and over fp8 the query lanes.
  float* all_scores = item.scratch;
  float* scaled_query = all_scores + kv_heads * G * width;
  float* sums = scaled_query + kv_heads * G * kHeadDim;
  for (int64_t h = 0; h < kv_heads; ++h)
    for (int64_t i = 0; i < G * kHeadDim; ++i)
      scaled_query[h * G * kHeadDim + i] =
          static_cast<float>(item.query[(h * item.group_size + q0) * kHeadDim + i]) * item.scale;
  float* inverse = sums + kv_heads * G * kHeadDim;
  // Over fp8: the scaled query elements of each key line's dims, each repeated over its lanes (PackedKeys).
  using Packed = PackedKeys<kBlockSize>;
  constexpr int64_t key_lines = kHeadDim / Packed::kDimsPerLine;
  float* query_lanes = inverse + kv_heads * G;
  if constexpr (is_fp8_type<C>)
    for (int64_t i = 0; i < kv_heads * G; ++i)
      for (int64_t line = 0; line < key_lines; ++line)
        for (int64_t j = 0; j < kLanes; ++j)
          query_lanes[(i * key_lines + line) * kLanes + j] = scaled_query[i * kHeadDim + line * Packed::kDimsPerLine + j / Packed::kLanesPerDim];

  for (int64_t b = first_block; b < end_block; ++b) {
    const C* block_keys = item.key_tiles + tiles(b);
    const C* ahead_keys = item.key_tiles + tiles(std::min(b + kPrefetchBlocks, end_block - 1));
    for (int64_t h = 0; h < kv_heads; ++h) {
      const C* keys = block_keys + h * tile_size;
      const float* query = scaled_query + h * G * kHeadDim;
      float* scores = all_scores + h * G * width + (b - first_block) * kBlockSize;
      if constexpr (is_fp8_type<C>) {
        packed_key_scores<C, kBlockSize, kHeadDim, G>(keys, ahead_keys + h * tile_size,
                                                     query_lanes + h * G * key_lines * kLanes, scores, width);
        continue;
      }
      Vec acc[G][2][block_chunks] = {};  // even and odd head dims: two chains per head
      for (int64_t d = 0; d < kHeadDim; d += 2) {
        for (int64_t u = 0; u < 2; ++u) {
          for (int64_t c = 0; c < block_chunks; ++c) {
            const int64_t at = (d + u) * kBlockSize + c * kLanes;
            if (at * sizeof(C) % 64 == 0) prefetch(ahead_keys + h * tile_size + at);
            const Vec k = load(keys + at);
            for (int64_t g = 0; g < G; ++g) acc[g][u][c] += query[g * kHeadDim + d + u] * k;
          }
        }
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t c = 0; c < block_chunks; ++c) store(scores + g * width + c * kLanes, acc[g][0][c] + acc[g][1][c]);
    }
  }

  const float hidden = -std::numeric_limits<float>::infinity();
  const int64_t view_start = first_block * kBlockSize;
  for (int64_t i = 0; i < kv_heads * G; ++i) {
    float* scores = all_scores + i * width;
    std::fill(scores, scores + (item.first_visible - view_start), hidden);
    std::fill(scores + (item.kv_len - view_start), scores + width, hidden);
    Vec top = splat(hidden);
    for (int64_t j = 0; j < width; j += kLanes) {
      const Vec s = load(scores + j);
      top = s > top ? s : top;
    }
    const float maximum = lane_max(top);
    Vec total = {};
    for (int64_t j = 0; j < width; j += kLanes) {
      const Vec e = exp_nonpositive(load(scores + j) - maximum);
      store(scores + j, e);
      total += e;
    }
    inverse[i] = 1.0f / lane_sum(total);
  }

  // Over fp8, lane j of acc[g][line * 4 + k] sums dim line * 64 + 4j + k (a value line's byte k of each lane).
  std::fill(sums, sums + kv_heads * G * kHeadDim, 0.0f);
  for (int64_t b = first_block; b < end_block; ++b) {
    const C* block_values = item.value_tiles + tiles(b);
    const C* ahead_block = item.value_tiles + tiles(std::min(b + kPrefetchBlocks, end_block - 1));
    const int64_t lo = std::max(item.first_visible, b * kBlockSize), hi = std::min(item.kv_len, (b + 1) * kBlockSize);
    for (int64_t h = 0; h < kv_heads; ++h) {
      const C* values = block_values + h * tile_size;
      const C* ahead_values = ahead_block + h * tile_size;
      const float* probabilities = all_scores + h * G * width - view_start;
      Vec acc[G][dim_chunks];
      for (int64_t g = 0; g < G; ++g)
        for (int64_t c = 0; c < dim_chunks; ++c) acc[g][c] = load(sums + (h * G + g) * kHeadDim + c * kLanes);
      for (int64_t position = lo; position < hi; ++position) {
        const int64_t row = (position - b * kBlockSize) * kHeadDim;
        if constexpr (is_fp8_type<C>) {
          for (int64_t line = 0; line < kHeadDim / 64; ++line) {
            prefetch(ahead_values + row + line * 64);
            const BitsVec packed = load_packed(values + row + line * 64);
            for (int64_t k = 0; k < 4; ++k) {
              const Vec v = widen_fp8<C>(packed << (24 - 8 * k));
              for (int64_t g = 0; g < G; ++g) acc[g][line * 4 + k] += probabilities[g * width + position] * v;
            }
          }
        } else {
          for (int64_t c = 0; c < dim_chunks; ++c) {
            if ((row + c * kLanes) * sizeof(C) % 64 == 0) prefetch(ahead_values + row + c * kLanes);
            const Vec v = load(values + row + c * kLanes);
            for (int64_t g = 0; g < G; ++g) acc[g][c] += probabilities[g * width + position] * v;
          }
        }
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t c = 0; c < dim_chunks; ++c) store(sums + (h * G + g) * kHeadDim + c * kLanes, acc[g][c]);
    }
  }
  for (int64_t h = 0; h < kv_heads; ++h) {
    for (int64_t g = 0; g < G; ++g) {
      float* sum = sums + (h * G + g) * kHeadDim;
      if constexpr (is_fp8_type<C>) {  // back to dim order, once per head
        alignas(64) float dims[kHeadDim];
        for (int64_t c = 0; c < dim_chunks; ++c)
          for (int64_t j = 0; j < kLanes; ++j) dims[c / 4 * 64 + 4 * j + c % 4] = sum[c * kLanes + j];
        std::copy(dims, dims + kHeadDim, sum);
      }
      Q* out = item.out + (h * item.group_size + q0 + g) * kHeadDim;
      for (int64_t c = 0; c < dim_chunks; ++c) store(out + c * kLanes, load(sum + c * kLanes) * inverse[h * G + g]);
    }
  }
}

template <typename Q, typename C, int64_t kBlockSize, int64_t kHeadDim>
CPU_CLONES void attend_sequence(const Item<Q, C>& item) {
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
  if (block_size == 16 && head_dim == 64) return attend_sequence<Q, C, 16, 64>;
  if (block_size == 16 && head_dim == 128) return attend_sequence<Q, C, 16, 128>;
  if (block_size == 32 && head_dim == 64) return attend_sequence<Q, C, 32, 64>;
  if (block_size == 32 && head_dim == 128) return attend_sequence<Q, C, 32, 128>;
  return nullptr;
}

// Every dtype pair is compiled for the same shapes.
bool supported(int64_t block_size, int64_t head_dim) { return kernel_for<float, float>(block_size, head_dim) != nullptr; }

// Whole sequences per work item once each thread's share of the positions is at least this many times
// the longest sequence: 4 sequences per thread when they are equal.
constexpr int64_t kItemsPerThreadForWholeSequences = 4;

template <typename Q, typename C>
void attend_all(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                const at::Tensor& value_cache, const at::Tensor& sequences, const at::Tensor& query_start_loc,
                const at::Tensor& seq_lens, const at::Tensor& block_tables, double scale, int64_t sliding_window) {
  const int64_t num_kv_heads = key_cache.size(1), block_size = key_cache.size(2), head_dim = key_cache.size(3);
  const Kernel<Q, C> kernel = kernel_for<Q, C>(block_size, head_dim);
  const int64_t group_size = query.size(1) / num_kv_heads;
  const int64_t* seqs = sequences.data_ptr<int64_t>();
  const int32_t* starts = query_start_loc.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const Q* queries = query.data_ptr<Q>();
  Q* outs = out.data_ptr<Q>();
  // Each work item is a sequence's KV heads: all of them when no sequence is longer than a fraction of each
  // thread's share of the positions (so the threads still end together), one otherwise.
  const int64_t workers_wanted = at::get_num_threads();
  int64_t total_len = 0, longest = 0;
  for (int64_t i = 0; i < sequences.numel(); ++i) {
    total_len += lens[seqs[i]];
    longest = std::max<int64_t>(longest, lens[seqs[i]]);
  }
  const bool whole = longest * kItemsPerThreadForWholeSequences * workers_wanted <= total_len;
  const int64_t heads_per_item = whole ? num_kv_heads : 1;
  const int64_t items_per_sequence = num_kv_heads / heads_per_item;
  const int64_t items = sequences.numel() * items_per_sequence;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(workers_wanted, items);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    std::vector<float> scratch;
    for (int64_t index = next.fetch_add(1); index < items; index = next.fetch_add(1)) {
      const int64_t seq = seqs[index / items_per_sequence], first_kv_head = index % items_per_sequence * heads_per_item;
      const int64_t kv_len = lens[seq];
      const int64_t first = sliding_window > 0 ? std::max<int64_t>(0, kv_len - sliding_window) : 0;
      scratch.resize(heads_per_item * group_size * (kv_len + 2 * block_size + 2 * head_dim + 1 + head_dim * block_size / 4));
      const int64_t offset = starts[seq] * query.stride(0) + first_kv_head * group_size * head_dim;
      kernel({queries + offset, outs + offset, key_cache.data_ptr<C>(), value_cache.data_ptr<C>(),
              tables + seq * block_tables.stride(0), num_kv_heads, first_kv_head, heads_per_item, group_size, kv_len,
              first, static_cast<float>(scale), scratch.data()});
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
