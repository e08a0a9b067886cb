// 16-float GCC vectors and the few functions of them the native CPU kernels share. The kernels compile
// these for AVX-512, AVX2 and plain x86-64 (CPU_CLONES) and the loader picks one per CPU; helpers taking
// vectors must be inlined into those clones (a vector argument across clones changes the ABI).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#define ALWAYS_INLINE __attribute__((always_inline)) inline
#if defined(__x86_64__)
#define CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CPU_CLONES
#endif

namespace vector_math {

constexpr int64_t kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IntVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

ALWAYS_INLINE Vec load(const float* source) {
  Vec v;
  std::memcpy(&v, source, sizeof v);
  return v;
}

ALWAYS_INLINE void store(float* target, Vec v) { std::memcpy(target, &v, sizeof v); }

ALWAYS_INLINE Vec splat(float x) { return Vec{} + x; }

// exp(x) for x <= 0: Cephes' expf polynomial after reducing x to n * ln2 + r. Below -87 (where floats
// stop being normal) it is exactly 0, so -inf weighs nothing in a softmax.
ALWAYS_INLINE Vec exp_nonpositive(Vec x) {
  const IntVec underflow = x < -87.0f;
  x = underflow ? splat(-87.0f) : x;
  const IntVec n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, IntVec);  // round(x / ln2)
  const Vec nf = __builtin_convertvector(n, Vec);
  const Vec r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  Vec p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const Vec two_to_n = reinterpret_cast<Vec>((n + 127) << 23);
  return underflow ? splat(0.0f) : p * two_to_n;
}

ALWAYS_INLINE float lane_max(Vec v) {
  float top = v[0];
  for (int64_t i = 1; i < kLanes; ++i) top = std::max(top, v[i]);
  return top;
}

ALWAYS_INLINE float lane_sum(Vec v) {
  float total = 0.0f;
  for (int64_t i = 0; i < kLanes; ++i) total += v[i];
  return total;
}

}  // namespace vector_math
