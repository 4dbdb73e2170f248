// Shared pieces of the kernel families: element type dispatch, broadcast
// iteration, vectorisable float math and small factory helpers.
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "worker/runtime/kernel.h"

namespace quantd::runtime::kernels {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) for the C++ type of `type`; Status of fn or an
// error for types outside the family.
template <typename Fn>
Status DispatchFloat(DataType type, Fn&& fn) {
  switch (type) {
    case DataType::kFloat: return fn(TypeTag<float>{});
    case DataType::kDouble: return fn(TypeTag<double>{});
    default: return KernelError("element type " + ToString(type) + " is not supported here");
  }
}

template <typename Fn>
Status DispatchSigned(DataType type, Fn&& fn) {
  switch (type) {
    case DataType::kFloat: return fn(TypeTag<float>{});
    case DataType::kDouble: return fn(TypeTag<double>{});
    case DataType::kInt8: return fn(TypeTag<int8_t>{});
    case DataType::kInt16: return fn(TypeTag<int16_t>{});
    case DataType::kInt32: return fn(TypeTag<int32_t>{});
    case DataType::kInt64: return fn(TypeTag<int64_t>{});
    default: return KernelError("element type " + ToString(type) + " is not supported here");
  }
}

template <typename Fn>
Status DispatchNumeric(DataType type, Fn&& fn) {
  switch (type) {
    case DataType::kFloat: return fn(TypeTag<float>{});
    case DataType::kDouble: return fn(TypeTag<double>{});
    case DataType::kInt8: return fn(TypeTag<int8_t>{});
    case DataType::kUint8: return fn(TypeTag<uint8_t>{});
    case DataType::kInt16: return fn(TypeTag<int16_t>{});
    case DataType::kUint16: return fn(TypeTag<uint16_t>{});
    case DataType::kInt32: return fn(TypeTag<int32_t>{});
    case DataType::kUint32: return fn(TypeTag<uint32_t>{});
    case DataType::kInt64: return fn(TypeTag<int64_t>{});
    case DataType::kUint64: return fn(TypeTag<uint64_t>{});
    default: return KernelError("element type " + ToString(type) + " is not supported here");
  }
}

// Every type, by storage: moves bytes around without interpreting them
// (float16/bfloat16 as uint16, 4-bit types as bytes).
template <typename Fn>
Status DispatchStorage(DataType type, Fn&& fn) {
  switch (ElementSize(type)) {
    case 1: return fn(TypeTag<uint8_t>{});
    case 2: return fn(TypeTag<uint16_t>{});
    case 4: return fn(TypeTag<uint32_t>{});
    case 8: return fn(TypeTag<uint64_t>{});
    default: return KernelError("element type " + ToString(type) + " is not supported here");
  }
}

// Elementwise loops below this many elements run on the calling thread.
constexpr int64_t kParallelGrain = 1 << 15;

template <typename Fn>
void ParallelRange(ThreadPool& pool, int64_t n, int64_t grain, Fn&& fn) {
  if (n <= grain || pool.num_threads() == 1) {
    if (n > 0) fn(int64_t{0}, n);
    return;
  }
  pool.ParallelFor(n, grain, [&fn](int64_t b, int64_t e) { fn(b, e); });
}

// Output shape and strides of numpy-style broadcasting over N inputs, with
// dims of size 1 dropped and adjacent dims merged where every input has the
// same broadcast pattern, so most cases end in a long contiguous inner run.
template <int N>
struct BroadcastLayout {
  Shape out_shape;
  std::vector<int64_t> dims;                   // collapsed, outermost first
  std::array<std::vector<int64_t>, N> stride;  // element strides, 0 where broadcast
  int64_t total = 0;

  static StatusOr<BroadcastLayout> Make(const std::array<const Shape*, N>& shapes) {
    BroadcastLayout l;
    size_t rank = 0;
    for (const Shape* s : shapes) rank = std::max(rank, s->size());
    l.out_shape.assign(rank, 1);
    std::array<Shape, N> aligned;
    for (int k = 0; k < N; ++k) {
      aligned[k].assign(rank, 1);
      std::copy(shapes[k]->begin(), shapes[k]->end(), aligned[k].begin() + static_cast<long>(rank - shapes[k]->size()));
    }
    for (size_t d = 0; d < rank; ++d) {
      int64_t size = 1;
      for (int k = 0; k < N; ++k) {
        int64_t v = aligned[k][d];
        if (v == 1) continue;
        if (size != 1 && size != v) {
          std::string text;
          for (int j = 0; j < N; ++j) text += (j ? " and " : "") + ShapeToString(*shapes[j]);
          return KernelError("shapes " + text + " cannot be broadcast");
        }
        size = v;
      }
      // Zero-sized dims win over 1.
      for (int k = 0; k < N; ++k) {
        if (aligned[k][d] == 0) size = 0;
      }
      l.out_shape[d] = size;
    }
    l.total = NumElements(l.out_shape);
    // Contiguous strides of each input in its own (aligned) shape.
    std::array<std::vector<int64_t>, N> full;
    for (int k = 0; k < N; ++k) {
      full[k].assign(rank, 0);
      int64_t s = 1;
      for (size_t d = rank; d-- > 0;) {
        full[k][d] = aligned[k][d] == 1 ? 0 : s;
        s *= aligned[k][d];
      }
    }
    std::array<bool, N> prev_bcast{};
    bool have_prev = false;
    for (size_t d = 0; d < rank; ++d) {
      if (l.out_shape[d] == 1) continue;
      std::array<bool, N> bcast;
      for (int k = 0; k < N; ++k) bcast[k] = full[k][d] == 0;
      if (have_prev && bcast == prev_bcast) {
        l.dims.back() *= l.out_shape[d];
        for (int k = 0; k < N; ++k) l.stride[k].back() = full[k][d];
      } else {
        l.dims.push_back(l.out_shape[d]);
        for (int k = 0; k < N; ++k) l.stride[k].push_back(full[k][d]);
      }
      prev_bcast = bcast;
      have_prev = true;
    }
    return l;
  }

  // Calls fn(out_offset, count, offsets, inner_strides) for each run of
  // output elements in [begin, end) that is contiguous in the output;
  // offsets[k] is input k's element offset at the run's start and
  // inner_strides[k] is 0 (broadcast) or 1.
  template <typename Fn>
  void ForRuns(int64_t begin, int64_t end, Fn&& fn) const {
    if (begin >= end) return;
    std::array<int64_t, N> inner{};
    std::array<int64_t, N> off{};
    if (dims.empty()) {
      fn(int64_t{0}, int64_t{1}, off, inner);
      return;
    }
    const size_t k = dims.size();
    for (int j = 0; j < N; ++j) inner[j] = stride[j][k - 1];
    std::vector<int64_t> idx(k, 0);
    int64_t rem = begin;
    for (size_t d = k; d-- > 0;) {
      idx[d] = rem % dims[d];
      rem /= dims[d];
    }
    for (int j = 0; j < N; ++j) {
      for (size_t d = 0; d < k; ++d) off[j] += idx[d] * stride[j][d];
    }
    int64_t pos = begin;
    while (pos < end) {
      int64_t count = std::min(dims[k - 1] - idx[k - 1], end - pos);
      fn(pos, count, off, inner);
      pos += count;
      if (pos >= end) break;
      for (int j = 0; j < N; ++j) off[j] += count * inner[j];
      idx[k - 1] += count;
      // Carry into outer dims.
      for (size_t d = k; d-- > 0 && idx[d] == dims[d];) {
        for (int j = 0; j < N; ++j) off[j] -= dims[d] * stride[j][d];
        idx[d] = 0;
        if (d == 0) break;
        ++idx[d - 1];
        for (int j = 0; j < N; ++j) off[j] += stride[j][d - 1];
      }
    }
  }
};

// z = f(x, y) over a broadcast layout, split across the pool.
template <typename T, typename U, typename F>
void BinaryLoop(const T* pa, const T* pb, U* po, const BroadcastLayout<2>& layout, ThreadPool& pool, F f) {
  ParallelRange(pool, layout.total, kParallelGrain, [&](int64_t begin, int64_t end) {
    layout.ForRuns(begin, end,
                   [&](int64_t o, int64_t n, const std::array<int64_t, 2>& off, const std::array<int64_t, 2>& inner) {
                     const T* x = pa + off[0];
                     const T* y = pb + off[1];
                     U* z = po + o;
                     if (inner[0] && inner[1]) {
                       for (int64_t i = 0; i < n; ++i) z[i] = f(x[i], y[i]);
                     } else if (inner[0]) {
                       const T yv = *y;
                       for (int64_t i = 0; i < n; ++i) z[i] = f(x[i], yv);
                     } else if (inner[1]) {
                       const T xv = *x;
                       for (int64_t i = 0; i < n; ++i) z[i] = f(xv, y[i]);
                     } else {
                       const U v = f(*x, *y);
                       for (int64_t i = 0; i < n; ++i) z[i] = v;
                     }
                   });
  });
}

// Allocates the output of a broadcast op, reusing an input's buffer when the
// executor allows it and the input already has the output's type and shape.
inline Tensor& BroadcastOutput(KernelContext& ctx, DataType type, const Shape& shape, int num_inputs) {
  for (int i = 0; i < num_inputs; ++i) {
    Tensor* r = ctx.reusable_input(i);
    if (r && r->dtype() == type && r->shape() == shape) {
      ctx.output(0) = *r;
      return ctx.output(0);
    }
  }
  ctx.output(0) = Tensor(type, shape);
  return ctx.output(0);
}

// Vectorisable float math: branch-free, no calls, so GCC turns loops over
// them into SIMD code at -O3 without -ffast-math.
inline float FastExp(float x) {
  // exp(x) = 2^n * exp(r), r = x - n ln2, |r| <= ln2/2, with a degree-6
  // polynomial (relative error ~2e-7). Rounding to n uses the 1.5 * 2^23
  // trick since nearbyint is a library call without SSE4.1. Below -86.6
  // the result stays at ~2e-38 instead of going subnormal.
  float c = std::min(std::max(x, -86.6f), 88.72f);
  float n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = c - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n as 2^(n-1) * 2 keeps the exponent field in range for n = 128.
  int32_t bits = (static_cast<int32_t>(n) + 126) << 23;
  float result = p * std::bit_cast<float>(bits) * 2.0f;
  result = x > 88.72f ? std::numeric_limits<float>::infinity() : result;
  return x != x ? x : result;
}

// Vectorised transcendental functions over float arrays (Eigen's packet
// math); x may equal y. Defined in activation.cc.
void ErfArray(const float* x, float* y, int64_t n);
void TanhArray(const float* x, float* y, int64_t n);
void SigmoidArray(const float* x, float* y, int64_t n);

// Unique-pointer to a kernel as the StatusOr a factory returns.
template <typename K, typename... Args>
StatusOr<std::unique_ptr<Kernel>> MakeKernel(Args&&... args) {
  return std::unique_ptr<Kernel>(std::make_unique<K>(std::forward<Args>(args)...));
}

// Converts `n` elements between any two supported types (float16/bfloat16
// through float, bool as 0/1); defined in elementwise.cc.
Status CastElements(const Tensor& in, Tensor& out);
Tensor CastTo(const Tensor& in, DataType type);

}  // namespace quantd::runtime::kernels
