// QuantizeLinear, DequantizeLinear (per tensor, per axis and blocked) and
// DynamicQuantizeLinear. Rounding is half to even, results saturate.
#include <cmath>

#include <onnx/onnx_pb.h>

#include "worker/runtime/kernels/kernel_util.h"

namespace quantd::runtime::kernels {

namespace {

// Round half to even for |v| < 2^22, vectorisable (adding 1.5 * 2^23
// pushes the fraction out under the default rounding mode).
inline float RoundHalfEven(float v) {
  v = std::min(std::max(v, -4194304.0f), 4194304.0f);
  return (v + 12582912.0f) - 12582912.0f;
}

struct QRange {
  float lo;
  float hi;
};

StatusOr<QRange> RangeOf(DataType t) {
  switch (t) {
    case DataType::kUint8: return QRange{0, 255};
    case DataType::kInt8: return QRange{-128, 127};
    case DataType::kUint16: return QRange{0, 65535};
    case DataType::kInt16: return QRange{-32768, 32767};
    case DataType::kUint4: return QRange{0, 15};
    case DataType::kInt4: return QRange{-8, 7};
    default: return KernelError("quantized type " + ToString(t) + " is not supported");
  }
}

// Integer types a quantized tensor may hold, by C++ storage type.
template <typename Fn>
Status DispatchQuantized(DataType type, Fn&& fn) {
  switch (type) {
    case DataType::kUint8:
    case DataType::kUint4: return fn(TypeTag<uint8_t>{});
    case DataType::kInt8:
    case DataType::kInt4: return fn(TypeTag<int8_t>{});
    case DataType::kUint16: return fn(TypeTag<uint16_t>{});
    case DataType::kInt16: return fn(TypeTag<int16_t>{});
    case DataType::kInt32: return fn(TypeTag<int32_t>{});
    default: return KernelError("quantized type " + ToString(type) + " is not supported");
  }
}

// How scale/zero-point elements map onto the data: element (o, i, j) of the
// data viewed as [outer, n, inner] around `axis` uses parameter
// (o?, i / block, j?) — per tensor: one value; per axis: index i; blocked:
// [outer, ceil(n / block), inner].
struct ParamLayout {
  enum Kind { kTensor, kAxis, kBlocked } kind = kTensor;
  int64_t outer = 1, n = 1, inner = 1, block = 1, blocks = 1;
};

StatusOr<ParamLayout> MakeParamLayout(const Tensor& data, const Tensor& scale, int64_t axis_attr, int64_t block_size) {
  ParamLayout l;
  if (scale.rank() == 0 || (scale.size() == 1 && block_size == 0)) return l;
  if (data.rank() == 0) return KernelError("per-axis parameters need a data tensor of rank >= 1");
  QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_attr, data.rank()));
  for (int d = 0; d < axis; ++d) l.outer *= data.dim(d);
  l.n = data.dim(axis);
  for (int d = axis + 1; d < data.rank(); ++d) l.inner *= data.dim(d);
  if (block_size > 0) {
    if (scale.rank() != data.rank()) return KernelError("blocked scale must have the data's rank");
    l.kind = ParamLayout::kBlocked;
    l.block = block_size;
    l.blocks = (l.n + block_size - 1) / block_size;
    if (scale.dim(axis) != l.blocks || scale.size() != l.outer * l.blocks * l.inner) {
      return KernelError("blocked scale " + ShapeToString(scale.shape()) + " does not fit data " +
                         ShapeToString(data.shape()) + " with block_size " + std::to_string(block_size));
    }
    return l;
  }
  if (scale.rank() != 1 || scale.size() != l.n) {
    return KernelError("scale " + ShapeToString(scale.shape()) + " must be a scalar or have " + std::to_string(l.n) +
                       " elements along axis " + std::to_string(axis));
  }
  l.kind = ParamLayout::kAxis;
  return l;
}

// Calls fn(begin, count, param_index) for runs of elements sharing one
// scale/zero point.
template <typename Fn>
void ForParamRuns(const ParamLayout& l, int64_t total, Fn&& fn) {
  switch (l.kind) {
    case ParamLayout::kTensor:
      fn(int64_t{0}, total, int64_t{0});
      return;
    case ParamLayout::kAxis:
      for (int64_t o = 0; o < l.outer; ++o) {
        for (int64_t i = 0; i < l.n; ++i) fn((o * l.n + i) * l.inner, l.inner, i);
      }
      return;
    case ParamLayout::kBlocked:
      // Parameters vary along inner, so runs are single elements unless
      // inner == 1.
      for (int64_t o = 0; o < l.outer; ++o) {
        for (int64_t i = 0; i < l.n; ++i) {
          for (int64_t j = 0; j < l.inner; ++j) {
            fn((o * l.n + i) * l.inner + j, int64_t{1}, (o * l.blocks + i / l.block) * l.inner + j);
          }
        }
      }
      return;
  }
}

std::vector<float> ZeroPoints(const Tensor* zp, int64_t count) {
  std::vector<float> out(static_cast<size_t>(count), 0.0f);
  if (!zp || zp->size() == 0) return out;
  Tensor f = CastTo(*zp, DataType::kFloat);
  for (int64_t i = 0; i < count && i < f.size(); ++i) out[static_cast<size_t>(i)] = f.data<float>()[i];
  return out;
}

class QuantizeKernel final : public Kernel {
 public:
  QuantizeKernel(int64_t axis, int64_t block_size, DataType output_type)
      : axis_(axis), block_size_(block_size), output_type_(output_type) {}

  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    const Tensor* scale = ctx.input(1);
    const Tensor* zp = ctx.input(2);
    if (!x || !scale) return KernelError("expects x and y_scale");
    DataType out_type = zp && zp->defined() ? zp->dtype() : output_type_;
    QUANTD_ASSIGN_OR_RETURN(QRange range, RangeOf(out_type));
    QUANTD_ASSIGN_OR_RETURN(ParamLayout layout, MakeParamLayout(*x, *scale, axis_, block_size_));
    if (zp && zp->size() != scale->size()) return KernelError("y_zero_point and y_scale differ in size");
    Tensor xf = CastTo(*x, DataType::kFloat);
    Tensor sf = CastTo(*scale, DataType::kFloat);
    if (!xf.defined() || !sf.defined()) return KernelError("unsupported input type");
    std::vector<float> zps = ZeroPoints(zp, sf.size());
    ctx.output(0) = Tensor(out_type, x->shape());
    return DispatchQuantized(out_type, [&](auto tag) -> Status {
      using Q = typename decltype(tag)::type;
      const float* px = xf.data<float>();
      const float* ps = sf.data<float>();
      Q* py = ctx.output(0).data<Q>();
      const float lo = range.lo, hi = range.hi;
      ForParamRuns(layout, x->size(), [&](int64_t begin, int64_t count, int64_t p) {
        const float s = ps[p], z = zps[static_cast<size_t>(p)];
        for (int64_t i = begin; i < begin + count; ++i) {
          float q = RoundHalfEven(px[i] / s) + z;
          py[i] = static_cast<Q>(std::min(std::max(q, lo), hi));
        }
      });
      return Status::Ok();
    });
  }

 private:
  int64_t axis_;
  int64_t block_size_;
  DataType output_type_;
};

class DequantizeKernel final : public Kernel {
 public:
  DequantizeKernel(int64_t axis, int64_t block_size) : axis_(axis), block_size_(block_size) {}

  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    const Tensor* scale = ctx.input(1);
    const Tensor* zp = ctx.input(2);
    if (!x || !scale) return KernelError("expects x and x_scale");
    if (zp && zp->defined() && zp->dtype() != x->dtype()) return KernelError("x_zero_point type differs from x");
    if (zp && zp->size() != scale->size()) return KernelError("x_zero_point and x_scale differ in size");
    QUANTD_ASSIGN_OR_RETURN(ParamLayout layout, MakeParamLayout(*x, *scale, axis_, block_size_));
    Tensor sf = CastTo(*scale, DataType::kFloat);
    if (!sf.defined()) return KernelError("unsupported scale type");
    std::vector<float> zps = ZeroPoints(zp, sf.size());
    Tensor y(DataType::kFloat, x->shape());
    QUANTD_RETURN_IF_ERROR(DispatchQuantized(x->dtype(), [&](auto tag) -> Status {
      using Q = typename decltype(tag)::type;
      const Q* px = x->data<Q>();
      const float* ps = sf.data<float>();
      float* py = y.data<float>();
      ForParamRuns(layout, x->size(), [&](int64_t begin, int64_t count, int64_t p) {
        const float s = ps[p], z = zps[static_cast<size_t>(p)];
        for (int64_t i = begin; i < begin + count; ++i) py[i] = (static_cast<float>(px[i]) - z) * s;
      });
      return Status::Ok();
    }));
    ctx.output(0) = scale->dtype() == DataType::kFloat ? std::move(y) : CastTo(y, scale->dtype());
    return Status::Ok();
  }

 private:
  int64_t axis_;
  int64_t block_size_;
};

class DynamicQuantizeKernel final : public Kernel {
 public:
  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (!x || x->dtype() != DataType::kFloat) return KernelError("expects a float32 input");
    const float* px = x->data<float>();
    float mn = 0, mx = 0;
    for (int64_t i = 0; i < x->size(); ++i) {
      mn = std::min(mn, px[i]);
      mx = std::max(mx, px[i]);
    }
    float scale = (mx - mn) / 255.0f;
    float zp = scale == 0 ? 0.0f : std::min(std::max(RoundHalfEven(-mn / scale), 0.0f), 255.0f);
    ctx.output(0) = Tensor(DataType::kUint8, x->shape());
    uint8_t* py = ctx.output(0).data<uint8_t>();
    for (int64_t i = 0; i < x->size(); ++i) {
      float q = scale == 0 ? zp : RoundHalfEven(px[i] / scale) + zp;
      py[i] = static_cast<uint8_t>(std::min(std::max(q, 0.0f), 255.0f));
    }
    ctx.output(1) = Tensor::Scalar<float>(scale);
    ctx.output(2) = Tensor::Scalar<uint8_t>(static_cast<uint8_t>(zp));
    return Status::Ok();
  }
};

void RegisterAll(KernelRegistry& registry) {
  registry.Register("", "QuantizeLinear", 10, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    if (init.attributes.Int("saturate", 1) == 0) return NodeError("saturate=0 applies to float8 only");
    auto out = static_cast<DataType>(init.attributes.Int("output_dtype", 0));
    if (out == DataType::kUndefined) out = DataType::kUint8;
    return MakeKernel<QuantizeKernel>(init.attributes.Int("axis", 1), init.attributes.Int("block_size", 0), out);
  });
  registry.Register("", "DequantizeLinear", 10, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<DequantizeKernel>(init.attributes.Int("axis", 1), init.attributes.Int("block_size", 0));
  });
  registry.Register("", "DynamicQuantizeLinear", 11, kLatestOpset,
                    [](const KernelInit&) { return MakeKernel<DynamicQuantizeKernel>(); });
}

}  // namespace

}  // namespace quantd::runtime::kernels

namespace quantd::runtime {
void RegisterQuantizeKernels(KernelRegistry& registry) { kernels::RegisterAll(registry); }
}  // namespace quantd::runtime
