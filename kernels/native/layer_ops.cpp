// The small per-layer operations of the CPU path, each one pass over its rows where torch takes several
// operators (and as many dispatches and temporaries) for it. float32 or bfloat16 tensors (computed in
// float32, rounded to bfloat16 wherever the reference rounds); each mirrors its torch reference, which
// stays the oracle in the tests:
//   rms_norm / add_rms_norm  kernels/rms_norm_ref.py (the residual add fused in, as the decoder does)
//   silu_and_mul             kernels/activation_ref.py
//   rotary_write_kv          kernels/rotary_ref.py (halves, "neox") then kernels/cache_write_ref.py:
//                            rotates the queries into a new tensor and the keys straight into the cache.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "vector_math.h"

namespace {

using namespace vector_math;

// Rows per task: small batches (decode) run on the calling thread, where waking the pool costs more.
int64_t grain_rows(int64_t row_floats) { return std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(row_floats, 1)); }

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(is_supported(x.scalar_type()) && x.dim() == 2 && x.stride(1) == 1, name,
              " must be float32 or bfloat16 [rows, features] with contiguous rows");
}

void check_weight(const at::Tensor& weight, const at::Tensor& x) {
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && weight.is_contiguous() && weight.numel() == x.size(1),
              "weight must be contiguous [features] of x's dtype");
}

// out = round(x / sqrt(mean(x^2) + eps)) * weight, one row, rounded as the reference rounds (the normed row
// to T, then the product); the sum of squares runs in 16 lanes.
template <typename T>
CPU_CLONES void norm_row(const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ out, int64_t size,
                         float eps) {
  Vec squares = {};
  int64_t i = 0;
  for (; i + kLanes <= size; i += kLanes) {
    const Vec v = load(x + i);
    squares += v * v;
  }
  float total = lane_sum(squares);
  for (; i < size; ++i) total += static_cast<float>(x[i]) * static_cast<float>(x[i]);
  const float inverse = 1.0f / std::sqrt(total / static_cast<float>(size) + eps);
  for (i = 0; i + kLanes <= size; i += kLanes) store(out + i, round_to<T>(load(x + i) * inverse) * load(weight + i));
  for (; i < size; ++i) out[i] = static_cast<T>(round_to<T>(static_cast<float>(x[i]) * inverse) * static_cast<float>(weight[i]));
}

template <typename T>
CPU_CLONES void add_rows(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, int64_t size) {
  int64_t i = 0;
  for (; i + kLanes <= size; i += kLanes) store(out + i, load(a + i) + load(b + i));
  for (; i < size; ++i) out[i] = static_cast<T>(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_rows(x, "x");
  check_weight(weight, x);
  const int64_t rows = x.size(0), size = x.size(1);
  at::Tensor out = at::empty({rows, size}, x.options());
  with_element_type(x.scalar_type(), [&](auto element) {
    using T = decltype(element);
    at::parallel_for(0, rows, grain_rows(size), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        norm_row<T>(x.data_ptr<T>() + r * x.stride(0), weight.data_ptr<T>(), out.data_ptr<T>() + r * size, size,
                    static_cast<float>(eps));
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                                double eps) {
  check_rows(x, "x");
  check_rows(residual, "residual");
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type(),
              "residual must be shaped like x, of its dtype");
  check_weight(weight, x);
  const int64_t rows = x.size(0), size = x.size(1);
  at::Tensor out = at::empty({rows, size}, x.options());
  at::Tensor summed = at::empty({rows, size}, x.options());
  with_element_type(x.scalar_type(), [&](auto element) {
    using T = decltype(element);
    at::parallel_for(0, rows, grain_rows(size), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        T* sum_row = summed.data_ptr<T>() + r * size;
        add_rows<T>(x.data_ptr<T>() + r * x.stride(0), residual.data_ptr<T>() + r * residual.stride(0), sum_row, size);
        norm_row<T>(sum_row, weight.data_ptr<T>(), out.data_ptr<T>() + r * size, size, static_cast<float>(eps));
      }
    });
  });
  return {out, summed};
}

// silu(gate) * up with sigmoid(g) = 1 / (1 + e) for g >= 0 and e / (1 + e) below, e = exp(-|g|) <= 1;
// silu's result rounded to T before the product, as the reference's two operators round.
template <typename T>
CPU_CLONES void silu_mul_row(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out, int64_t size) {
  int64_t i = 0;
  for (; i + kLanes <= size; i += kLanes) {
    const Vec g = load(gate + i);
    const IntVec negative = g < 0.0f;
    const Vec e = exp_nonpositive(negative ? g : -g);
    const Vec sigmoid = (negative ? e : splat(1.0f)) / (1.0f + e);
    store(out + i, round_to<T>(g * sigmoid) * load(up + i));
  }
  for (; i < size; ++i) {
    const float g = static_cast<float>(gate[i]);
    out[i] = static_cast<T>(round_to<T>(g / (1.0f + std::exp(-g))) * static_cast<float>(up[i]));
  }
}

at::Tensor silu_and_mul(const at::Tensor& x) {
  check_rows(x, "x");
  TORCH_CHECK(x.size(1) % 2 == 0, "x must hold [gate | up]: an even number of features");
  const int64_t rows = x.size(0), size = x.size(1) / 2;
  at::Tensor out = at::empty({rows, size}, x.options());
  with_element_type(x.scalar_type(), [&](auto element) {
    using T = decltype(element);
    at::parallel_for(0, rows, grain_rows(size), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* row = x.data_ptr<T>() + r * x.stride(0);
        silu_mul_row<T>(row, row + size, out.data_ptr<T>() + r * size, size);
      }
    });
  });
  return out;
}

// One head: the first rot_dim features rotated by halves (x1 * cos - x2 * sin, x2 * cos + x1 * sin, in
// float32), rounded to the activations' type T, then stored as O holds it (T, or the cache's type), as the
// reference's rotate-then-write rounds it; the rest copied. `out` is written with strides (out_stride
// apart), which serves the transposed key tiles. Pairs before `first` are left to the caller.
template <typename T, typename O>
ALWAYS_INLINE void rotate_head(const T* x, const float* cos, const float* sin, int64_t rot_dim, int64_t head_dim, O* out,
                               int64_t out_stride, int64_t first = 0) {
  const int64_t half = rot_dim / 2;
  for (int64_t i = first; i < half; ++i) {
    const float x1 = static_cast<float>(x[i]), x2 = static_cast<float>(x[i + half]);
    out[i * out_stride] = to_cache<O>(round_to<T>(x1 * cos[i] - x2 * sin[i]));
    out[(i + half) * out_stride] = to_cache<O>(round_to<T>(x2 * cos[i] + x1 * sin[i]));
  }
  for (int64_t i = rot_dim; i < head_dim; ++i) out[i * out_stride] = to_cache<O>(static_cast<float>(x[i]));
}

// A token's query heads (`heads` of them, head_stride apart) rotated into `out` ([heads, head_dim]) as
// rotate_head rotates one, 16 features at a time: their output is contiguous, unlike a key's column of the
// transposed cache tile, and scalar they took most of the op's time. Products and sums stay apart (no fused
// multiply-add), as the reference's separate operators round them.
template <typename T>
CPU_CLONES __attribute__((optimize("fp-contract=off"))) void rotate_queries(
    const T* __restrict__ x, int64_t head_stride, int64_t heads, const float* __restrict__ cos,
    const float* __restrict__ sin, int64_t rot_dim, int64_t head_dim, T* __restrict__ out) {
  const int64_t half = rot_dim / 2;
  for (int64_t h = 0; h < heads; ++h, x += head_stride, out += head_dim) {
    int64_t i = 0;
    for (; i + kLanes <= half; i += kLanes) {
      const Vec x1 = load(x + i), x2 = load(x + i + half), c = load(cos + i), s = load(sin + i);
      store(out + i, x1 * c - x2 * s);  // a bfloat16 store rounds as the reference's cast does
      store(out + i + half, x2 * c + x1 * s);
    }
    rotate_head<T, T>(x, cos, sin, rot_dim, head_dim, out, 1, i);  // the pairs past the last vector, the rest
  }
}

// T: the activations' element type; C: the cache's (T, bfloat16 under float32 activations, or fp8).
template <typename T, typename C>
void rotate_and_write(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                      const at::Tensor& cos_sin_cache, const at::Tensor& key_cache, const at::Tensor& value_cache,
                      const at::Tensor& slot_mapping, const at::Tensor& out) {
  const int64_t tokens = query.size(0), q_heads = query.size(1), kv_heads = key.size(1), head_dim = query.size(2);
  const int64_t rot_dim = cos_sin_cache.size(1), block_size = key_cache.size(2);
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  at::parallel_for(0, tokens, grain_rows((q_heads + 2 * kv_heads) * head_dim), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* cos = cos_sin_cache.data_ptr<float>() + pos[t] * rot_dim;
      const float* sin = cos + rot_dim / 2;
      rotate_queries<T>(query.data_ptr<T>() + t * query.stride(0), query.stride(1), q_heads, cos, sin, rot_dim, head_dim,
                        out.data_ptr<T>() + t * q_heads * head_dim);
      if (slots[t] < 0) continue;  // padding: nothing cached
      const int64_t block = slots[t] / block_size, offset = slots[t] % block_size;
      for (int64_t h = 0; h < kv_heads; ++h) {
        C* key_slot = key_cache.data_ptr<C>() + block * key_cache.stride(0) + h * key_cache.stride(1) +
                      offset * key_cache.stride(2);
        rotate_head<T, C>(key.data_ptr<T>() + t * key.stride(0) + h * key.stride(1), cos, sin, rot_dim, head_dim, key_slot,
                       key_cache.stride(3));
        const T* value_row = value.data_ptr<T>() + t * value.stride(0) + h * value.stride(1);
        C* value_slot = value_cache.data_ptr<C>() + block * value_cache.stride(0) + h * value_cache.stride(1) +
                        offset * value_cache.stride(2);
        for (int64_t d = 0; d < head_dim; ++d)
          value_slot[d * value_cache.stride(3)] = to_cache<C>(static_cast<float>(value_row[d]));
      }
    }
  });
}

at::Tensor rotary_write_kv(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                           const at::Tensor& value, const at::Tensor& cos_sin_cache, const at::Tensor& key_cache,
                           const at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  const at::ScalarType dtype = query.scalar_type();
  TORCH_CHECK(is_supported(dtype), "rotary_write_kv takes float32 or bfloat16, got ", dtype);
  for (const at::Tensor* t : {&query, &key, &value})
    TORCH_CHECK(t->scalar_type() == dtype && t->dim() == 3 && t->stride(2) == 1,
                "query, key and value must be [T, heads, D] of one dtype with contiguous heads");
  const at::ScalarType cache_dtype = key_cache.scalar_type();
  TORCH_CHECK(is_supported_cache(dtype, cache_dtype) && value_cache.scalar_type() == cache_dtype && key_cache.dim() == 4 &&
                  value_cache.sizes() == key_cache.sizes(),
              "the caches must be [N, Hkv, bs, D] alike, of query's dtype, bfloat16 under a float32 query, or fp8");
  TORCH_CHECK(cos_sin_cache.scalar_type() == at::kFloat && cos_sin_cache.is_contiguous() && cos_sin_cache.dim() == 2,
              "cos_sin_cache must be contiguous float32 [max_pos, rot_dim]");
  TORCH_CHECK(positions.scalar_type() == at::kLong && slot_mapping.scalar_type() == at::kLong && positions.is_contiguous() &&
                  slot_mapping.is_contiguous(),
              "positions and slot_mapping must be contiguous int64");
  const int64_t tokens = query.size(0), q_heads = query.size(1), kv_heads = key.size(1), head_dim = query.size(2);
  const int64_t rot_dim = cos_sin_cache.size(1), block_size = key_cache.size(2);
  TORCH_CHECK(rot_dim % 2 == 0 && rot_dim <= head_dim && key_cache.size(1) == kv_heads && key_cache.size(3) == head_dim,
              "cache and rotary shapes do not match the heads");
  TORCH_CHECK(key.size(0) == tokens && value.sizes() == key.sizes() && key.size(2) == head_dim &&
                  positions.numel() == tokens && slot_mapping.numel() == tokens,
              "query, key, value, positions and slot_mapping must agree on tokens, heads and head_dim");
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  const int64_t max_pos = cos_sin_cache.size(0), num_slots = key_cache.size(0) * block_size;
  // Checked before anything is written: a bad index must fail the call, not half-fill the cache.
  for (int64_t t = 0; t < tokens; ++t) {
    TORCH_CHECK(pos[t] >= 0 && pos[t] < max_pos, "position ", pos[t], " outside the rotary table");
    TORCH_CHECK(slots[t] >= -1 && slots[t] < num_slots, "slot ", slots[t], " outside the cache");
  }
  at::Tensor out = at::empty({tokens, q_heads, head_dim}, query.options());
  with_element_types(dtype, cache_dtype, [&](auto element, auto cache_element) {
    rotate_and_write<decltype(element), decltype(cache_element)>(positions, query, key, value, cos_sin_cache, key_cache,
                                                                 value_cache, slot_mapping, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tritonllm_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.def(
      "rotary_write_kv(Tensor positions, Tensor query, Tensor key, Tensor value, Tensor cos_sin_cache, "
      "Tensor(a!) key_cache, Tensor(b!) value_cache, Tensor slot_mapping) -> Tensor");
}

TORCH_LIBRARY_IMPL(tritonllm_cpu, CPU, m) {
  m.impl("rms_norm", rms_norm);
  m.impl("add_rms_norm", add_rms_norm);
  m.impl("silu_and_mul", silu_and_mul);
  m.impl("rotary_write_kv", rotary_write_kv);
}
