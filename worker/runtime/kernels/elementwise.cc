// Elementwise ops with numpy-style multidirectional broadcasting, Where,
// Cast/CastLike and Identity. Inner loops are plain loops over contiguous
// runs (see BroadcastLayout), which GCC vectorises for float32.
#include <cmath>

#include <onnx/onnx_pb.h>

#include "worker/runtime/kernels/kernel_util.h"

namespace quantd::runtime::kernels {

namespace {

// Ops declare the type family they accept.
enum class Family { kFloat, kSigned, kNumeric, kNumericBool, kBool, kUnsigned };

template <Family kFamily, typename Fn>
Status DispatchFamily(DataType type, Fn&& fn) {
  if constexpr (kFamily == Family::kFloat) {
    return DispatchFloat(type, fn);
  } else if constexpr (kFamily == Family::kSigned) {
    return DispatchSigned(type, fn);
  } else if constexpr (kFamily == Family::kNumeric) {
    return DispatchNumeric(type, fn);
  } else if constexpr (kFamily == Family::kNumericBool) {
    if (type == DataType::kBool) return fn(TypeTag<bool>{});
    return DispatchNumeric(type, fn);
  } else if constexpr (kFamily == Family::kBool) {
    if (type == DataType::kBool) return fn(TypeTag<bool>{});
  } else {
    switch (type) {
      case DataType::kUint8: return fn(TypeTag<uint8_t>{});
      case DataType::kUint16: return fn(TypeTag<uint16_t>{});
      case DataType::kUint32: return fn(TypeTag<uint32_t>{});
      case DataType::kUint64: return fn(TypeTag<uint64_t>{});
      default: break;
    }
  }
  return KernelError("element type " + ToString(type) + " is not supported here");
}

bool IsHalfType(DataType t) { return t == DataType::kFloat16 || t == DataType::kBfloat16; }

// ---------------------------------------------------------------- binary

template <typename Op>
Status ApplyBinary(const Tensor& a, const Tensor& b, KernelContext* ctx, Tensor* result, ThreadPool& pool,
                   const Op& op) {
  if (a.dtype() != b.dtype()) {
    return KernelError("inputs have different element types " + ToString(a.dtype()) + " and " + ToString(b.dtype()));
  }
  if (IsHalfType(a.dtype()) && Op::kFamily != Family::kBool && Op::kFamily != Family::kUnsigned) {
    // 16-bit floats compute in float32 and round back.
    Tensor wide;
    QUANTD_RETURN_IF_ERROR(
        ApplyBinary(CastTo(a, DataType::kFloat), CastTo(b, DataType::kFloat), nullptr, &wide, pool, op));
    Tensor narrow = Op::kPredicate ? std::move(wide) : CastTo(wide, a.dtype());
    (ctx ? ctx->output(0) : *result) = std::move(narrow);
    return Status::Ok();
  }
  QUANTD_ASSIGN_OR_RETURN(auto layout, BroadcastLayout<2>::Make({&a.shape(), &b.shape()}));
  return DispatchFamily<Op::kFamily>(a.dtype(), [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    using U = std::conditional_t<Op::kPredicate, bool, T>;
    constexpr DataType out_type = DataTypeOf<U>();
    Tensor& out = ctx ? BroadcastOutput(*ctx, out_type, layout.out_shape, 2) : (*result = Tensor(out_type, layout.out_shape));
    BinaryLoop<T, U>(a.data<T>(), b.data<T>(), out.data<U>(), layout, pool,
                     [&op](T x, T y) -> U { return op.template Apply<T>(x, y); });
    return Status::Ok();
  });
}

struct AddOp {
  static constexpr Family kFamily = Family::kNumeric;
  static constexpr bool kPredicate = false;
  template <typename T>
  T Apply(T a, T b) const {
    return static_cast<T>(a + b);
  }
};
struct SubOp {
  static constexpr Family kFamily = Family::kNumeric;
  static constexpr bool kPredicate = false;
  template <typename T>
  T Apply(T a, T b) const {
    return static_cast<T>(a - b);
  }
};
struct MulOp {
  static constexpr Family kFamily = Family::kNumeric;
  static constexpr bool kPredicate = false;
  template <typename T>
  T Apply(T a, T b) const {
    return static_cast<T>(a * b);
  }
};
struct DivOp {
  static constexpr Family kFamily = Family::kNumeric;
  static constexpr bool kPredicate = false;
  template <typename T>
  T Apply(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      return b == 0 ? T(0) : static_cast<T>(a / b);
    } else {
      return a / b;
    }
  }
};
struct MaxOp {
  static constexpr Family kFamily = Family::kNumeric;
  static constexpr bool kPredicate = false;
  template <typename T>
  T Apply(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) {
      // NaN propagates, as in numpy.maximum.
      return a != a ? a : (a < b ? b : a);
    } else {
      return a < b ? b : a;
    }
  }
};
struct MinOp {
  static constexpr Family kFamily = Family::kNumeric;
  static constexpr bool kPredicate = false;
  template <typename T>
  T Apply(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) {
      return a != a ? a : (b < a ? b : a);
    } else {
      return b < a ? b : a;
    }
  }
};
struct ModOp {
  static constexpr Family kFamily = Family::kNumeric;
  static constexpr bool kPredicate = false;
  bool fmod = false;
  template <typename T>
  T Apply(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) {
      T r = std::fmod(a, b);
      if (!fmod && r != 0 && ((r < 0) != (b < 0))) r += b;
      return r;
    } else {
      if (b == 0) return T(0);
      T r = static_cast<T>(a % b);
      if constexpr (std::is_signed_v<T>) {
        if (!fmod && r != 0 && ((r < 0) != (b < 0))) r = static_cast<T>(r + b);
      }
      return r;
    }
  }
};
struct PowOp {
  static constexpr Family kFamily = Family::kNumeric;
  static constexpr bool kPredicate = false;
  template <typename T>
  T Apply(T a, T b) const {
    if constexpr (std::is_same_v<T, float>) {
      return std::pow(a, b);
    } else {
      return static_cast<T>(std::pow(static_cast<double>(a), static_cast<double>(b)));
    }
  }
};
struct BitShiftOp {
  static constexpr Family kFamily = Family::kUnsigned;
  static constexpr bool kPredicate = false;
  bool left = true;
  template <typename T>
  T Apply(T a, T b) const {
    if (b >= static_cast<T>(sizeof(T) * 8)) return T(0);
    return static_cast<T>(left ? a << b : a >> b);
  }
};
struct AndOp {
  static constexpr Family kFamily = Family::kBool;
  static constexpr bool kPredicate = false;
  template <typename T>
  T Apply(T a, T b) const {
    return a && b;
  }
};
struct OrOp {
  static constexpr Family kFamily = Family::kBool;
  static constexpr bool kPredicate = false;
  template <typename T>
  T Apply(T a, T b) const {
    return a || b;
  }
};
struct XorOp {
  static constexpr Family kFamily = Family::kBool;
  static constexpr bool kPredicate = false;
  template <typename T>
  T Apply(T a, T b) const {
    return a != b;
  }
};
struct EqualOp {
  static constexpr Family kFamily = Family::kNumericBool;
  static constexpr bool kPredicate = true;
  template <typename T>
  bool Apply(T a, T b) const {
    return a == b;
  }
};
struct LessOp {
  static constexpr Family kFamily = Family::kNumericBool;
  static constexpr bool kPredicate = true;
  template <typename T>
  bool Apply(T a, T b) const {
    return a < b;
  }
};
struct GreaterOp {
  static constexpr Family kFamily = Family::kNumericBool;
  static constexpr bool kPredicate = true;
  template <typename T>
  bool Apply(T a, T b) const {
    return a > b;
  }
};
struct LessOrEqualOp {
  static constexpr Family kFamily = Family::kNumericBool;
  static constexpr bool kPredicate = true;
  template <typename T>
  bool Apply(T a, T b) const {
    return a <= b;
  }
};
struct GreaterOrEqualOp {
  static constexpr Family kFamily = Family::kNumericBool;
  static constexpr bool kPredicate = true;
  template <typename T>
  bool Apply(T a, T b) const {
    return a >= b;
  }
};

template <typename Op>
class BinaryKernel final : public Kernel {
 public:
  explicit BinaryKernel(Op op = {}) : op_(op) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* a = ctx.input(0);
    const Tensor* b = ctx.input(1);
    if (!a || !b) return KernelError("expects two inputs");
    return ApplyBinary(*a, *b, &ctx, nullptr, ctx.threads(), op_);
  }

 private:
  Op op_;
};

// Pow allows an exponent type different from the base (opset 12+); the
// exponent is converted to the base type. Float bases with a constant
// scalar exponent of 0.5, 1, 2 or 3 skip the library call.
class PowKernel final : public Kernel {
 public:
  explicit PowKernel(const Tensor* constant_exponent) {
    if (constant_exponent && constant_exponent->size() == 1) {
      Tensor e = CastTo(*constant_exponent, DataType::kDouble);
      scalar_exponent_ = e.data<double>()[0];
      has_scalar_ = true;
    }
  }
  Status Compute(KernelContext& ctx) const override {
    const Tensor* a = ctx.input(0);
    const Tensor* b = ctx.input(1);
    if (!a || !b) return KernelError("expects two inputs");
    if (has_scalar_ && a->dtype() == DataType::kFloat && b->rank() <= a->rank()) {
      double e = scalar_exponent_;
      if (e == 2.0 || e == 0.5 || e == 1.0 || e == 3.0) {
        Tensor& out = BroadcastOutput(ctx, DataType::kFloat, a->shape(), 1);
        const float* x = a->data<float>();
        float* y = out.data<float>();
        ParallelRange(ctx.threads(), a->size(), kParallelGrain, [&](int64_t begin, int64_t end) {
          if (e == 2.0) {
            for (int64_t i = begin; i < end; ++i) y[i] = x[i] * x[i];
          } else if (e == 0.5) {
            for (int64_t i = begin; i < end; ++i) y[i] = std::sqrt(x[i]);
          } else if (e == 3.0) {
            for (int64_t i = begin; i < end; ++i) y[i] = x[i] * x[i] * x[i];
          } else {
            for (int64_t i = begin; i < end; ++i) y[i] = x[i];
          }
        });
        return Status::Ok();
      }
    }
    if (a->dtype() != b->dtype()) {
      Tensor converted = CastTo(*b, a->dtype());
      return ApplyBinary(*a, converted, &ctx, nullptr, ctx.threads(), PowOp{});
    }
    return ApplyBinary(*a, *b, &ctx, nullptr, ctx.threads(), PowOp{});
  }

 private:
  bool has_scalar_ = false;
  double scalar_exponent_ = 0;
};

// Sum, Mean, Max, Min over any number of inputs, folded pairwise.
template <typename Op>
class VariadicKernel final : public Kernel {
 public:
  explicit VariadicKernel(bool mean) : mean_(mean) {}
  Status Compute(KernelContext& ctx) const override {
    if (ctx.num_inputs() == 0 || !ctx.input(0)) return KernelError("expects at least one input");
    Tensor acc = *ctx.input(0);
    if (ctx.num_inputs() == 1) {
      ctx.output(0) = acc.Clone();
    } else {
      for (int i = 1; i < ctx.num_inputs(); ++i) {
        Tensor next;
        QUANTD_RETURN_IF_ERROR(ApplyBinary(acc, *ctx.input(i), nullptr, &next, ctx.threads(), Op{}));
        acc = std::move(next);
      }
      ctx.output(0) = std::move(acc);
    }
    if (mean_) {
      Tensor& out = ctx.output(0);
      double n = ctx.num_inputs();
      return DispatchFloat(out.dtype(), [&](auto tag) -> Status {
        using T = typename decltype(tag)::type;
        T* p = out.data<T>();
        for (int64_t i = 0; i < out.size(); ++i) p[i] = static_cast<T>(p[i] / n);
        return Status::Ok();
      });
    }
    return Status::Ok();
  }

 private:
  bool mean_;
};

// ----------------------------------------------------------------- unary

template <typename T, typename F>
Status UnaryMap(KernelContext& ctx, const Tensor& in, F f) {
  Tensor& out = BroadcastOutput(ctx, DataTypeOf<T>(), in.shape(), 1);
  const T* x = in.data<T>();
  T* y = out.data<T>();
  ParallelRange(ctx.threads(), in.size(), kParallelGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) y[i] = f(x[i]);
  });
  return Status::Ok();
}

enum class UnaryOp {
  kAbs, kNeg, kSign, kSqrt, kExp, kLog, kReciprocal, kFloor, kCeil, kRound, kErf,
  kSin, kCos, kTan, kAsin, kAcos, kAtan, kSinh, kCosh, kAsinh, kAcosh, kAtanh, kNot,
};

template <UnaryOp kOp>
class UnaryKernel final : public Kernel {
 public:
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects one input");
    if constexpr (kOp == UnaryOp::kNot) {
      if (in->dtype() != DataType::kBool) return KernelError("Not expects bool, got " + ToString(in->dtype()));
      return UnaryMap<bool>(ctx, *in, [](bool v) { return !v; });
    } else if constexpr (kOp == UnaryOp::kAbs || kOp == UnaryOp::kNeg || kOp == UnaryOp::kSign) {
      return DispatchNumeric(in->dtype(), [&](auto tag) -> Status {
        using T = typename decltype(tag)::type;
        if constexpr (kOp == UnaryOp::kAbs) {
          if constexpr (std::is_unsigned_v<T>) {
            return UnaryMap<T>(ctx, *in, [](T v) { return v; });
          } else {
            return UnaryMap<T>(ctx, *in, [](T v) { return static_cast<T>(v < 0 ? -v : v); });
          }
        } else if constexpr (kOp == UnaryOp::kNeg) {
          return UnaryMap<T>(ctx, *in, [](T v) { return static_cast<T>(-v); });
        } else {
          return UnaryMap<T>(ctx, *in, [](T v) { return static_cast<T>((T(0) < v) - (v < T(0))); });
        }
      });
    } else {
      return DispatchFloat(in->dtype(), [&](auto tag) -> Status {
        using T = typename decltype(tag)::type;
        constexpr bool f32 = std::is_same_v<T, float>;
        switch (kOp) {
          case UnaryOp::kSqrt: return UnaryMap<T>(ctx, *in, [](T v) { return std::sqrt(v); });
          case UnaryOp::kExp:
            if constexpr (f32) return UnaryMap<T>(ctx, *in, [](float v) { return FastExp(v); });
            return UnaryMap<T>(ctx, *in, [](T v) { return std::exp(v); });
          case UnaryOp::kLog: return UnaryMap<T>(ctx, *in, [](T v) { return std::log(v); });
          case UnaryOp::kReciprocal: return UnaryMap<T>(ctx, *in, [](T v) { return T(1) / v; });
          case UnaryOp::kFloor: return UnaryMap<T>(ctx, *in, [](T v) { return std::floor(v); });
          case UnaryOp::kCeil: return UnaryMap<T>(ctx, *in, [](T v) { return std::ceil(v); });
          case UnaryOp::kRound: return UnaryMap<T>(ctx, *in, [](T v) { return std::nearbyint(v); });
          case UnaryOp::kErf:
            if constexpr (f32) {
              Tensor& out = BroadcastOutput(ctx, DataType::kFloat, in->shape(), 1);
              const float* x = in->data<float>();
              float* y = out.data<float>();
              ParallelRange(ctx.threads(), in->size(), kParallelGrain / 4,
                            [&](int64_t b, int64_t e) { ErfArray(x + b, y + b, e - b); });
              return Status::Ok();
            }
            return UnaryMap<T>(ctx, *in, [](T v) { return std::erf(v); });
          case UnaryOp::kSin: return UnaryMap<T>(ctx, *in, [](T v) { return std::sin(v); });
          case UnaryOp::kCos: return UnaryMap<T>(ctx, *in, [](T v) { return std::cos(v); });
          case UnaryOp::kTan: return UnaryMap<T>(ctx, *in, [](T v) { return std::tan(v); });
          case UnaryOp::kAsin: return UnaryMap<T>(ctx, *in, [](T v) { return std::asin(v); });
          case UnaryOp::kAcos: return UnaryMap<T>(ctx, *in, [](T v) { return std::acos(v); });
          case UnaryOp::kAtan: return UnaryMap<T>(ctx, *in, [](T v) { return std::atan(v); });
          case UnaryOp::kSinh: return UnaryMap<T>(ctx, *in, [](T v) { return std::sinh(v); });
          case UnaryOp::kCosh: return UnaryMap<T>(ctx, *in, [](T v) { return std::cosh(v); });
          case UnaryOp::kAsinh: return UnaryMap<T>(ctx, *in, [](T v) { return std::asinh(v); });
          case UnaryOp::kAcosh: return UnaryMap<T>(ctx, *in, [](T v) { return std::acosh(v); });
          case UnaryOp::kAtanh: return UnaryMap<T>(ctx, *in, [](T v) { return std::atanh(v); });
          default: return Internal("RUNTIME_KERNEL_ERROR", "unhandled unary op");
        }
      });
    }
  }
};

// IsNaN / IsInf: float -> bool.
class IsNanKernel final : public Kernel {
 public:
  Status Compute(KernelContext& ctx) const override {
    const Tensor& in = *ctx.input(0);
    return DispatchFloat(in.dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      ctx.output(0) = Tensor(DataType::kBool, in.shape());
      bool* y = ctx.output(0).data<bool>();
      const T* x = in.data<T>();
      for (int64_t i = 0; i < in.size(); ++i) y[i] = x[i] != x[i];
      return Status::Ok();
    });
  }
};

class IsInfKernel final : public Kernel {
 public:
  IsInfKernel(bool positive, bool negative) : positive_(positive), negative_(negative) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor& in = *ctx.input(0);
    return DispatchFloat(in.dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      ctx.output(0) = Tensor(DataType::kBool, in.shape());
      bool* y = ctx.output(0).data<bool>();
      const T* x = in.data<T>();
      for (int64_t i = 0; i < in.size(); ++i) {
        y[i] = std::isinf(x[i]) && ((x[i] > 0 && positive_) || (x[i] < 0 && negative_));
      }
      return Status::Ok();
    });
  }

 private:
  bool positive_;
  bool negative_;
};

// ----------------------------------------------------------------- Where

class WhereKernel final : public Kernel {
 public:
  Status Compute(KernelContext& ctx) const override {
    const Tensor* c = ctx.input(0);
    const Tensor* x = ctx.input(1);
    const Tensor* y = ctx.input(2);
    if (!c || !x || !y) return KernelError("expects three inputs");
    if (c->dtype() != DataType::kBool) return KernelError("condition must be bool, got " + ToString(c->dtype()));
    if (x->dtype() != y->dtype()) return KernelError("X and Y have different element types");
    QUANTD_ASSIGN_OR_RETURN(auto layout, BroadcastLayout<3>::Make({&c->shape(), &x->shape(), &y->shape()}));
    ctx.output(0) = Tensor(x->dtype(), layout.out_shape);
    return DispatchStorage(x->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      const bool* pc = c->data<bool>();
      const T* px = x->data<T>();
      const T* py = y->data<T>();
      T* po = ctx.output(0).data<T>();
      ParallelRange(ctx.threads(), layout.total, kParallelGrain, [&](int64_t begin, int64_t end) {
        layout.ForRuns(begin, end, [&](int64_t o, int64_t n, const std::array<int64_t, 3>& off,
                                       const std::array<int64_t, 3>& inner) {
          const bool* cc = pc + off[0];
          const T* xx = px + off[1];
          const T* yy = py + off[2];
          T* zz = po + o;
          if (inner[0] && inner[1] && inner[2]) {
            for (int64_t i = 0; i < n; ++i) zz[i] = cc[i] ? xx[i] : yy[i];
          } else {
            for (int64_t i = 0; i < n; ++i) zz[i] = cc[i * inner[0]] ? xx[i * inner[1]] : yy[i * inner[2]];
          }
        });
      });
      return Status::Ok();
    });
  }
};

// ------------------------------------------------------------ Cast, Identity

template <typename Dst, typename Src>
void ConvertLoop(const Src* in, Dst* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<Dst, bool>) {
      out[i] = in[i] != Src(0);
    } else if constexpr (std::is_integral_v<Dst> && std::is_floating_point_v<Src>) {
      // Out-of-range float -> int is undefined in C++; saturate instead,
      // and NaN gives 0 (ONNX leaves both unspecified).
      Src v = in[i];
      if (!(v == v)) {
        out[i] = Dst(0);
      } else if (v <= static_cast<Src>(std::numeric_limits<Dst>::lowest())) {
        out[i] = std::numeric_limits<Dst>::lowest();
      } else if (v >= static_cast<Src>(std::numeric_limits<Dst>::max())) {
        out[i] = std::numeric_limits<Dst>::max();
      } else {
        out[i] = static_cast<Dst>(v);
      }
    } else {
      out[i] = static_cast<Dst>(in[i]);
    }
  }
}

// Dispatch over types with a native C++ arithmetic representation.
template <typename Fn>
Status DispatchArithmetic(DataType type, Fn&& fn) {
  if (type == DataType::kBool) return fn(TypeTag<bool>{});
  if (type == DataType::kInt4) return fn(TypeTag<int8_t>{});
  if (type == DataType::kUint4) return fn(TypeTag<uint8_t>{});
  return DispatchNumeric(type, fn);
}

Tensor HalfToFloatTensor(const Tensor& in) {
  Tensor out(DataType::kFloat, in.shape());
  const uint16_t* x = in.data<uint16_t>();
  float* y = out.data<float>();
  if (in.dtype() == DataType::kFloat16) {
    for (int64_t i = 0; i < in.size(); ++i) y[i] = HalfToFloat(x[i]);
  } else {
    for (int64_t i = 0; i < in.size(); ++i) y[i] = Bfloat16ToFloat(x[i]);
  }
  return out;
}

class CastKernel final : public Kernel {
 public:
  explicit CastKernel(DataType to) : to_(to) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects one input");
    DataType to = to_;
    if (to == DataType::kUndefined) {
      if (!ctx.input(1)) return KernelError("CastLike expects two inputs");
      to = ctx.input(1)->dtype();
    }
    if (in->dtype() == to) {
      ctx.output(0) = *in;
      return Status::Ok();
    }
    ctx.output(0) = Tensor(to, in->shape());
    return CastElements(*in, ctx.output(0));
  }

 private:
  DataType to_;
};

class IdentityKernel final : public Kernel {
 public:
  bool OutputIsInputView() const override { return true; }
  Status Compute(KernelContext& ctx) const override {
    if (!ctx.input(0)) return KernelError("expects one input");
    ctx.output(0) = *ctx.input(0);
    return Status::Ok();
  }
};

template <typename K>
KernelFactory Simple() {
  return [](const KernelInit&) { return MakeKernel<K>(); };
}

}  // namespace

Status CastElements(const Tensor& in, Tensor& out) {
  if (in.size() != out.size()) return KernelError("cast between tensors of different sizes");
  if (IsHalfType(in.dtype())) {
    Tensor f = HalfToFloatTensor(in);
    if (out.dtype() == DataType::kFloat) {
      std::memcpy(out.raw(), f.raw(), f.bytes());
      return Status::Ok();
    }
    return CastElements(f, out);
  }
  if (IsHalfType(out.dtype())) {
    Tensor f(DataType::kFloat, in.shape());
    if (in.dtype() == DataType::kFloat) {
      std::memcpy(f.raw(), in.raw(), in.bytes());
    } else {
      QUANTD_RETURN_IF_ERROR(CastElements(in, f));
    }
    const float* x = f.data<float>();
    uint16_t* y = out.data<uint16_t>();
    if (out.dtype() == DataType::kFloat16) {
      for (int64_t i = 0; i < f.size(); ++i) y[i] = FloatToHalf(x[i]);
    } else {
      for (int64_t i = 0; i < f.size(); ++i) y[i] = FloatToBfloat16(x[i]);
    }
    return Status::Ok();
  }
  return DispatchArithmetic(in.dtype(), [&](auto src_tag) -> Status {
    using Src = typename decltype(src_tag)::type;
    return DispatchArithmetic(out.dtype(), [&](auto dst_tag) -> Status {
      using Dst = typename decltype(dst_tag)::type;
      ConvertLoop<Dst, Src>(in.data<Src>(), out.data<Dst>(), in.size());
      if (out.dtype() == DataType::kInt4 || out.dtype() == DataType::kUint4) {
        // Saturate into the 4-bit range, keeping one value per byte.
        int lo = out.dtype() == DataType::kInt4 ? -8 : 0;
        int hi = out.dtype() == DataType::kInt4 ? 7 : 15;
        auto* p = out.data<Dst>();
        for (int64_t i = 0; i < out.size(); ++i) {
          if constexpr (!std::is_same_v<Dst, bool>) {
            p[i] = static_cast<Dst>(std::min<int>(std::max<int>(p[i], lo), hi));
          }
        }
      }
      return Status::Ok();
    });
  });
}

Tensor CastTo(const Tensor& in, DataType type) {
  if (in.dtype() == type) return in;
  Tensor out(type, in.shape());
  if (!CastElements(in, out).ok()) return Tensor();
  return out;
}

namespace {
void RegisterAll(KernelRegistry& registry) {
  auto binary = [&](const char* op, auto op_struct) {
    using Op = decltype(op_struct);
    registry.Register("", op, 1, kLatestOpset, [](const KernelInit&) { return MakeKernel<BinaryKernel<Op>>(); });
  };
  binary("Add", AddOp{});
  binary("Sub", SubOp{});
  binary("Mul", MulOp{});
  binary("Div", DivOp{});
  binary("And", AndOp{});
  binary("Or", OrOp{});
  binary("Xor", XorOp{});
  binary("Equal", EqualOp{});
  binary("Less", LessOp{});
  binary("Greater", GreaterOp{});
  binary("LessOrEqual", LessOrEqualOp{});
  binary("GreaterOrEqual", GreaterOrEqualOp{});
  registry.Register("", "Mod", 10, kLatestOpset, [](const KernelInit& init) {
    ModOp op;
    op.fmod = init.attributes.Int("fmod", 0) != 0;
    return MakeKernel<BinaryKernel<ModOp>>(op);
  });
  registry.Register("", "BitShift", 11, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    BitShiftOp op;
    std::string direction = init.attributes.String("direction", "");
    if (direction != "LEFT" && direction != "RIGHT") return NodeError("direction must be LEFT or RIGHT");
    op.left = direction == "LEFT";
    return MakeKernel<BinaryKernel<BitShiftOp>>(op);
  });
  registry.Register("", "Pow", 1, kLatestOpset, [](const KernelInit& init) {
    auto it = init.constant_inputs.find(1);
    return MakeKernel<PowKernel>(it == init.constant_inputs.end() ? nullptr : it->second);
  });
  registry.Register("", "Sum", 1, kLatestOpset, [](const KernelInit&) { return MakeKernel<VariadicKernel<AddOp>>(false); });
  registry.Register("", "Mean", 1, kLatestOpset, [](const KernelInit&) { return MakeKernel<VariadicKernel<AddOp>>(true); });
  registry.Register("", "Max", 1, kLatestOpset, [](const KernelInit&) { return MakeKernel<VariadicKernel<MaxOp>>(false); });
  registry.Register("", "Min", 1, kLatestOpset, [](const KernelInit&) { return MakeKernel<VariadicKernel<MinOp>>(false); });

  registry.Register("", "Abs", 1, kLatestOpset, Simple<UnaryKernel<UnaryOp::kAbs>>());
  registry.Register("", "Neg", 1, kLatestOpset, Simple<UnaryKernel<UnaryOp::kNeg>>());
  registry.Register("", "Sign", 9, kLatestOpset, Simple<UnaryKernel<UnaryOp::kSign>>());
  registry.Register("", "Sqrt", 1, kLatestOpset, Simple<UnaryKernel<UnaryOp::kSqrt>>());
  registry.Register("", "Exp", 1, kLatestOpset, Simple<UnaryKernel<UnaryOp::kExp>>());
  registry.Register("", "Log", 1, kLatestOpset, Simple<UnaryKernel<UnaryOp::kLog>>());
  registry.Register("", "Reciprocal", 1, kLatestOpset, Simple<UnaryKernel<UnaryOp::kReciprocal>>());
  registry.Register("", "Floor", 1, kLatestOpset, Simple<UnaryKernel<UnaryOp::kFloor>>());
  registry.Register("", "Ceil", 1, kLatestOpset, Simple<UnaryKernel<UnaryOp::kCeil>>());
  registry.Register("", "Round", 11, kLatestOpset, Simple<UnaryKernel<UnaryOp::kRound>>());
  registry.Register("", "Erf", 9, kLatestOpset, Simple<UnaryKernel<UnaryOp::kErf>>());
  registry.Register("", "Sin", 7, kLatestOpset, Simple<UnaryKernel<UnaryOp::kSin>>());
  registry.Register("", "Cos", 7, kLatestOpset, Simple<UnaryKernel<UnaryOp::kCos>>());
  registry.Register("", "Tan", 7, kLatestOpset, Simple<UnaryKernel<UnaryOp::kTan>>());
  registry.Register("", "Asin", 7, kLatestOpset, Simple<UnaryKernel<UnaryOp::kAsin>>());
  registry.Register("", "Acos", 7, kLatestOpset, Simple<UnaryKernel<UnaryOp::kAcos>>());
  registry.Register("", "Atan", 7, kLatestOpset, Simple<UnaryKernel<UnaryOp::kAtan>>());
  registry.Register("", "Sinh", 9, kLatestOpset, Simple<UnaryKernel<UnaryOp::kSinh>>());
  registry.Register("", "Cosh", 9, kLatestOpset, Simple<UnaryKernel<UnaryOp::kCosh>>());
  registry.Register("", "Asinh", 9, kLatestOpset, Simple<UnaryKernel<UnaryOp::kAsinh>>());
  registry.Register("", "Acosh", 9, kLatestOpset, Simple<UnaryKernel<UnaryOp::kAcosh>>());
  registry.Register("", "Atanh", 9, kLatestOpset, Simple<UnaryKernel<UnaryOp::kAtanh>>());
  registry.Register("", "Not", 1, kLatestOpset, Simple<UnaryKernel<UnaryOp::kNot>>());
  registry.Register("", "IsNaN", 9, kLatestOpset, Simple<IsNanKernel>());
  registry.Register("", "IsInf", 10, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<IsInfKernel>(init.attributes.Int("detect_positive", 1) != 0,
                                   init.attributes.Int("detect_negative", 1) != 0);
  });
  registry.Register("", "Where", 9, kLatestOpset, Simple<WhereKernel>());
  registry.Register("", "Identity", 1, kLatestOpset, Simple<IdentityKernel>());
  registry.Register("", "Cast", 1, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    QUANTD_ASSIGN_OR_RETURN(int64_t to, init.attributes.Int("to"));
    auto type = static_cast<DataType>(to);
    if (!IsSupported(type)) {
      return Status(StatusCode::kUnimplemented, "RUNTIME_UNSUPPORTED_TYPE",
                    "Cast to " + ToString(type) + " is not supported");
    }
    return MakeKernel<CastKernel>(type);
  });
  registry.Register("", "CastLike", 15, kLatestOpset,
                    [](const KernelInit&) { return MakeKernel<CastKernel>(DataType::kUndefined); });
}
}  // namespace

}  // namespace quantd::runtime::kernels

namespace quantd::runtime {
void RegisterElementwiseKernels(KernelRegistry& registry) { kernels::RegisterAll(registry); }
}  // namespace quantd::runtime
