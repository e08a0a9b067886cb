// bfloat16 projections at decode batch sizes: out[M, N] = x[M, K] @ weight[N, K]^T (+ bias), from the
// checkpoint's plain row-major weight, with AVX-512 BF16 dot products (vdpbf16ps: 16 float32 lanes, each
// adding two bfloat16 products). A few rows of x cannot hide the weight's stream behind arithmetic: the
// product is as fast as the weight streams from memory. oneDNN's reordered bfloat16 weights stream at
// ~18-20 GB/s there on the 2-core Zen 4; this kernel at 31-33, the machine's read bandwidth (all 121
// projections of SmolLM2-135M at 1 row: 13.75 -> 8.4 ms).
//
// Work: the weight's rows in tiles of kTileRows, contiguous ranges of tiles per thread (each thread streams
// its own part of the weight, in order). A tile's rows are read from memory once, multiplied by x's rows
// kRowsPerPass at a time (the 4 x kRowsPerPass float32 accumulators stay in registers; further passes read
// the tile from L1 while 4 rows of K fit there: K up to ~4,000), and the tile kPrefetchTiles ahead is asked
// for into L2 as this one is read (into L1 the prefetches would take the miss buffers the loads need; see
// paged_decode.cpp). Products accumulate in float32; the bias is added in float32 and each output rounded
// to bfloat16 once, as oneDNN does.
// Needs AVX512_BF16 (`small_m_linear_supported`); the oracle is F.linear (tests/kernels).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

namespace {

// Elements of K per dot product step: 32 bfloat16 = one 64-byte line of each weight row.
constexpr int64_t kStep = 32;
constexpr int64_t kTileRows = 4;
constexpr int64_t kRowsPerPass = 4;
constexpr int64_t kPrefetchTiles = 2;
// Weight rows per task: a thread's share must stay long enough to stream (prefetch) well.
constexpr int64_t kGrainTiles = 16;

bool supported_cpu() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

#if defined(__x86_64__)

// out rows m0 .. m0 + MR - 1, columns n0 .. n0 + R - 1.
template <int64_t MR, int64_t R>
BF16_TARGET inline void tile(const uint16_t* x, int64_t m0, const uint16_t* weight, int64_t n0, int64_t K,
                             const c10::BFloat16* bias, c10::BFloat16* out, int64_t N, bool prefetch) {
  __m512 acc[MR][R];
  for (int64_t m = 0; m < MR; ++m)
    for (int64_t r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  const uint16_t* rows = weight + n0 * K;
  for (int64_t k = 0; k < K; k += kStep) {
    __m512bh w[R];
    for (int64_t r = 0; r < R; ++r) {
      if (prefetch)
        _mm_prefetch(reinterpret_cast<const char*>(rows + (kPrefetchTiles * kTileRows + r) * K + k), _MM_HINT_T1);
      w[r] = (__m512bh)_mm512_loadu_si512(rows + r * K + k);
    }
    for (int64_t m = 0; m < MR; ++m) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + (m0 + m) * K + k);
      for (int64_t r = 0; r < R; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, w[r]);
    }
  }
  for (int64_t m = 0; m < MR; ++m)
    for (int64_t r = 0; r < R; ++r) {
      float value = _mm512_reduce_add_ps(acc[m][r]);
      if (bias != nullptr) value += static_cast<float>(bias[n0 + r]);
      out[(m0 + m) * N + n0 + r] = c10::BFloat16(value);
    }
}

// Every row of x against weight rows n0 .. n0 + R - 1: the first pass streams them (and prefetches the
// tile ahead, where the weight has one), the others find them in L1.
template <int64_t R>
BF16_TARGET void all_rows(const uint16_t* x, int64_t M, const uint16_t* weight, int64_t n0, int64_t K,
                          const c10::BFloat16* bias, c10::BFloat16* out, int64_t N) {
  const bool ahead = n0 + (kPrefetchTiles + 1) * kTileRows <= N;
  int64_t m0 = 0;
  for (; m0 + kRowsPerPass <= M; m0 += kRowsPerPass)
    tile<kRowsPerPass, R>(x, m0, weight, n0, K, bias, out, N, ahead && m0 == 0);
  switch (M - m0) {
    case 1: tile<1, R>(x, m0, weight, n0, K, bias, out, N, ahead && m0 == 0); break;
    case 2: tile<2, R>(x, m0, weight, n0, K, bias, out, N, ahead && m0 == 0); break;
    case 3: tile<3, R>(x, m0, weight, n0, K, bias, out, N, ahead && m0 == 0); break;
    default: break;
  }
}

#endif

at::Tensor small_m_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(supported_cpu(), "small_m_linear needs a CPU with AVX512_BF16");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16,
              "small_m_linear multiplies bfloat16 tensors");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && weight.dim() == 2 && weight.is_contiguous(),
              "x [M, K] and weight [N, K] must be contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  TORCH_CHECK(weight.size(1) == K, "x has ", K, " features, the weight ", weight.size(1));
  TORCH_CHECK(K % kStep == 0, "small_m_linear needs in_features divisible by ", kStep, ", got ", K);
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
  const auto* ws = reinterpret_cast<const uint16_t*>(weight.data_ptr<c10::BFloat16>());
  c10::BFloat16* outs = out.data_ptr<c10::BFloat16>();
  const int64_t full_tiles = N / kTileRows;
  at::parallel_for(0, full_tiles, kGrainTiles, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) all_rows<kTileRows>(xs, M, ws, t * kTileRows, K, bias_data, outs, N);
  });
  for (int64_t n = full_tiles * kTileRows; n < N; ++n) all_rows<1>(xs, M, ws, n, K, bias_data, outs, N);
#endif
  return out;
}

bool small_m_linear_supported() { return supported_cpu(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(tritonllm_cpu, m) {
  m.def("small_m_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("small_m_linear_supported() -> bool", small_m_linear_supported);
}

TORCH_LIBRARY_IMPL(tritonllm_cpu, CPU, m) { m.impl("small_m_linear", small_m_linear); }
