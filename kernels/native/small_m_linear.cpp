// bfloat16 projections at decode batch sizes: out[M, N] = x[M, K] @ weight[N, K]^T (+ bias), with AVX-512
// BF16 (vdpbf16ps: 16 float32 lanes, each adding two bfloat16 products) from a copy of the weight packed
// for it (`small_m_linear_pack`).
//
// Layout: the weight's rows (output features) in blocks of 16, each block [K / 2][16][2]: for every pair
// of input features, the pair of each of the block's 16 rows, one 64-byte line. One line multiplied by a
// pair of x's features broadcast to every lane adds two products to each of 16 outputs, so an output tile
// needs no horizontal sums, and one line serves every x row of a pass.
//
// Work: blocks in tiles of kTileBlocks (64 outputs), contiguous ranges of blocks per thread (each thread
// streams its own part of the weight, in order); a tile is multiplied by x's rows kRowsPerPass at a time
// (6 x 4 float32 accumulators in registers, 4 weight lines and a broadcast pair a step: oneDNN's blocked
// layout needs as much arithmetic; dot products along the plain weight's K load two 64-byte vectors for
// every two products). The first pass streams the tile from memory and asks for the
// tile two ahead into L2 (into L1 the prefetches would take the miss buffers the loads need; see
// paged_decode.cpp); later passes find it in L2. All 121 projections of SmolLM2-135M on the 2-core Zen 4,
// weights cold, 1 / 16 / 32 / 64 / 128 / 256 rows: 8.6-8.9 / 14.7 / 24.5 / 43.5 / 82.5 / 163 ms against
// oneDNN's 13.5-14.2 / 17.8-18.5 / 28.0 / 47.7 / 86.7 / 164; at 512 rows oneDNN's 335 beats its 344. A
// tile is 128 x K bytes: measured for K up to 1,536; from K ~ 4,000 it no longer stays in a 1 MB L2 and
// later passes would read it from memory again.
// Products accumulate in float32; the bias is added in float32 and each output rounded to bfloat16 once
// (to nearest even), as oneDNN does. Needs AVX512_BF16 (`small_m_linear_supported`); the oracle is
// F.linear (tests/kernels).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

namespace {

// Output features per block: one float32 zmm of outputs.
constexpr int64_t kBlock = 16;
constexpr int64_t kTileBlocks = 4;
constexpr int64_t kRowsPerPass = 6;
constexpr int64_t kPrefetchTiles = 2;
// Blocks per task: a thread's share must stay long enough to stream (prefetch) well.
constexpr int64_t kGrainBlocks = 16;

bool supported_cpu() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

#if defined(__x86_64__)

// out rows m0 .. m0 + MR - 1, blocks b0 .. b0 + R - 1; `ahead` (or null): the tile to prefetch.
template <int64_t MR, int64_t R>
BF16_TARGET inline void tile(const uint16_t* x, int64_t m0, int64_t K, const uint16_t* packed, int64_t b0,
                             const c10::BFloat16* bias, c10::BFloat16* out, int64_t N, const uint16_t* ahead) {
  __m512 acc[MR][R];
  for (int64_t m = 0; m < MR; ++m)
    for (int64_t r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  const int64_t block_elements = K * kBlock;
  const uint16_t* blocks = packed + b0 * block_elements;
  for (int64_t pair = 0; pair < K / 2; ++pair) {
    __m512bh w[R];
    for (int64_t r = 0; r < R; ++r) {
      const int64_t offset = r * block_elements + pair * 2 * kBlock;
      if (ahead != nullptr) _mm_prefetch(reinterpret_cast<const char*>(ahead + offset), _MM_HINT_T1);
      w[r] = (__m512bh)_mm512_loadu_si512(blocks + offset);
    }
    for (int64_t m = 0; m < MR; ++m) {
      int32_t features;  // x[m0 + m, 2 * pair : 2 * pair + 2], both bfloat16 in one lane
      std::memcpy(&features, x + (m0 + m) * K + 2 * pair, sizeof(features));
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(features);
      for (int64_t r = 0; r < R; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, w[r]);
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    __m512 b = _mm512_setzero_ps();
    if (bias != nullptr) {  // bfloat16 -> float32: the 16 bits become the high half
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + (b0 + r) * kBlock));
      b = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    }
    for (int64_t m = 0; m < MR; ++m) {
      const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_add_ps(acc[m][r], b));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (m0 + m) * N + (b0 + r) * kBlock), (__m256i)rounded);
    }
  }
}

// Every row of x against blocks b0 .. b0 + R - 1 of this thread's blocks (up to `end`): the first pass
// streams them (and prefetches the tile ahead, where this thread has one), the others find them in L2.
template <int64_t R>
BF16_TARGET void all_rows(const uint16_t* x, int64_t M, int64_t K, const uint16_t* packed, int64_t b0,
                          int64_t end, const c10::BFloat16* bias, c10::BFloat16* out, int64_t N) {
  const int64_t ahead_block = b0 + kPrefetchTiles * kTileBlocks;
  const uint16_t* ahead = ahead_block + R <= end ? packed + ahead_block * K * kBlock : nullptr;
  int64_t m0 = 0;
  for (; m0 + kRowsPerPass <= M; m0 += kRowsPerPass)
    tile<kRowsPerPass, R>(x, m0, K, packed, b0, bias, out, N, m0 == 0 ? ahead : nullptr);
  const uint16_t* first_ahead = m0 == 0 ? ahead : nullptr;
  switch (M - m0) {
    case 1: tile<1, R>(x, m0, K, packed, b0, bias, out, N, first_ahead); break;
    case 2: tile<2, R>(x, m0, K, packed, b0, bias, out, N, first_ahead); break;
    case 3: tile<3, R>(x, m0, K, packed, b0, bias, out, N, first_ahead); break;
    case 4: tile<4, R>(x, m0, K, packed, b0, bias, out, N, first_ahead); break;
    case 5: tile<5, R>(x, m0, K, packed, b0, bias, out, N, first_ahead); break;
    default: break;
  }
}

#endif

void check_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16 && weight.dim() == 2,
              "small_m_linear packs a 2-D bfloat16 weight");
  TORCH_CHECK(weight.size(0) % kBlock == 0 && weight.size(1) % 2 == 0,
              "small_m_linear needs out_features divisible by ", kBlock, " and even in_features, got ",
              weight.sizes());
}

// weight [N, K] -> [N / 16, K / 2, 16, 2], the layout above.
at::Tensor small_m_linear_pack(const at::Tensor& weight) {
  check_weight(weight);
  const int64_t N = weight.size(0), K = weight.size(1);
  // Always a new tensor: for some shapes the permuted view is already contiguous and would alias the weight.
  at::Tensor packed = at::empty({N / kBlock, K / 2, kBlock, 2}, weight.options());
  packed.copy_(weight.reshape({N / kBlock, kBlock, K / 2, 2}).permute({0, 2, 1, 3}));
  return packed;
}

at::Tensor small_m_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(supported_cpu(), "small_m_linear needs a CPU with AVX512_BF16");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && packed.scalar_type() == at::kBFloat16,
              "small_m_linear multiplies bfloat16 tensors");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be contiguous [M, K]");
  TORCH_CHECK(packed.dim() == 4 && packed.is_contiguous() && packed.size(2) == kBlock && packed.size(3) == 2,
              "the weight must come from small_m_linear_pack");
  const int64_t M = x.size(0), K = x.size(1), num_blocks = packed.size(0), N = num_blocks * kBlock;
  TORCH_CHECK(packed.size(1) * 2 == K, "x has ", K, " features, the weight ", packed.size(1) * 2);
  const c10::BFloat16* bias_data = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->is_contiguous() && bias->numel() == N,
                "bias must be contiguous bfloat16 [out_features]");
    bias_data = bias->data_ptr<c10::BFloat16>();
  }
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0) return out;
#if defined(__x86_64__)
  const auto* xs = reinterpret_cast<const uint16_t*>(x.data_ptr<c10::BFloat16>());
  const auto* ws = reinterpret_cast<const uint16_t*>(packed.data_ptr<c10::BFloat16>());
  c10::BFloat16* outs = out.data_ptr<c10::BFloat16>();
  at::parallel_for(0, num_blocks, kGrainBlocks, [&](int64_t begin, int64_t end) {
    int64_t b = begin;
    for (; b + kTileBlocks <= end; b += kTileBlocks)
      all_rows<kTileBlocks>(xs, M, K, ws, b, end, bias_data, outs, N);
    switch (end - b) {
      case 1: all_rows<1>(xs, M, K, ws, b, end, bias_data, outs, N); break;
      case 2: all_rows<2>(xs, M, K, ws, b, end, bias_data, outs, N); break;
      case 3: all_rows<3>(xs, M, K, ws, b, end, bias_data, outs, N); break;
      default: break;
    }
  });
#endif
  return out;
}

bool small_m_linear_supported() { return supported_cpu(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(tritonllm_cpu, m) {
  m.def("small_m_linear_pack(Tensor weight) -> Tensor");
  m.def("small_m_linear(Tensor x, Tensor packed, Tensor? bias) -> Tensor");
  m.def("small_m_linear_supported() -> bool", small_m_linear_supported);
}

TORCH_LIBRARY_IMPL(tritonllm_cpu, CPU, m) {
  m.impl("small_m_linear_pack", small_m_linear_pack);
  m.impl("small_m_linear", small_m_linear);
}
