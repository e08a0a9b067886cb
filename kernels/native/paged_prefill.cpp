// Prefill attention straight from the paged CPU cache (float32 or bfloat16, also a bfloat16 cache under float32
// queries, or an fp8 cache under either): the query rows of every
// sequence that brings more than one token (a whole prompt, a chunk of one, a prompt after a prefix-cache
// hit) attend causally over the sequence's keys and values where they lie, with no gathered copy.
//
// Flash-attention style. Work items are (sequence, KV head, tile of up to kTilePositions query positions),
// handed out from a shared counter, costliest first (a tile's cost grows with its position), so that the
// threads of ATen's pool finish together. An item's rows are its positions times the KV head's query
// heads; they walk the keys in chunks of kChunkKeys:
//   scores  rows x chunk keys, a register tile of (up to 6) rows x (chunk) keys at a time from the key
//           tiles that the CPU cache stores transposed ([head_dim, block_size]): a query element, broadcast,
//           times one contiguous row of block_size keys;
//   mask    keys after a row's position (causal) or before its sliding window get -inf;
//   softmax online: each row keeps its running maximum and sum, and its output accumulator is rescaled
//           when the maximum grows;
//   output  a register tile of rows x head_dim accumulates the probability-weighted value rows
//           ([block_size, head_dim] tiles).
// Arithmetic is on 16-float GCC vectors (vector_math.h) whatever the cache's dtype; the output is rounded
// once, as SDPA's is. Compiled for AVX-512, AVX2 and plain x86-64 and chosen when the library loads, for
// the block and head sizes paged_decode.cpp compiles. The torch reference (kernels/paged_attention_ref.py)
// is the oracle; tests compare the two.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "paged_attention_checks.h"
#include "vector_math.h"

namespace {

using namespace vector_math;

// Query positions per work item: rows = positions x query heads per KV head (32 ran no faster).
constexpr int64_t kTilePositions = 16;
// Keys per chunk of the online softmax: 4 blocks of 16 or 2 of 32. A register tile's score accumulators
// cover the whole chunk (6 rows x 4 vectors); 128 keys spilled them and ran at half the speed.
constexpr int64_t kChunkKeys = 64;

// Q: the query's and output's element type; C: the cache's (Q, bfloat16 under a float32 Q, or fp8).
template <typename Q, typename C>
struct Item {
  const Q* query;  // the tile's first position, its KV head's first query head; rows query_row_stride apart
  Q* out;          // laid out like query
  int64_t query_row_stride;
  const C* key_tiles;    // the key cache, [blocks, Hkv, head_dim, block_size]
  const C* value_tiles;  // the value cache, [blocks, Hkv, block_size, head_dim]
  const int32_t* block_table;
  int64_t num_kv_heads, kv_head, group_size;
  int64_t first_position, num_positions;  // the tile's query positions in the sequence
  int64_t sliding_window;                 // 0: none
  float scale;
};

// Per-thread scratch, sized for the largest tile.
struct Scratch {
  std::vector<float> query;   // rows x head_dim, scaled, float
  std::vector<float> output;  // rows x head_dim, unnormalized
  std::vector<float> scores;  // rows x kChunkKeys
  std::vector<float> maximum, total, rescale;  // per row
  std::vector<float> keys, values;            // an fp8 chunk's tiles, widened
};

// An fp8 tile as float32 in `wide`: widened once per chunk, then read by every register tile of rows like a
// float32 cache's. Widened in each register tile's loads instead, the 8 shuffles a vector cost more than the
// multiply-adds they fed (2.3x the float32 kernel's time).
template <typename C, int64_t kTileSize>
ALWAYS_INLINE const float* widen_tile(const C* tile, float* wide) {
  for (int64_t i = 0; i < kTileSize; i += kLanes) store(wide + i, load(tile + i));
  return wide;
}

// Scores of rows r0 .. r0 + R - 1 against the chunk's keys (kChunkKeys / kBlockSize key tiles): every key
// row loaded once for the R rows, every query element once for the chunk's blocks.
template <typename T, int64_t kBlockSize, int64_t kHeadDim, int64_t R>
ALWAYS_INLINE void chunk_scores(const float* query, const T* const* keys, int64_t num_blocks, float* scores, int64_t r0) {
  constexpr int64_t block_chunks = kBlockSize / kLanes, max_blocks = kChunkKeys / kBlockSize;
  Vec acc[R][max_blocks][block_chunks] = {};
  for (int64_t d = 0; d < kHeadDim; ++d) {
    Vec k[max_blocks][block_chunks];
    for (int64_t b = 0; b < max_blocks; ++b)
      for (int64_t c = 0; c < block_chunks; ++c) k[b][c] = b < num_blocks ? load(keys[b] + d * kBlockSize + c * kLanes) : Vec{};
    for (int64_t r = 0; r < R; ++r) {
      const float q = query[(r0 + r) * kHeadDim + d];
      for (int64_t b = 0; b < max_blocks; ++b)
        for (int64_t c = 0; c < block_chunks; ++c) acc[r][b][c] += q * k[b][c];
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t b = 0; b < max_blocks; ++b)
      for (int64_t c = 0; c < block_chunks; ++c) store(scores + (r0 + r) * kChunkKeys + b * kBlockSize + c * kLanes, acc[r][b][c]);
}

// output[rows r0 .. r0 + R - 1] = output * rescale + probabilities @ the chunk's value rows.
template <typename T, int64_t kBlockSize, int64_t kHeadDim, int64_t R>
ALWAYS_INLINE void chunk_values(const float* probabilities, const float* rescale, const T* const* values, int64_t num_keys,
                                float* output, int64_t r0) {
  constexpr int64_t dim_chunks = kHeadDim / kLanes;
  Vec acc[R][dim_chunks];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < dim_chunks; ++c) acc[r][c] = load(output + (r0 + r) * kHeadDim + c * kLanes) * rescale[r0 + r];
  for (int64_t j = 0; j < num_keys; ++j) {
    const T* row = values[j / kBlockSize] + (j % kBlockSize) * kHeadDim;
    Vec v[dim_chunks];
    for (int64_t c = 0; c < dim_chunks; ++c) v[c] = load(row + c * kLanes);
    for (int64_t r = 0; r < R; ++r) {
      const float p = probabilities[(r0 + r) * kChunkKeys + j];
      for (int64_t c = 0; c < dim_chunks; ++c) acc[r][c] += p * v[c];
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < dim_chunks; ++c) store(output + (r0 + r) * kHeadDim + c * kLanes, acc[r][c]);
}

// Rows per register tile: the accumulators (rows x 64 keys, or rows x head_dim) stay within 24 of the 32
// AVX-512 registers, beside the loaded key or value rows.
template <int64_t kHeadDim>
constexpr int64_t kRowTile = kHeadDim == 64 ? 6 : 3;

// Every row's scores for the chunk, a register tile of rows at a time. (No lambdas here: a lambda is a
// function of its own, compiled for plain x86-64 unless the compiler happens to inline it into the clone.)
template <typename T, int64_t kBlockSize, int64_t kHeadDim>
ALWAYS_INLINE void all_scores(const float* query, const T* const* keys, int64_t num_blocks, float* scores, int64_t rows) {
  constexpr int64_t tile = kRowTile<kHeadDim>;
  int64_t r0 = 0;
  for (; r0 + tile <= rows; r0 += tile) chunk_scores<T, kBlockSize, kHeadDim, tile>(query, keys, num_blocks, scores, r0);
  switch (rows - r0) {
    case 1: chunk_scores<T, kBlockSize, kHeadDim, 1>(query, keys, num_blocks, scores, r0); break;
    case 2: chunk_scores<T, kBlockSize, kHeadDim, 2>(query, keys, num_blocks, scores, r0); break;
    case 3: if constexpr (tile > 3) chunk_scores<T, kBlockSize, kHeadDim, 3>(query, keys, num_blocks, scores, r0); break;
    case 4: if constexpr (tile > 4) chunk_scores<T, kBlockSize, kHeadDim, 4>(query, keys, num_blocks, scores, r0); break;
    case 5: if constexpr (tile > 5) chunk_scores<T, kBlockSize, kHeadDim, 5>(query, keys, num_blocks, scores, r0); break;
    default: break;
  }
}

// Every row's output updated with the chunk's values, a register tile of rows at a time.
template <typename T, int64_t kBlockSize, int64_t kHeadDim>
ALWAYS_INLINE void all_values(const float* probabilities, const float* rescale, const T* const* values, int64_t num_keys,
                              float* output, int64_t rows) {
  constexpr int64_t tile = kRowTile<kHeadDim>;
  int64_t r0 = 0;
  for (; r0 + tile <= rows; r0 += tile)
    chunk_values<T, kBlockSize, kHeadDim, tile>(probabilities, rescale, values, num_keys, output, r0);
  switch (rows - r0) {
    case 1: chunk_values<T, kBlockSize, kHeadDim, 1>(probabilities, rescale, values, num_keys, output, r0); break;
    case 2: chunk_values<T, kBlockSize, kHeadDim, 2>(probabilities, rescale, values, num_keys, output, r0); break;
    case 3: if constexpr (tile > 3) chunk_values<T, kBlockSize, kHeadDim, 3>(probabilities, rescale, values, num_keys, output, r0); break;
    case 4: if constexpr (tile > 4) chunk_values<T, kBlockSize, kHeadDim, 4>(probabilities, rescale, values, num_keys, output, r0); break;
    case 5: if constexpr (tile > 5) chunk_values<T, kBlockSize, kHeadDim, 5>(probabilities, rescale, values, num_keys, output, r0); break;
    default: break;
  }
}

template <typename Q, typename C, int64_t kBlockSize, int64_t kHeadDim>
CPU_CLONES void attend_tile(const Item<Q, C>& item, Scratch& scratch) {
  constexpr int64_t blocks_per_chunk = kChunkKeys / kBlockSize, kTileSize = kHeadDim * kBlockSize;
  // What the register tiles read: the cache where it lies, or an fp8 chunk's tiles widened into scratch.
  using Rows = std::conditional_t<is_fp8_type<C>, float, C>;
  if constexpr (is_fp8_type<C>) {
    scratch.keys.resize(blocks_per_chunk * kTileSize);
    scratch.values.resize(blocks_per_chunk * kTileSize);
  }
  const int64_t group = item.group_size, rows = item.num_positions * group;
  // Row r is query head r % group at position first_position + r / group.
  scratch.query.resize(rows * kHeadDim);
  scratch.output.assign(rows * kHeadDim, 0.0f);
  scratch.scores.resize(rows * kChunkKeys);
  scratch.maximum.assign(rows, -std::numeric_limits<float>::infinity());
  scratch.total.assign(rows, 0.0f);
  scratch.rescale.resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const Q* source = item.query + (r / group) * item.query_row_stride + (r % group) * kHeadDim;
    for (int64_t d = 0; d < kHeadDim; ++d) scratch.query[r * kHeadDim + d] = static_cast<float>(source[d]) * item.scale;
  }
  const int64_t last_position = item.first_position + item.num_positions - 1;
  const int64_t first_key = item.sliding_window > 0 ? std::max<int64_t>(0, item.first_position - item.sliding_window + 1) : 0;
  const float hidden = -std::numeric_limits<float>::infinity();

  for (int64_t chunk_start = first_key / kChunkKeys * kChunkKeys; chunk_start <= last_position; chunk_start += kChunkKeys) {
    const int64_t chunk_end = std::min(chunk_start + kChunkKeys, last_position + 1);
    const int64_t first_block = chunk_start / kBlockSize, num_blocks = (chunk_end - chunk_start + kBlockSize - 1) / kBlockSize;
    const Rows* keys[blocks_per_chunk];
    const Rows* values[blocks_per_chunk];
    for (int64_t b = 0; b < num_blocks; ++b) {
      const int64_t tile = static_cast<int64_t>(item.block_table[first_block + b]) * item.num_kv_heads + item.kv_head;
      const C* key_tile = item.key_tiles + tile * kTileSize;
      const C* value_tile = item.value_tiles + tile * kTileSize;
      if constexpr (is_fp8_type<C>) {
        keys[b] = widen_tile<C, kTileSize>(key_tile, scratch.keys.data() + b * kTileSize);
        values[b] = widen_tile<C, kTileSize>(value_tile, scratch.values.data() + b * kTileSize);
      } else {
        keys[b] = key_tile;
        values[b] = value_tile;
      }
    }
    all_scores<Rows, kBlockSize, kHeadDim>(scratch.query.data(), keys, num_blocks, scratch.scores.data(), rows);
    const int64_t num_keys = chunk_end - chunk_start;
    for (int64_t r = 0; r < rows; ++r) {
      float* scores = scratch.scores.data() + r * kChunkKeys;
      const int64_t position = item.first_position + r / group;
      // Visible keys of this row in the chunk: [lo, hi).
      const int64_t lo = std::max<int64_t>(0, (item.sliding_window > 0 ? position - item.sliding_window + 1 : 0) - chunk_start);
      const int64_t hi = std::min<int64_t>(num_keys, position + 1 - chunk_start);
      if (hi <= lo) {  // nothing visible here: the row's state stays as it is
        std::fill(scores, scores + kChunkKeys, 0.0f);
        scratch.rescale[r] = 1.0f;
        continue;
      }
      std::fill(scores, scores + lo, hidden);
      std::fill(scores + hi, scores + kChunkKeys, hidden);
      Vec top = splat(hidden);
      for (int64_t i = 0; i < kChunkKeys; i += kLanes) {
        const Vec s = load(scores + i);
        top = s > top ? s : top;
      }
      const float maximum = std::max(scratch.maximum[r], lane_max(top));
      Vec sum = {};
      for (int64_t i = 0; i < kChunkKeys; i += kLanes) {
        const Vec e = exp_nonpositive(load(scores + i) - maximum);
        store(scores + i, e);
        sum += e;
      }
      // The first visible chunk rescales nothing (the accumulator is zero; exp(-inf) would be 0 too).
      scratch.rescale[r] = exp_nonpositive(splat(scratch.maximum[r] - maximum))[0];
      scratch.total[r] = scratch.total[r] * scratch.rescale[r] + lane_sum(sum);
      scratch.maximum[r] = maximum;
    }
    all_values<Rows, kBlockSize, kHeadDim>(scratch.scores.data(), scratch.rescale.data(), values, num_keys,
                                           scratch.output.data(), rows);
  }
  for (int64_t r = 0; r < rows; ++r) {
    Q* target = item.out + (r / group) * item.query_row_stride + (r % group) * kHeadDim;
    const float inverse = 1.0f / scratch.total[r];
    for (int64_t c = 0; c < kHeadDim; c += kLanes) store(target + c, load(scratch.output.data() + r * kHeadDim + c) * inverse);
  }
}

template <typename Q, typename C>
using Kernel = void (*)(const Item<Q, C>&, Scratch&);

template <typename Q, typename C>
Kernel<Q, C> kernel_for(int64_t block_size, int64_t head_dim) {
  if (block_size == 16 && head_dim == 64) return attend_tile<Q, C, 16, 64>;
  if (block_size == 16 && head_dim == 128) return attend_tile<Q, C, 16, 128>;
  if (block_size == 32 && head_dim == 64) return attend_tile<Q, C, 32, 64>;
  if (block_size == 32 && head_dim == 128) return attend_tile<Q, C, 32, 128>;
  return nullptr;
}

// Every dtype pair is compiled for the same shapes.
bool supported(int64_t block_size, int64_t head_dim) { return kernel_for<float, float>(block_size, head_dim) != nullptr; }

struct Tile {
  int64_t seq, kv_head, query_row, first_position, num_positions, cost;  // query_row: first_position's row
};

template <typename Q, typename C>
void attend_all(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& value_cache,
                const at::Tensor& sequences, const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                const at::Tensor& block_tables, double scale, int64_t sliding_window) {
  const int64_t num_kv_heads = key_cache.size(1), block_size = key_cache.size(2), head_dim = key_cache.size(3);
  const Kernel<Q, C> kernel = kernel_for<Q, C>(block_size, head_dim);
  const int64_t group_size = query.size(1) / num_kv_heads;
  const int64_t* seqs = sequences.data_ptr<int64_t>();
  const int32_t* starts = query_start_loc.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  std::vector<Tile> tiles;
  for (int64_t i = 0; i < sequences.numel(); ++i) {
    const int64_t seq = seqs[i], kv_len = lens[seq], q_len = starts[seq + 1] - starts[seq];
    for (int64_t first = 0; first < q_len; first += kTilePositions) {
      const int64_t position = kv_len - q_len + first, count = std::min(kTilePositions, q_len - first);
      const int64_t span = sliding_window > 0 ? std::min<int64_t>(position + count, sliding_window + count) : position + count;
      for (int64_t h = 0; h < num_kv_heads; ++h) tiles.push_back({seq, h, starts[seq] + first, position, count, span * count});
    }
  }
  // Costliest first: the last items handed out are the cheap ones, so the threads end together.
  std::stable_sort(tiles.begin(), tiles.end(), [](const Tile& a, const Tile& b) { return a.cost > b.cost; });
  const Q* queries = query.data_ptr<Q>();
  Q* outs = out.data_ptr<Q>();
  const C* key_tiles = key_cache.data_ptr<C>();
  const C* value_tiles = value_cache.data_ptr<C>();
  const int64_t row_stride = query.stride(0);
  const int64_t items = static_cast<int64_t>(tiles.size());
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), items);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    Scratch scratch;
    for (int64_t index = next.fetch_add(1); index < items; index = next.fetch_add(1)) {
      const Tile& t = tiles[index];
      const int64_t offset = t.query_row * row_stride + t.kv_head * group_size * head_dim;
      kernel({queries + offset, outs + offset, row_stride, key_tiles, value_tiles,
              tables + t.seq * block_tables.stride(0), num_kv_heads, t.kv_head, group_size, t.first_position,
              t.num_positions, sliding_window, static_cast<float>(scale)},
             scratch);
    }
  });
}

void paged_prefill(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                   const at::Tensor& value_cache, const at::Tensor& sequences, const at::Tensor& query_start_loc,
                   const at::Tensor& seq_lens, const at::Tensor& block_tables, double scale, int64_t sliding_window) {
  paged_attention_checks::check_tensors("paged_prefill", supported, out, query, key_cache, value_cache, sequences,
                                        query_start_loc, seq_lens, block_tables);
  paged_attention_checks::check_sequences(query, key_cache, sequences, query_start_loc, seq_lens, block_tables,
                                          [](const int32_t* starts, int64_t seq) -> int64_t { return starts[seq + 1] - starts[seq]; });
  with_element_types(query.scalar_type(), key_cache.scalar_type(), [&](auto element, auto cache_element) {
    attend_all<decltype(element), decltype(cache_element)>(out, query, key_cache, value_cache, sequences, query_start_loc,
                                                           seq_lens, block_tables, scale, sliding_window);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tritonllm_cpu, m) {
  m.def(
      "paged_prefill(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, Tensor sequences, "
      "Tensor query_start_loc, Tensor seq_lens, Tensor block_tables, float scale, int sliding_window) -> ()");
  m.def("paged_prefill_supports(int block_size, int head_dim) -> bool", supported);
}

TORCH_LIBRARY_IMPL(tritonllm_cpu, CPU, m) { m.impl("paged_prefill", paged_prefill); }
