// MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool on NCHW float data.
//
// A 2-D window is a rectangle, so both max and sum separate into a vertical
// pass over whole input rows (contiguous, vectorises cleanly) followed by a
// horizontal pass over one staged row. Planes are independent and split
// across the thread pool. Other ranks, and MaxPool's optional Indices output,
// go through a general N-d loop.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <onnx/onnx_pb.h>

#include "worker/runtime/kernels/cpu_features.h"
#include "worker/runtime/kernel.h"

namespace quantd::runtime {
namespace {

// Shapes that do not fit the op (the executor adds the node's name).
Status Invalid(const onnx::NodeProto&, const std::string& message) { return KernelError(message); }

// `types`: the element types this kernel runs on.
Status CheckInput(const onnx::NodeProto& node, const Tensor* x, std::initializer_list<DataType> types) {
  if (x == nullptr) return Invalid(node, "X is required");
  if (std::find(types.begin(), types.end(), x->dtype()) == types.end()) {
    return Status(StatusCode::kUnimplemented, "RUNTIME_UNSUPPORTED_TYPE",
                  node.op_type() + " does not support element type " + ToString(x->dtype()));
  }
  if (x->rank() < 3) return Invalid(node, "X " + ShapeToString(x->shape()) + " must have rank >= 3");
  return Status::Ok();
}

// Splits `planes` independent planes over the pool. Waking workers costs
// microseconds, so tensors under ~256K elements stay on the calling thread.
template <typename Fn>
void ForPlanes(ThreadPool& pool, int64_t planes, int64_t work_per_plane, Fn&& fn) {
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(work_per_plane, 1));
  if (pool.num_threads() > 1 && planes * work_per_plane >= (256 << 10) && planes > grain) {
    pool.ParallelFor(planes, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) fn(p);
    });
  } else {
    for (int64_t p = 0; p < planes; ++p) fn(p);
  }
}

// ---------------------------------------------------------------------------
// Window geometry
// ---------------------------------------------------------------------------

struct PoolAttributes {
  std::vector<int64_t> kernel_shape, strides, pads, dilations;
  std::string auto_pad = "NOTSET";
  bool ceil_mode = false;
  bool count_include_pad = false;
  int64_t storage_order = 0;
};

PoolAttributes ParsePoolAttributes(const KernelInit& init) {
  PoolAttributes a;
  a.kernel_shape = init.attributes.Ints("kernel_shape");
  a.strides = init.attributes.Ints("strides");
  a.pads = init.attributes.Ints("pads");
  a.dilations = init.attributes.Ints("dilations");
  a.auto_pad = init.attributes.String("auto_pad", "NOTSET");
  a.ceil_mode = init.attributes.Int("ceil_mode", 0) != 0;
  a.count_include_pad = init.attributes.Int("count_include_pad", 0) != 0;
  a.storage_order = init.attributes.Int("storage_order", 0);
  return a;
}

struct PoolGeometry {
  int rank = 0;
  std::vector<int64_t> in, out, kernel, stride, dilation, pad_begin, pad_end;
  int64_t in_size = 1, out_size = 1;
};

StatusOr<PoolGeometry> ResolvePool(const onnx::NodeProto& node, const PoolAttributes& a, const Shape& x) {
  PoolGeometry g;
  g.rank = static_cast<int>(x.size()) - 2;
  const size_t k = static_cast<size_t>(g.rank);
  if (a.kernel_shape.size() != k) {
    return Invalid(node, "kernel_shape has " + std::to_string(a.kernel_shape.size()) + " values for X " +
                             ShapeToString(x));
  }
  auto sized = [&](const std::vector<int64_t>& v, size_t n, int64_t fallback, const char* name,
                   std::vector<int64_t>* out) -> Status {
    if (v.empty()) out->assign(n, fallback);
    else if (v.size() != n) return Invalid(node, std::string(name) + " has the wrong number of values");
    else *out = v;
    return Status::Ok();
  };
  std::vector<int64_t> pads;
  g.kernel = a.kernel_shape;
  QUANTD_RETURN_IF_ERROR(sized(a.strides, k, 1, "strides", &g.stride));
  QUANTD_RETURN_IF_ERROR(sized(a.dilations, k, 1, "dilations", &g.dilation));
  QUANTD_RETURN_IF_ERROR(sized(a.pads, 2 * k, 0, "pads", &pads));
  g.in.assign(x.begin() + 2, x.end());
  g.out.resize(k);
  g.pad_begin.assign(pads.begin(), pads.begin() + static_cast<std::ptrdiff_t>(k));
  g.pad_end.assign(pads.begin() + static_cast<std::ptrdiff_t>(k), pads.end());
  for (size_t i = 0; i < k; ++i) {
    const int64_t s = g.stride[i];
    if (g.kernel[i] < 1 || s < 1 || g.dilation[i] < 1 || g.pad_begin[i] < 0 || g.pad_end[i] < 0) {
      return Invalid(node, "kernel_shape, strides and dilations must be positive and pads non-negative");
    }
    const int64_t eff = (g.kernel[i] - 1) * g.dilation[i] + 1;
    if (a.auto_pad == "SAME_UPPER" || a.auto_pad == "SAME_LOWER") {
      g.out[i] = (g.in[i] + s - 1) / s;
      const int64_t total = std::max<int64_t>(0, (g.out[i] - 1) * s + eff - g.in[i]);
      g.pad_begin[i] = a.auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      g.pad_end[i] = total - g.pad_begin[i];
    } else if (a.auto_pad == "VALID") {
      g.pad_begin[i] = g.pad_end[i] = 0;
      g.out[i] = g.in[i] >= eff ? (g.in[i] - eff) / s + 1 : 0;
    } else if (a.auto_pad == "NOTSET" || a.auto_pad.empty()) {
      const int64_t span = g.in[i] + g.pad_begin[i] + g.pad_end[i] - eff;
      if (span < 0) {
        g.out[i] = 0;
      } else if (a.ceil_mode) {
        g.out[i] = (span + s - 1) / s + 1;
        // The last window must start inside the input or the begin padding.
        if ((g.out[i] - 1) * s >= g.in[i] + g.pad_begin[i]) --g.out[i];
      } else {
        g.out[i] = span / s + 1;
      }
    } else {
      return Invalid(node, "unknown auto_pad '" + a.auto_pad + "'");
    }
    if (g.out[i] < 1) return Invalid(node, "the window does not fit into X " + ShapeToString(x));
    g.in_size *= g.in[i];
    g.out_size *= g.out[i];
  }
  return g;
}

// Valid tap range along one axis for output position o: taps t in [lo, hi)
// land inside the input; `padded` counts the taps inside input + pads.
struct TapRange {
  int64_t lo, hi, padded;
};

TapRange Taps(int64_t o, int64_t stride, int64_t pad_begin, int64_t pad_end, int64_t kernel, int64_t dilation,
              int64_t in) {
  const int64_t start = o * stride - pad_begin;
  TapRange r{kernel, 0, 0};
  for (int64_t t = 0; t < kernel; ++t) {
    const int64_t i = start + t * dilation;
    if (i >= 0 && i < in) {
      r.lo = std::min(r.lo, t);
      r.hi = t + 1;
    }
    if (i >= -pad_begin && i < in + pad_end) ++r.padded;
  }
  if (r.hi == 0) r.lo = 0;
  return r;
}

// ---------------------------------------------------------------------------
// 2-D fast path
// ---------------------------------------------------------------------------

enum class Mode { kMax, kAverage, kAverageIncludePad };

struct AxisTable {
  std::vector<TapRange> taps;  // per output position
};

AxisTable MakeTable(const PoolGeometry& g, size_t axis) {
  AxisTable t;
  t.taps.reserve(static_cast<size_t>(g.out[axis]));
  for (int64_t o = 0; o < g.out[axis]; ++o) {
    t.taps.push_back(Taps(o, g.stride[axis], g.pad_begin[axis], g.pad_end[axis], g.kernel[axis], g.dilation[axis],
                          g.in[axis]));
  }
  return t;
}

// Inlined into the per-ISA clones below, so each gets its own vector code.
template <Mode kMode>
__attribute__((always_inline)) inline void Pool2DPlane(const float* x, float* y, int64_t w, int64_t oh_count,
                                                       int64_t ow_count, int64_t sh, int64_t sw, int64_t ph,
                                                       int64_t pw, int64_t dh, int64_t dw, const TapRange* rows,
                                                       const TapRange* cols, float* staged) {
  constexpr bool kMax = kMode == Mode::kMax;
  for (int64_t oh = 0; oh < oh_count; ++oh) {
    const TapRange r = rows[oh];
    const int64_t ih0 = oh * sh - ph;
    // Vertical pass: staged[iw] = reduce over valid window rows.
    if (r.hi <= r.lo) {
      const float fill = kMax ? -std::numeric_limits<float>::infinity() : 0.0f;
      for (int64_t iw = 0; iw < w; ++iw) staged[iw] = fill;
    } else {
      const float* first = x + (ih0 + r.lo * dh) * w;
      for (int64_t iw = 0; iw < w; ++iw) staged[iw] = first[iw];
      for (int64_t t = r.lo + 1; t < r.hi; ++t) {
        const float* row = x + (ih0 + t * dh) * w;
        if constexpr (kMax) {
          for (int64_t iw = 0; iw < w; ++iw) staged[iw] = std::max(staged[iw], row[iw]);
        } else {
          for (int64_t iw = 0; iw < w; ++iw) staged[iw] += row[iw];
        }
      }
    }
    // Horizontal pass.
    float* out = y + oh * ow_count;
    for (int64_t ow = 0; ow < ow_count; ++ow) {
      const TapRange c = cols[ow];
      const int64_t base = ow * sw - pw;
      float acc = kMax ? -std::numeric_limits<float>::infinity() : 0.0f;
      for (int64_t t = c.lo; t < c.hi; ++t) {
        if constexpr (kMax) acc = std::max(acc, staged[base + t * dw]);
        else acc += staged[base + t * dw];
      }
      if constexpr (kMode == Mode::kAverage) {
        const int64_t count = (r.hi - r.lo) * (c.hi - c.lo);
        acc = count > 0 ? acc / static_cast<float>(count) : 0.0f;
      } else if constexpr (kMode == Mode::kAverageIncludePad) {
        const int64_t count = r.padded * c.padded;
        acc = count > 0 ? acc / static_cast<float>(count) : 0.0f;
      }
      out[ow] = acc;
    }
  }
}

#define QUANTD_POOL_PLANE(name, mode)                                                                          \
  __attribute__((target_clones("avx512f", "avx2", "default"))) void name(                                       \
      const float* x, float* y, int64_t w, int64_t oh_count, int64_t ow_count, int64_t sh, int64_t sw, int64_t ph, \
      int64_t pw, int64_t dh, int64_t dw, const TapRange* rows, const TapRange* cols, float* staged) {           \
    Pool2DPlane<mode>(x, y, w, oh_count, ow_count, sh, sw, ph, pw, dh, dw, rows, cols, staged);                  \
  }
QUANTD_POOL_PLANE(MaxPlane, Mode::kMax)
QUANTD_POOL_PLANE(AveragePlane, Mode::kAverage)
QUANTD_POOL_PLANE(AverageIncludePadPlane, Mode::kAverageIncludePad)
#undef QUANTD_POOL_PLANE

// The common 2x2 / stride 2 max pool over rows whose windows lie inside the
// input: max of the two rows, then of even and odd lanes (deinterleaved with
// permutes), 16 or 8 outputs per step.
__attribute__((target("avx512f"))) void MaxPool2x2RowsAvx512(const float* x, float* y, int64_t w, int64_t rows,
                                                             int64_t ow_count) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t oh = 0; oh < rows; ++oh) {
    const float* r0 = x + 2 * oh * w;
    const float* r1 = r0 + w;
    float* out = y + oh * ow_count;
    for (int64_t ow = 0; ow < ow_count; ow += 16) {
      const int64_t n = std::min<int64_t>(16, ow_count - ow);
      // Inputs 2*ow .. 2*ow + 2n - 1, as two 16-lane halves.
      const int64_t lo_count = std::min<int64_t>(16, 2 * n), hi_count = 2 * n - lo_count;
      const __mmask16 lo_mask = static_cast<__mmask16>((1u << lo_count) - 1);
      const __mmask16 hi_mask = static_cast<__mmask16>((1u << hi_count) - 1);
      const float* p0 = r0 + 2 * ow;
      const float* p1 = r1 + 2 * ow;
      // (maskz forms: the unmasked ones trip GCC 12's maybe-uninitialized.)
      const __m512 lo =
          _mm512_maskz_max_ps(0xFFFF, _mm512_maskz_loadu_ps(lo_mask, p0), _mm512_maskz_loadu_ps(lo_mask, p1));
      const __m512 hi = _mm512_maskz_max_ps(0xFFFF, _mm512_maskz_loadu_ps(hi_mask, p0 + 16),
                                            _mm512_maskz_loadu_ps(hi_mask, p1 + 16));
      const __m512 m = _mm512_maskz_max_ps(0xFFFF, _mm512_permutex2var_ps(lo, even, hi),
                                           _mm512_permutex2var_ps(lo, odd, hi));
      _mm512_mask_storeu_ps(out + ow, static_cast<__mmask16>((1u << n) - 1), m);
    }
  }
}

__attribute__((target("avx2"))) void MaxPool2x2RowsAvx2(const float* x, float* y, int64_t w, int64_t rows,
                                                        int64_t ow_count) {
  for (int64_t oh = 0; oh < rows; ++oh) {
    const float* r0 = x + 2 * oh * w;
    const float* r1 = r0 + w;
    float* out = y + oh * ow_count;
    int64_t ow = 0;
    for (; ow + 8 <= ow_count; ow += 8) {
      const __m256 a = _mm256_max_ps(_mm256_loadu_ps(r0 + 2 * ow), _mm256_loadu_ps(r1 + 2 * ow));
      const __m256 b = _mm256_max_ps(_mm256_loadu_ps(r0 + 2 * ow + 8), _mm256_loadu_ps(r1 + 2 * ow + 8));
      // Even/odd lanes within 128-bit halves, then put the halves in order.
      const __m256 m = _mm256_max_ps(_mm256_shuffle_ps(a, b, 0x88), _mm256_shuffle_ps(a, b, 0xDD));
      _mm256_storeu_ps(out + ow, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(m), 0xD8)));
    }
    for (; ow < ow_count; ++ow) {
      out[ow] = std::max(std::max(r0[2 * ow], r0[2 * ow + 1]), std::max(r1[2 * ow], r1[2 * ow + 1]));
    }
  }
}

void MaxPool2x2Rows(const float* x, float* y, int64_t w, int64_t rows, int64_t ow_count) {
  const int level = VectorWidth() >= 16 ? 2 : VectorWidth() >= 8 ? 1 : 0;
  if (level == 2) return MaxPool2x2RowsAvx512(x, y, w, rows, ow_count);
  if (level == 1) return MaxPool2x2RowsAvx2(x, y, w, rows, ow_count);
  for (int64_t oh = 0; oh < rows; ++oh) {
    const float* r0 = x + 2 * oh * w;
    const float* r1 = r0 + w;
    for (int64_t ow = 0; ow < ow_count; ++ow) {
      y[oh * ow_count + ow] =
          std::max(std::max(r0[2 * ow], r0[2 * ow + 1]), std::max(r1[2 * ow], r1[2 * ow + 1]));
    }
  }
}

template <Mode kMode>
void Pool2D(const float* x, float* y, int64_t planes, const PoolGeometry& g, ThreadPool& pool) {
  const AxisTable rows = MakeTable(g, 0), cols = MakeTable(g, 1);
  const int64_t h = g.in[0], w = g.in[1];
  const bool simple_2x2 = kMode == Mode::kMax && g.kernel[0] == 2 && g.kernel[1] == 2 && g.stride[0] == 2 &&
                          g.stride[1] == 2 && g.dilation[0] == 1 && g.dilation[1] == 1 && g.pad_begin[0] == 0 &&
                          g.pad_begin[1] == 0;
  ForPlanes(pool, planes, g.in_size, [&](int64_t p) {
    const float* xp = x + p * g.in_size;
    float* yp = y + p * g.out_size;
    if (simple_2x2) {
      // Full windows: rows/cols whose second tap is inside the input.
      const int64_t full_rows = std::min(g.out[0], h / 2), full_cols = std::min(g.out[1], w / 2);
      if (full_cols == g.out[1]) {
        MaxPool2x2Rows(xp, yp, w, full_rows, g.out[1]);
        if (full_rows == g.out[0]) return;
      }
    }
    thread_local std::vector<float> staged;
    if (staged.size() < static_cast<size_t>(w)) staged.resize(static_cast<size_t>(w));
    auto* plane = kMode == Mode::kMax ? MaxPlane : kMode == Mode::kAverage ? AveragePlane : AverageIncludePadPlane;
    plane(xp, yp, w, g.out[0], g.out[1], g.stride[0], g.stride[1], g.pad_begin[0], g.pad_begin[1], g.dilation[0],
          g.dilation[1], rows.taps.data(), cols.taps.data(), staged.data());
  });
}

// ---------------------------------------------------------------------------
// General N-d path (any rank, optional indices)
// ---------------------------------------------------------------------------

// Lowest value of T: the identity of max (-inf for floating types).
template <typename T>
constexpr T Lowest() {
  if constexpr (std::numeric_limits<T>::has_infinity) {
    return -std::numeric_limits<T>::infinity();
  } else {
    return std::numeric_limits<T>::lowest();
  }
}

template <Mode kMode, typename T>
void PoolNd(const T* x, T* y, int64_t* indices, int64_t planes, const PoolGeometry& g, int64_t storage_order,
            ThreadPool& pool) {
  // Max stays in T; sums accumulate in float (double for double).
  using Acc = std::conditional_t<kMode == Mode::kMax, T, std::conditional_t<std::is_same_v<T, double>, double, float>>;
  const size_t k = static_cast<size_t>(g.rank);
  std::vector<AxisTable> tables;
  for (size_t i = 0; i < k; ++i) tables.push_back(MakeTable(g, i));
  int64_t kernel_taps = 1;
  for (int64_t v : g.kernel) kernel_taps *= v;
  ForPlanes(pool, planes, g.in_size, [&](int64_t p) {
    const T* xp = x + p * g.in_size;
    std::vector<int64_t> opos(k, 0), tap(k), ipos(k);
    for (int64_t o = 0; o < g.out_size; ++o) {
      int64_t rest = o;
      for (size_t i = k; i-- > 0;) {
        opos[i] = rest % g.out[i];
        rest /= g.out[i];
      }
      Acc acc = kMode == Mode::kMax ? Lowest<Acc>() : Acc{0};
      int64_t best = -1, valid = 0, padded = 1;
      for (size_t i = 0; i < k; ++i) padded *= tables[i].taps[static_cast<size_t>(opos[i])].padded;
      for (int64_t t = 0; t < kernel_taps; ++t) {
        int64_t r = t;
        bool inside = true;
        int64_t flat = 0;
        for (size_t i = k; i-- > 0;) {
          tap[i] = r % g.kernel[i];
          r /= g.kernel[i];
        }
        for (size_t i = 0; i < k; ++i) {
          ipos[i] = opos[i] * g.stride[i] - g.pad_begin[i] + tap[i] * g.dilation[i];
          inside = inside && ipos[i] >= 0 && ipos[i] < g.in[i];
          flat = flat * g.in[i] + ipos[i];
        }
        if (!inside) continue;
        ++valid;
        const Acc v = xp[flat];
        if constexpr (kMode == Mode::kMax) {
          if (best < 0 || v > acc) {
            acc = v;
            if (storage_order == 0) {
              best = flat;
            } else {
              best = 0;
              for (size_t i = k; i-- > 0;) best = best * g.in[i] + ipos[i];
            }
          }
        } else {
          acc += v;
        }
      }
      if constexpr (kMode == Mode::kAverage) acc = valid > 0 ? acc / static_cast<Acc>(valid) : Acc{0};
      if constexpr (kMode == Mode::kAverageIncludePad) acc = padded > 0 ? acc / static_cast<Acc>(padded) : Acc{0};
      y[p * g.out_size + o] = static_cast<T>(acc);
      if (indices != nullptr) indices[p * g.out_size + o] = p * g.in_size + std::max<int64_t>(best, 0);
    }
  });
}

// ---------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------

class PoolKernel final : public Kernel {
 public:
  PoolKernel(const KernelInit& init, bool max) : node_(init.node), attrs_(ParsePoolAttributes(init)), max_(max) {
    want_indices_ = max && init.node.output_size() > 1 && !init.node.output(1).empty();
  }

  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (max_) {
      QUANTD_RETURN_IF_ERROR(
          CheckInput(node_, x, {DataType::kFloat, DataType::kDouble, DataType::kInt8, DataType::kUint8}));
    } else {
      QUANTD_RETURN_IF_ERROR(CheckInput(node_, x, {DataType::kFloat, DataType::kDouble}));
    }
    QUANTD_ASSIGN_OR_RETURN(PoolGeometry g, ResolvePool(node_, attrs_, x->shape()));
    Shape out_shape = {x->dim(0), x->dim(1)};
    out_shape.insert(out_shape.end(), g.out.begin(), g.out.end());
    Tensor& y = ctx.output(0);
    y = Tensor(x->dtype(), out_shape);
    int64_t* indices = nullptr;
    if (want_indices_ && ctx.num_outputs() > 1) {
      ctx.output(1) = Tensor(DataType::kInt64, out_shape);
      indices = ctx.output(1).data<int64_t>();
    }
    if (y.size() == 0) return Status::Ok();
    const int64_t planes = x->dim(0) * x->dim(1);
    ThreadPool& pool = ctx.threads();
    const Mode mode = max_ ? Mode::kMax : attrs_.count_include_pad ? Mode::kAverageIncludePad : Mode::kAverage;
    switch (x->dtype()) {
      case DataType::kDouble: return RunGeneric<double>(*x, y, indices, planes, g, mode, pool);
      case DataType::kInt8: return RunGeneric<int8_t>(*x, y, indices, planes, g, mode, pool);
      case DataType::kUint8: return RunGeneric<uint8_t>(*x, y, indices, planes, g, mode, pool);
      default: break;
    }
    const float* xd = x->data<float>();
    float* yd = y.data<float>();
    if ((g.rank == 2 || g.rank == 1) && indices == nullptr) {
      PoolGeometry g2 = g;
      if (g.rank == 1) {
        // A 1-D pool is the 2-D pool of a single row.
        for (auto* v : {&g2.in, &g2.out, &g2.kernel, &g2.stride, &g2.dilation}) v->insert(v->begin(), 1);
        g2.pad_begin.insert(g2.pad_begin.begin(), 0);
        g2.pad_end.insert(g2.pad_end.begin(), 0);
        g2.rank = 2;
      }
      switch (mode) {
        case Mode::kMax: Pool2D<Mode::kMax>(xd, yd, planes, g2, pool); break;
        case Mode::kAverage: Pool2D<Mode::kAverage>(xd, yd, planes, g2, pool); break;
        case Mode::kAverageIncludePad: Pool2D<Mode::kAverageIncludePad>(xd, yd, planes, g2, pool); break;
      }
      return Status::Ok();
    }
    return RunGeneric<float>(*x, y, indices, planes, g, mode, pool);
  }

 private:
  template <typename T>
  Status RunGeneric(const Tensor& x, Tensor& y, int64_t* indices, int64_t planes, const PoolGeometry& g, Mode mode,
                    ThreadPool& pool) const {
    const T* xd = x.data<T>();
    T* yd = y.data<T>();
    switch (mode) {
      case Mode::kMax: PoolNd<Mode::kMax, T>(xd, yd, indices, planes, g, attrs_.storage_order, pool); break;
      case Mode::kAverage:
        if constexpr (std::is_floating_point_v<T>) PoolNd<Mode::kAverage, T>(xd, yd, nullptr, planes, g, 0, pool);
        break;
      case Mode::kAverageIncludePad:
        if constexpr (std::is_floating_point_v<T>) {
          PoolNd<Mode::kAverageIncludePad, T>(xd, yd, nullptr, planes, g, 0, pool);
        }
        break;
    }
    return Status::Ok();
  }

  const onnx::NodeProto node_;  // a copy: the graph may not outlive the kernel
  PoolAttributes attrs_;
  bool max_;
  bool want_indices_ = false;
};

__attribute__((target_clones("avx512f", "avx2", "default"))) float PlaneSum(const float* x, int64_t n) {
  // Several partial sums so the loop vectorises without -ffast-math.
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) acc[j] += x[i + j];
  }
  float total = 0.0f;
  for (; i < n; ++i) total += x[i];
  for (int j = 0; j < 16; ++j) total += acc[j];
  return total;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) float PlaneMax(const float* x, int64_t n) {
  float acc[16];
  std::fill(acc, acc + 16, -std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) acc[j] = std::max(acc[j], x[i + j]);
  }
  float best = -std::numeric_limits<float>::infinity();
  for (; i < n; ++i) best = std::max(best, x[i]);
  for (int j = 0; j < 16; ++j) best = std::max(best, acc[j]);
  return best;
}

class GlobalPoolKernel final : public Kernel {
 public:
  GlobalPoolKernel(const KernelInit& init, bool max) : node_(init.node), max_(max) {}

  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    QUANTD_RETURN_IF_ERROR(CheckInput(node_, x, {DataType::kFloat}));
    Shape out_shape = {x->dim(0), x->dim(1)};
    out_shape.resize(static_cast<size_t>(x->rank()), 1);
    Tensor& y = ctx.output(0);
    y = Tensor(DataType::kFloat, out_shape);
    const int64_t planes = x->dim(0) * x->dim(1);
    if (planes == 0) return Status::Ok();
    const int64_t size = x->size() / planes;
    if (size == 0) return Invalid(node_, "X " + ShapeToString(x->shape()) + " has an empty spatial extent");
    const float* xd = x->data<float>();
    float* yd = y.data<float>();
    ForPlanes(ctx.threads(), planes, size, [&](int64_t p) {
      yd[p] = max_ ? PlaneMax(xd + p * size, size) : PlaneSum(xd + p * size, size) / static_cast<float>(size);
    });
    return Status::Ok();
  }

 private:
  const onnx::NodeProto node_;  // a copy: the graph may not outlive the kernel
  bool max_;
};

}  // namespace

void RegisterPoolKernels(KernelRegistry& registry) {
  registry.Register("", "MaxPool", 1, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    return std::unique_ptr<Kernel>(new PoolKernel(init, true));
  });
  registry.Register("", "AveragePool", 1, kLatestOpset,
                    [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
                      return std::unique_ptr<Kernel>(new PoolKernel(init, false));
                    });
  registry.Register("", "GlobalAveragePool", 1, kLatestOpset,
                    [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
                      return std::unique_ptr<Kernel>(new GlobalPoolKernel(init, false));
                    });
  registry.Register("", "GlobalMaxPool", 1, kLatestOpset,
                    [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
                      return std::unique_ptr<Kernel>(new GlobalPoolKernel(init, true));
                    });
}

}  // namespace quantd::runtime
