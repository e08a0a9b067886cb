// Projections at decode batch sizes, float32 or bfloat16: out[M, N] = x[M, K] @ weight[N, K]^T (+ bias),
// with AVX-512 from a copy of the weight packed for it (`small_m_linear_pack`). float32 multiplies with
// FMAs (16 lanes, one product each), bfloat16 with AVX-512 BF16 (vdpbf16ps: 16 float32 lanes, each adding
// two bfloat16 products).
//
// Layout: the weight's rows (output features) in blocks of 16, each block [K / S][16][S] with S the
// features one lane multiplies at a step (1 for float32, 2 for bfloat16): for every step of input
// features, those of each of the block's 16 rows, one 64-byte line. One line multiplied by x's features
// of that step broadcast to every lane adds their products to each of 16 outputs, so an output tile
// needs no horizontal sums, and one line serves every x row of a pass.
//
// Work: blocks in tiles of kTileBlocks (64 outputs); a tile is multiplied by x's rows kRowsPerPass at a
// time (6 x 4 float32 accumulators in registers, 4 weight lines and a broadcast a step: oneDNN's blocked
// layout needs as much arithmetic; dot products along the plain weight's K load two 64-byte vectors for
// every two products). The first pass streams the tile from memory and asks for the tile its thread
// will likely take next into L2 (into L1 the prefetches would take the miss buffers the loads need; see
// paged_decode.cpp); later passes find it in L2. Threads take tiles from a shared counter rather than a
// fixed share each: a thread the OS preempts (the server's other processes share the cores) leaves its
// tiles to the others instead of keeping them all waiting for it at the end of the product.
// bfloat16, all 121 projections of SmolLM2-135M on the 2-core Zen 4, weights cold, 1 / 16 / 32 / 64 /
// 128 / 256 rows: 8.6-8.9 / 14.7 / 24.5 / 43.5 / 82.5 / 163 ms against oneDNN's 13.5-14.2 / 17.8-18.5 /
// 28.0 / 47.7 / 86.7 / 164; at 512 rows oneDNN's 335 beats its 344. A tile is 64 x K weights: measured
// for K up to 1,536; from K ~ 2,000 (float32) or ~ 4,000 (bfloat16) it no longer stays in a 1 MB L2 and
// later passes would read it from memory again.
// Products accumulate in float32; the bias is added in float32 and a bfloat16 output rounded once (to
// nearest even), as oneDNN does. Needs AVX-512 (`small_m_linear_supported`), and AVX512_BF16 for
// bfloat16; the oracle is F.linear (tests/kernels).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
// One target for both element types: the float32 path uses no BF16 instruction (only its intrinsics
// would emit one), so it runs wherever AVX512F/BW/VL do.
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

namespace {

// Output features per block: one float32 zmm of outputs.
constexpr int64_t kBlock = 16;
constexpr int64_t kTileBlocks = 4;
constexpr int64_t kRowsPerPass = 6;
// How many of its own tiles ahead a thread prefetches.
constexpr int64_t kPrefetchTiles = 2;

// Input features a lane multiplies at a step: one float32, or a pair of bfloat16.
template <typename T>
constexpr int64_t kStep = std::is_same_v<T, float> ? 1 : 2;

bool supported_cpu(bool bfloat16) {
#if defined(__x86_64__)
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
  return avx512 && (!bfloat16 || __builtin_cpu_supports("avx512bf16"));
#else
  return false;
#endif
}

#if defined(__x86_64__)

// Adds x[row, features of `step`] times one weight line to acc.
AVX512_TARGET inline __m512 multiply_add(__m512 acc, const float* x_row, int64_t step, const float* line) {
  return _mm512_fmadd_ps(_mm512_set1_ps(x_row[step]), _mm512_loadu_ps(line), acc);
}

AVX512_TARGET inline __m512 multiply_add(__m512 acc, const uint16_t* x_row, int64_t step, const uint16_t* line) {
  int32_t features;  // x[row, 2 * step : 2 * step + 2], both bfloat16 in one lane
  std::memcpy(&features, x_row + 2 * step, sizeof(features));
  return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(features), (__m512bh)_mm512_loadu_si512(line));
}

AVX512_TARGET inline __m512 load_bias(const float* bias) { return _mm512_loadu_ps(bias); }

AVX512_TARGET inline __m512 load_bias(const uint16_t* bias) {  // bfloat16 -> float32: the high half
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

AVX512_TARGET inline void store(float* out, __m512 v) { _mm512_storeu_ps(out, v); }

AVX512_TARGET inline void store(uint16_t* out, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), (__m256i)_mm512_cvtneps_pbh(v));
}

// out rows m0 .. m0 + MR - 1, blocks b0 .. b0 + R - 1; `ahead` (or null): the tile to prefetch. T is
// float, or uint16_t holding bfloat16 bits.
template <typename T, int64_t MR, int64_t R>
AVX512_TARGET inline void tile(const T* x, int64_t m0, int64_t K, const T* packed, int64_t b0, const T* bias,
                               T* out, int64_t N, const T* ahead) {
  __m512 acc[MR][R];
  for (int64_t m = 0; m < MR; ++m)
    for (int64_t r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  const int64_t block_elements = K * kBlock;
  const int64_t line_elements = kStep<T> * kBlock;
  const T* blocks = packed + b0 * block_elements;
  for (int64_t step = 0; step < K / kStep<T>; ++step) {
    const T* lines[R];
    for (int64_t r = 0; r < R; ++r) {
      const int64_t offset = r * block_elements + step * line_elements;
      if (ahead != nullptr) _mm_prefetch(reinterpret_cast<const char*>(ahead + offset), _MM_HINT_T1);
      lines[r] = blocks + offset;
    }
    for (int64_t m = 0; m < MR; ++m)
      for (int64_t r = 0; r < R; ++r) acc[m][r] = multiply_add(acc[m][r], x + (m0 + m) * K, step, lines[r]);
  }
  for (int64_t r = 0; r < R; ++r) {
    const __m512 b = bias != nullptr ? load_bias(bias + (b0 + r) * kBlock) : _mm512_setzero_ps();
    for (int64_t m = 0; m < MR; ++m) store(out + (m0 + m) * N + (b0 + r) * kBlock, _mm512_add_ps(acc[m][r], b));
  }
}

// Every row of x against blocks b0 .. b0 + R - 1: the first pass streams them (and prefetches `ahead`,
// or null), the others find them in L2.
template <typename T, int64_t R>
AVX512_TARGET void all_rows(const T* x, int64_t M, int64_t K, const T* packed, int64_t b0, const T* bias, T* out,
                            int64_t N, const T* ahead) {
  int64_t m0 = 0;
  for (; m0 + kRowsPerPass <= M; m0 += kRowsPerPass)
    tile<T, kRowsPerPass, R>(x, m0, K, packed, b0, bias, out, N, m0 == 0 ? ahead : nullptr);
  const T* first_ahead = m0 == 0 ? ahead : nullptr;
  switch (M - m0) {
    case 1: tile<T, 1, R>(x, m0, K, packed, b0, bias, out, N, first_ahead); break;
    case 2: tile<T, 2, R>(x, m0, K, packed, b0, bias, out, N, first_ahead); break;
    case 3: tile<T, 3, R>(x, m0, K, packed, b0, bias, out, N, first_ahead); break;
    case 4: tile<T, 4, R>(x, m0, K, packed, b0, bias, out, N, first_ahead); break;
    case 5: tile<T, 5, R>(x, m0, K, packed, b0, bias, out, N, first_ahead); break;
    default: break;
  }
}

template <typename T>
void multiply(const T* x, int64_t M, int64_t K, const T* packed, int64_t num_blocks, const T* bias, T* out) {
  const int64_t N = num_blocks * kBlock;
  const int64_t num_tiles = (num_blocks + kTileBlocks - 1) / kTileBlocks;
  std::atomic<int64_t> next_tile{0};
  // One call per thread (at most one per tile); the range it is given is ignored: the counter deals out tiles.
  at::parallel_for(0, num_tiles, 1, [&](int64_t, int64_t) {
    const int64_t stride = at::get_num_threads();
    for (int64_t t = next_tile.fetch_add(1); t < num_tiles; t = next_tile.fetch_add(1)) {
      const int64_t b0 = t * kTileBlocks, blocks = std::min(kTileBlocks, num_blocks - b0);
      // With every thread taking tiles in turn, this thread's next ones are likely `stride` apart. Only a
      // whole tile is prefetched: the lines asked for follow this tile's block count.
      const int64_t ahead_tile = t + kPrefetchTiles * stride;
      const bool ahead_whole = (ahead_tile + 1) * kTileBlocks <= num_blocks;
      const T* ahead = ahead_whole ? packed + ahead_tile * kTileBlocks * K * kBlock : nullptr;
      switch (blocks) {
        case 1: all_rows<T, 1>(x, M, K, packed, b0, bias, out, N, ahead); break;
        case 2: all_rows<T, 2>(x, M, K, packed, b0, bias, out, N, ahead); break;
        case 3: all_rows<T, 3>(x, M, K, packed, b0, bias, out, N, ahead); break;
        default: all_rows<T, kTileBlocks>(x, M, K, packed, b0, bias, out, N, ahead); break;
      }
    }
  });
}

#endif

bool is_packable(at::ScalarType dtype) { return dtype == at::kFloat || dtype == at::kBFloat16; }

// kStep of a packable dtype, at run time.
int64_t features_per_step(at::ScalarType dtype) { return dtype == at::kFloat ? kStep<float> : kStep<uint16_t>; }

void check_weight(const at::Tensor& weight) {
  TORCH_CHECK(is_packable(weight.scalar_type()) && weight.dim() == 2,
              "small_m_linear packs a 2-D float32 or bfloat16 weight");
  const int64_t step = features_per_step(weight.scalar_type());
  TORCH_CHECK(weight.size(0) % kBlock == 0 && weight.size(1) % step == 0, "small_m_linear needs out_features divisible by ",
              kBlock, (step == 2 ? " and even in_features" : ""), ", got ", weight.sizes());
}

// weight [N, K] -> [N / 16, K / S, 16, S], the layout above (S: 1 for float32, 2 for bfloat16).
at::Tensor small_m_linear_pack(const at::Tensor& weight) {
  check_weight(weight);
  const int64_t N = weight.size(0), K = weight.size(1), step = features_per_step(weight.scalar_type());
  // Always a new tensor: for some shapes the permuted view is already contiguous and would alias the weight.
  at::Tensor packed = at::empty({N / kBlock, K / step, kBlock, step}, weight.options());
  packed.copy_(weight.reshape({N / kBlock, kBlock, K / step, step}).permute({0, 2, 1, 3}));
  return packed;
}

at::Tensor small_m_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias) {
  const at::ScalarType dtype = packed.scalar_type();
  TORCH_CHECK(is_packable(dtype) && x.scalar_type() == dtype,
              "small_m_linear multiplies float32 or bfloat16 x by a weight of the same dtype, got ",
              x.scalar_type(), " and ", dtype);
  TORCH_CHECK(supported_cpu(dtype == at::kBFloat16), "small_m_linear needs a CPU with AVX-512",
              (dtype == at::kBFloat16 ? " and AVX512_BF16" : ""));
  const int64_t step = features_per_step(dtype);
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be contiguous [M, K]");
  TORCH_CHECK(packed.dim() == 4 && packed.is_contiguous() && packed.size(2) == kBlock && packed.size(3) == step,
              "the weight must come from small_m_linear_pack");
  const int64_t M = x.size(0), K = x.size(1), num_blocks = packed.size(0), N = num_blocks * kBlock;
  TORCH_CHECK(packed.size(1) * step == K, "x has ", K, " features, the weight ", packed.size(1) * step);
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == dtype && bias->is_contiguous() && bias->numel() == N,
                "bias must be contiguous [out_features] of the weight's dtype");
  }
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0) return out;
#if defined(__x86_64__)
  if (dtype == at::kFloat) {
    multiply<float>(x.data_ptr<float>(), M, K, packed.data_ptr<float>(), num_blocks,
                    bias.has_value() ? bias->data_ptr<float>() : nullptr, out.data_ptr<float>());
  } else {
    const auto bits = [](const at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<c10::BFloat16>()); };
    multiply<uint16_t>(bits(x), M, K, bits(packed), num_blocks, bias.has_value() ? bits(*bias) : nullptr, bits(out));
  }
#endif
  return out;
}

bool small_m_linear_supported(at::ScalarType dtype) { return is_packable(dtype) && supported_cpu(dtype == at::kBFloat16); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(tritonllm_cpu, m) {
  m.def("small_m_linear_pack(Tensor weight) -> Tensor");
  m.def("small_m_linear(Tensor x, Tensor packed, Tensor? bias) -> Tensor");
  m.def("small_m_linear_supported(ScalarType dtype) -> bool", small_m_linear_supported);
}

TORCH_LIBRARY_IMPL(tritonllm_cpu, CPU, m) {
  m.impl("small_m_linear_pack", small_m_linear_pack);
  m.impl("small_m_linear", small_m_linear);
}
