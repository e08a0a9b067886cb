// 16-float GCC vectors and the few functions of them the native CPU kernels share. The kernels compile
// these for AVX-512, AVX2 and plain x86-64 (CPU_CLONES) and the loader picks one per CPU; helpers taking
// vectors must be inlined into those clones (a vector argument across clones changes the ABI).
// Tensors are float32 or bfloat16 (`load`/`store` overloads), KV caches also fp8 (e4m3fn or e5m2: `load`
// widens, `to_cache` narrows); arithmetic is always on floats, and bfloat16 results are rounded to nearest
// even, as torch rounds them.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e5m2.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

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
typedef uint32_t BitsVec __attribute__((vector_size(kLanes * sizeof(uint32_t))));
typedef uint16_t HalfBitsVec __attribute__((vector_size(kLanes * sizeof(uint16_t))));
typedef uint8_t ByteVec __attribute__((vector_size(kLanes * sizeof(uint8_t))));

ALWAYS_INLINE Vec load(const float* source) {
  Vec v;
  std::memcpy(&v, source, sizeof v);
  return v;
}

ALWAYS_INLINE void store(float* target, Vec v) { std::memcpy(target, &v, sizeof v); }

// A bfloat16 is the top half of a float32: widening puts each one above 16 zero bits, one interleave with
// zeros. GCC 12 compiled a zero-extension to 32 bits and a shift into two half-width extensions, an extract
// and an insert: bfloat16 decode attention from cache ran 16% slower, SiLU-and-mul 7%.
ALWAYS_INLINE Vec widen(HalfBitsVec bits) {
  const HalfBitsVec zero = {};
  return reinterpret_cast<Vec>(__builtin_shufflevector(zero, bits, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31));
}

ALWAYS_INLINE Vec load(const c10::BFloat16* source) {
  HalfBitsVec bits;
  std::memcpy(&bits, source, sizeof bits);
  return widen(bits);
}

// fp8 formats: exponent bits and bias (the other 7 - kExponentBits bits are mantissa).
template <typename C>
struct Fp8Format;
template <>
struct Fp8Format<c10::Float8_e4m3fn> {
  static constexpr uint32_t kExponentBits = 4, kBias = 7;
};
template <>
struct Fp8Format<c10::Float8_e5m2> {
  static constexpr uint32_t kExponentBits = 5, kBias = 15;
};

template <typename C>
constexpr bool is_fp8_type = std::is_same_v<C, c10::Float8_e4m3fn> || std::is_same_v<C, c10::Float8_e5m2>;

// The fp8 numbers in the top byte of each lane (bits 31..24; the bits below are ignored) as floats, with
// integer arithmetic: the sign stays at bit 31, the exponent and mantissa bits move under float32's and
// the exponent is rebiased; a subnormal is read as the smallest normal with its mantissa, less that
// normal's leading 1 (an exact float subtraction). Float arithmetic on float32 subnormals instead
// (the bits shifted into place, multiplied by 2^(127 - bias)) ran a third slower on real K/V, where a few
// percent of values (40% of SmolLM2's first-layer values) are fp8 subnormals. NaN, and e5m2's infinity,
// read as finite numbers: the cache writes saturate (`to_cache`), so only a NaN activation stores one.
template <typename C>
ALWAYS_INLINE Vec widen_fp8(BitsVec top) {
  constexpr uint32_t kExponentBits = Fp8Format<C>::kExponentBits, kBias = Fp8Format<C>::kBias;
  const BitsVec magnitude = (top >> (8 - kExponentBits)) & (0x7fu << (16 + kExponentBits));
  const BitsVec subnormal = reinterpret_cast<BitsVec>(magnitude < (1u << 23));
  const BitsVec normal = magnitude + ((127u - kBias) << 23) + (subnormal & (1u << 23));
  const BitsVec leading_one = subnormal & ((128u - kBias) << 23);  // 2^(1 - bias) where subnormal, else 0.0
  const Vec value = reinterpret_cast<Vec>(normal) - reinterpret_cast<Vec>(leading_one);
  return reinterpret_cast<Vec>(reinterpret_cast<BitsVec>(value) | (top & 0x80000000u));
}

// 16 consecutive fp8 numbers. Through 16 bits: GCC 12 widens 8 -> 32 bits one byte at a time through
// general registers, 8 -> 16 -> 32 with vector zero-extensions (still 8 shuffles: the decode kernel reads
// fp8 tiles 64 bytes at a time instead, `load_packed`).
template <typename C, typename = std::enable_if_t<is_fp8_type<C>>>
ALWAYS_INLINE Vec load(const C* source) {
  ByteVec bytes;
  std::memcpy(&bytes, source, sizeof bytes);
  return widen_fp8<C>(__builtin_convertvector(__builtin_convertvector(bytes, HalfBitsVec), BitsVec) << 24);
}

// 64 bytes as 16 lanes of 4 bytes each: byte k of every lane is widened by widen_fp8<C>(packed << (24 - 8k)),
// a shift where `load` needs 8 shuffles.
template <typename C>
ALWAYS_INLINE BitsVec load_packed(const C* source) {
  BitsVec packed;
  std::memcpy(&packed, source, sizeof packed);
  return packed;
}

// v rounded to bfloat16 as c10::BFloat16 does (to nearest even; a NaN becomes the quiet NaN 0x7fc0), still
// in 32-bit lanes: the bfloat16 in the top half, zeros below.
ALWAYS_INLINE BitsVec bfloat16_rounded(Vec v) {
  const BitsVec bits = reinterpret_cast<BitsVec>(v);
  const BitsVec rounded = (bits + (0x7fffu + ((bits >> 16) & 1u))) & 0xffff0000u;
  const IntVec nan = v != v;
  return nan ? BitsVec{} + 0x7fc00000u : rounded;
}

ALWAYS_INLINE HalfBitsVec bfloat16_bits(Vec v) { return __builtin_convertvector(bfloat16_rounded(v) >> 16, HalfBitsVec); }

ALWAYS_INLINE void store(c10::BFloat16* target, Vec v) {
  const HalfBitsVec bits = bfloat16_bits(v);
  std::memcpy(target, &bits, sizeof bits);
}

// v as a T would hold it: where torch rounds an intermediate result to the tensor's dtype, so do we. For
// bfloat16 without leaving 32-bit lanes (narrowing to 16 bits and widening back took a permute and four
// more shuffles).
template <typename T>
ALWAYS_INLINE Vec round_to(Vec v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return reinterpret_cast<Vec>(bfloat16_rounded(v));
  }
}

template <typename T>
ALWAYS_INLINE float round_to(float x) {
  return static_cast<float>(static_cast<T>(x));
}

ALWAYS_INLINE Vec splat(float x) { return Vec{} + x; }

// The tensor dtypes the kernels take.
inline bool is_supported(c10::ScalarType dtype) { return dtype == c10::kFloat || dtype == c10::kBFloat16; }

// body(T{}) with T the C++ type of `dtype`, one the kernels take (checked before).
template <typename Body>
auto with_element_type(c10::ScalarType dtype, Body&& body) {
  if (dtype == c10::kFloat) return body(float{});
  return body(c10::BFloat16{});
}

// The (activation, KV cache) dtype pairs the attention kernels take: one dtype, float32 activations over a
// bfloat16 cache, or either over an fp8 cache (EngineConfig.kv_cache_dtype: a half or a quarter of the
// cache bytes to stream).
inline bool is_fp8(c10::ScalarType dtype) { return dtype == c10::kFloat8_e4m3fn || dtype == c10::kFloat8_e5m2; }

inline bool is_supported_cache(c10::ScalarType dtype, c10::ScalarType cache_dtype) {
  return is_supported(dtype) &&
         (cache_dtype == dtype || (dtype == c10::kFloat && cache_dtype == c10::kBFloat16) || is_fp8(cache_dtype));
}

// body(T{}, C{}) for a pair is_supported_cache accepts.
template <typename Body>
auto with_element_types(c10::ScalarType dtype, c10::ScalarType cache_dtype, Body&& body) {
  return with_element_type(dtype, [&](auto element) {
    using T = decltype(element);
    if (cache_dtype == c10::kFloat8_e4m3fn) return body(T{}, c10::Float8_e4m3fn{});
    if (cache_dtype == c10::kFloat8_e5m2) return body(T{}, c10::Float8_e5m2{});
    if (cache_dtype == c10::kBFloat16) return body(T{}, c10::BFloat16{});
    return body(T{}, T{});
  });
}

// x as a cache of C stores it: fp8 saturates at its largest finite value (as vLLM's fp8 cache writes do;
// c10's conversion would give e5m2 an infinity), NaN stays NaN.
template <typename C>
ALWAYS_INLINE C to_cache(float x) {
  if constexpr (is_fp8_type<C>) {
    const float largest = static_cast<float>(std::numeric_limits<C>::max());  // 448, 57344
    return static_cast<C>(std::min(std::max(x, -largest), largest));
  } else {
    return static_cast<C>(x);
  }
}

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
