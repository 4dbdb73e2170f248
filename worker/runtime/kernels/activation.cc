// Activations, Softmax/LogSoftmax/Hardmax and Dropout (inference).
#include <cmath>

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>
#include <onnx/onnx_pb.h>

#include "worker/runtime/kernels/kernel_util.h"

namespace quantd::runtime::kernels {

namespace {

using ArrayMap = Eigen::Map<Eigen::ArrayXf>;
using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

// Applies `fn(x, y, n)` (an array function) to float32 and `fd` per
// element to float64.
template <typename FA, typename FD>
Status FloatArrayMap(KernelContext& ctx, FA fa, FD fd) {
  const Tensor* in = ctx.input(0);
  if (!in) return KernelError("expects an input");
  if (in->dtype() == DataType::kFloat) {
    Tensor& out = BroadcastOutput(ctx, DataType::kFloat, in->shape(), 1);
    const float* x = in->data<float>();
    float* y = out.data<float>();
    ParallelRange(ctx.threads(), in->size(), kParallelGrain / 4,
                  [&](int64_t begin, int64_t end) { fa(x + begin, y + begin, end - begin); });
    return Status::Ok();
  }
  if (in->dtype() == DataType::kDouble) {
    Tensor& out = BroadcastOutput(ctx, DataType::kDouble, in->shape(), 1);
    const double* x = in->data<double>();
    double* y = out.data<double>();
    for (int64_t i = 0; i < in->size(); ++i) y[i] = fd(x[i]);
    return Status::Ok();
  }
  return KernelError("element type " + ToString(in->dtype()) + " is not supported here");
}

// Runs `body(x, y, tmp, n)` over blocks small enough for a stack buffer.
template <typename Body>
void Blocked(const float* x, float* y, int64_t n, Body body) {
  constexpr int64_t kBlock = 1024;
  alignas(64) float tmp[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    int64_t m = std::min(kBlock, n - b);
    body(x + b, y + b, tmp, m);
  }
}

// Applies a float function elementwise: `ff` for float32 (vectorisable
// forms), `fd` for float64.
template <typename FF, typename FD>
Status FloatMap(KernelContext& ctx, FF ff, FD fd) {
  const Tensor* in = ctx.input(0);
  if (!in) return KernelError("expects an input");
  if (in->dtype() == DataType::kFloat) {
    Tensor& out = BroadcastOutput(ctx, DataType::kFloat, in->shape(), 1);
    const float* x = in->data<float>();
    float* y = out.data<float>();
    ParallelRange(ctx.threads(), in->size(), kParallelGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) y[i] = ff(x[i]);
    });
    return Status::Ok();
  }
  if (in->dtype() == DataType::kDouble) {
    Tensor& out = BroadcastOutput(ctx, DataType::kDouble, in->shape(), 1);
    const double* x = in->data<double>();
    double* y = out.data<double>();
    for (int64_t i = 0; i < in->size(); ++i) y[i] = fd(x[i]);
    return Status::Ok();
  }
  return KernelError("element type " + ToString(in->dtype()) + " is not supported here");
}

// One kernel class for every parameterised pointwise activation; the
// switch sits outside the element loops.
enum class Act {
  kRelu, kLeakyRelu, kSigmoid, kHardSigmoid, kHardSwish, kTanh, kElu, kSelu, kSoftplus, kSoftsign,
  kCelu, kThresholdedRelu, kShrink, kGelu, kGeluTanh, kMish,
};

class ActivationKernel final : public Kernel {
 public:
  ActivationKernel(Act act, float alpha, float beta, float gamma) : act_(act), alpha_(alpha), beta_(beta), gamma_(gamma) {}

  Status Compute(KernelContext& ctx) const override {
    const float a = alpha_, b = beta_, g = gamma_;
    const double ad = alpha_, bd = beta_, gd = gamma_;
    switch (act_) {
      case Act::kRelu: {
        const Tensor* in = ctx.input(0);
        if (in && in->dtype() != DataType::kFloat && in->dtype() != DataType::kDouble) {
          return DispatchSigned(in->dtype(), [&](auto tag) -> Status {
            using T = typename decltype(tag)::type;
            Tensor& out = BroadcastOutput(ctx, in->dtype(), in->shape(), 1);
            const T* x = in->data<T>();
            T* y = out.data<T>();
            for (int64_t i = 0; i < in->size(); ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
            return Status::Ok();
          });
        }
        return FloatMap(ctx, [](float x) { return std::max(x, 0.0f); }, [](double x) { return x > 0 ? x : 0.0; });
      }
      case Act::kLeakyRelu:
        return FloatMap(ctx, [a](float x) { return x < 0 ? x * a : x; }, [ad](double x) { return x < 0 ? x * ad : x; });
      case Act::kSigmoid:
        return FloatArrayMap(ctx, SigmoidArray, [](double x) { return 1.0 / (1.0 + std::exp(-x)); });
      case Act::kHardSigmoid:
        return FloatMap(
            ctx, [a, b](float x) { return std::min(std::max(a * x + b, 0.0f), 1.0f); },
            [ad, bd](double x) { return std::min(std::max(ad * x + bd, 0.0), 1.0); });
      case Act::kHardSwish:
        return FloatMap(
            ctx, [](float x) { return x * std::min(std::max(x * (1.0f / 6.0f) + 0.5f, 0.0f), 1.0f); },
            [](double x) { return x * std::min(std::max(x / 6.0 + 0.5, 0.0), 1.0); });
      case Act::kTanh:
        return FloatArrayMap(ctx, TanhArray, [](double x) { return std::tanh(x); });
      case Act::kElu:
        return FloatMap(
            ctx, [a](float x) { return x < 0 ? a * (FastExp(x) - 1.0f) : x; },
            [ad](double x) { return x < 0 ? ad * std::expm1(x) : x; });
      case Act::kSelu:
        return FloatMap(
            ctx, [a, g](float x) { return x <= 0 ? g * a * (FastExp(x) - 1.0f) : g * x; },
            [ad, gd](double x) { return x <= 0 ? gd * ad * std::expm1(x) : gd * x; });
      case Act::kSoftplus:
        return FloatMap(
            ctx, [](float x) { return std::max(x, 0.0f) + std::log1p(FastExp(-std::fabs(x))); },
            [](double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::fabs(x))); });
      case Act::kSoftsign:
        return FloatMap(ctx, [](float x) { return x / (1.0f + std::fabs(x)); },
                        [](double x) { return x / (1.0 + std::fabs(x)); });
      case Act::kCelu:
        return FloatMap(
            ctx, [a](float x) { return std::max(x, 0.0f) + std::min(0.0f, a * (FastExp(x / a) - 1.0f)); },
            [ad](double x) { return std::max(x, 0.0) + std::min(0.0, ad * std::expm1(x / ad)); });
      case Act::kThresholdedRelu:
        return FloatMap(ctx, [a](float x) { return x > a ? x : 0.0f; }, [ad](double x) { return x > ad ? x : 0.0; });
      case Act::kShrink: {
        // Shrink also accepts integer types.
        const Tensor* in = ctx.input(0);
        if (in && in->dtype() != DataType::kFloat && in->dtype() != DataType::kDouble) {
          return DispatchNumeric(in->dtype(), [&](auto tag) -> Status {
            using T = typename decltype(tag)::type;
            ctx.output(0) = Tensor(in->dtype(), in->shape());
            const T* x = in->data<T>();
            T* y = ctx.output(0).data<T>();
            for (int64_t i = 0; i < in->size(); ++i) {
              double v = static_cast<double>(x[i]);
              y[i] = static_cast<T>(v < -bd ? v + gd : (v > bd ? v - gd : 0.0));
            }
            return Status::Ok();
          });
        }
        // beta_ holds lambd, gamma_ the bias.
        return FloatMap(
            ctx, [b, g](float x) { return x < -b ? x + g : (x > b ? x - g : 0.0f); },
            [bd, gd](double x) { return x < -bd ? x + gd : (x > bd ? x - gd : 0.0); });
      }
      case Act::kGelu:
        return FloatArrayMap(
            ctx,
            [](const float* x, float* y, int64_t n) {
              Blocked(x, y, n, [](const float* xb, float* yb, float* t, int64_t m) {
                for (int64_t i = 0; i < m; ++i) t[i] = xb[i] * 0.70710678118654752f;
                ErfArray(t, t, m);
                for (int64_t i = 0; i < m; ++i) yb[i] = 0.5f * xb[i] * (1.0f + t[i]);
              });
            },
            [](double x) { return 0.5 * x * (1.0 + std::erf(x * 0.70710678118654752)); });
      case Act::kGeluTanh:
        return FloatArrayMap(
            ctx,
            [](const float* x, float* y, int64_t n) {
              Blocked(x, y, n, [](const float* xb, float* yb, float* t, int64_t m) {
                for (int64_t i = 0; i < m; ++i) t[i] = 0.7978845608028654f * (xb[i] + 0.044715f * xb[i] * xb[i] * xb[i]);
                TanhArray(t, t, m);
                for (int64_t i = 0; i < m; ++i) yb[i] = 0.5f * xb[i] * (1.0f + t[i]);
              });
            },
            [](double x) { return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); });
      case Act::kMish:
        return FloatArrayMap(
            ctx,
            [](const float* x, float* y, int64_t n) {
              Blocked(x, y, n, [](const float* xb, float* yb, float* t, int64_t m) {
                for (int64_t i = 0; i < m; ++i) t[i] = std::max(xb[i], 0.0f) + std::log1p(FastExp(-std::fabs(xb[i])));
                TanhArray(t, t, m);
                for (int64_t i = 0; i < m; ++i) yb[i] = xb[i] * t[i];
              });
            },
            [](double x) { return x * std::tanh(std::log1p(std::exp(x))); });
    }
    return Internal("RUNTIME_KERNEL_ERROR", "unhandled activation");
  }

 private:
  Act act_;
  float alpha_;
  float beta_;
  float gamma_;
};

// PRelu: slope broadcasts unidirectionally to X.
class PReluKernel final : public Kernel {
 public:
  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    const Tensor* slope = ctx.input(1);
    if (!x || !slope) return KernelError("expects X and slope");
    if (x->dtype() != slope->dtype()) return KernelError("X and slope have different element types");
    QUANTD_ASSIGN_OR_RETURN(auto layout, BroadcastLayout<2>::Make({&x->shape(), &slope->shape()}));
    if (layout.out_shape != x->shape()) {
      return KernelError("slope " + ShapeToString(slope->shape()) + " does not broadcast to X " +
                         ShapeToString(x->shape()));
    }
    return DispatchSigned(x->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      Tensor& out = BroadcastOutput(ctx, x->dtype(), x->shape(), 1);
      BinaryLoop<T, T>(x->data<T>(), slope->data<T>(), out.data<T>(), layout, ctx.threads(),
                       [](T v, T s) { return v < T(0) ? static_cast<T>(v * s) : v; });
      return Status::Ok();
    });
  }
};

// Clip: bounds as attributes (opset < 11) or optional scalar inputs.
class ClipKernel final : public Kernel {
 public:
  ClipKernel(bool from_inputs, float min, float max) : from_inputs_(from_inputs), min_(min), max_(max) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects an input");
    return DispatchNumeric(in->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      T lo = std::numeric_limits<T>::lowest();
      T hi = std::numeric_limits<T>::max();
      if (from_inputs_) {
        for (int k = 1; k <= 2; ++k) {
          const Tensor* bound = ctx.input(k);
          if (!bound) continue;
          if (bound->dtype() != in->dtype() || bound->size() != 1) {
            return KernelError("Clip bounds must be scalars of the input's type");
          }
          (k == 1 ? lo : hi) = bound->data<T>()[0];
        }
      } else {
        lo = static_cast<T>(std::max<double>(min_, static_cast<double>(lo)));
        hi = static_cast<T>(std::min<double>(max_, static_cast<double>(hi)));
      }
      Tensor& out = BroadcastOutput(ctx, in->dtype(), in->shape(), 1);
      const T* x = in->data<T>();
      T* y = out.data<T>();
      ParallelRange(ctx.threads(), in->size(), kParallelGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) y[i] = std::min(std::max(x[i], lo), hi);
      });
      return Status::Ok();
    });
  }

 private:
  bool from_inputs_;
  float min_;
  float max_;
};

enum class SoftmaxKind { kSoftmax, kLogSoftmax, kHardmax };

// Softmax family over one axis. Opset < 13 flattens the input to 2-D at
// `axis` and normalises over everything after it.
class SoftmaxKernel final : public Kernel {
 public:
  SoftmaxKernel(SoftmaxKind kind, int64_t axis, bool legacy) : kind_(kind), axis_(axis), legacy_(legacy) {}

  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects an input");
    int rank = in->rank();
    int64_t outer = 1, n = 1, inner = 1;
    if (rank == 0) {
      n = 1;
    } else {
      QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_, rank));
      for (int d = 0; d < axis; ++d) outer *= in->dim(d);
      if (legacy_) {
        for (int d = axis; d < rank; ++d) n *= in->dim(d);
      } else {
        n = in->dim(axis);
        for (int d = axis + 1; d < rank; ++d) inner *= in->dim(d);
      }
    }
    return DispatchFloat(in->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      Tensor& out = BroadcastOutput(ctx, in->dtype(), in->shape(), 1);
      // An empty input (an empty batch, or an empty axis to normalise over)
      // has nothing to compute, and the rows below would read past it.
      if (out.size() == 0) return Status::Ok();
      const T* x = in->data<T>();
      T* y = out.data<T>();
      int64_t block = n * inner;
      int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(block, 1));
      ParallelRange(ctx.threads(), outer, grain, [&](int64_t begin, int64_t end) {
        std::vector<T> acc(static_cast<size_t>(inner));
        std::vector<T> mx(static_cast<size_t>(inner));
        for (int64_t o = begin; o < end; ++o) {
          if (inner == 1) {
            Row(x + o * block, y + o * block, n);
          } else {
            Strided(x + o * block, y + o * block, n, inner, mx.data(), acc.data());
          }
        }
      });
      return Status::Ok();
    });
  }

 private:
  template <typename T>
  static T Exp(T v) {
    if constexpr (std::is_same_v<T, float>) {
      return FastExp(v);
    } else {
      return std::exp(v);
    }
  }

  template <typename T>
  void Row(const T* x, T* y, int64_t n) const {
    if (n == 0) return;
    if (kind_ == SoftmaxKind::kHardmax) {
      int64_t arg = 0;
      for (int64_t i = 1; i < n; ++i) {
        if (x[i] > x[arg]) arg = i;
      }
      for (int64_t i = 0; i < n; ++i) y[i] = T(0);
      y[arg] = T(1);
      return;
    }
    // Separate passes (max, exp, lane-split sum, scale) so each one is a
    // plain vectorisable loop.
    // y may alias x (in-place), so LogSoftmax must not store the
    // exponentials.
    T m = x[0];
    for (int64_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
    T lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    if (kind_ == SoftmaxKind::kSoftmax) {
      for (int64_t k = 0; k < n; ++k) y[k] = Exp<T>(x[k] - m);
      for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; ++j) lanes[j] += y[i + j];
      }
    } else {
      for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; ++j) lanes[j] += Exp<T>(x[i + j] - m);
      }
    }
    T sum = 0;
    for (int j = 0; j < 8; ++j) sum += lanes[j];
    for (; i < n; ++i) sum += kind_ == SoftmaxKind::kSoftmax ? y[i] : Exp<T>(x[i] - m);
    if (kind_ == SoftmaxKind::kSoftmax) {
      const T inv = T(1) / sum;
      for (int64_t k = 0; k < n; ++k) y[k] *= inv;
    } else {
      const T shift = m + std::log(sum);
      for (int64_t k = 0; k < n; ++k) y[k] = x[k] - shift;
    }
  }

  // Normalises over a strided axis, vectorised across the inner positions.
  template <typename T>
  void Strided(const T* x, T* y, int64_t n, int64_t inner, T* mx, T* acc) const {
    for (int64_t j = 0; j < inner; ++j) {
      mx[j] = x[j];
      acc[j] = 0;
    }
    std::vector<int64_t> arg;
    if (kind_ == SoftmaxKind::kHardmax) arg.assign(static_cast<size_t>(inner), 0);
    for (int64_t i = 1; i < n; ++i) {
      const T* xi = x + i * inner;
      if (kind_ == SoftmaxKind::kHardmax) {
        for (int64_t j = 0; j < inner; ++j) {
          if (xi[j] > mx[j]) {
            mx[j] = xi[j];
            arg[static_cast<size_t>(j)] = i;
          }
        }
      } else {
        for (int64_t j = 0; j < inner; ++j) mx[j] = xi[j] > mx[j] ? xi[j] : mx[j];
      }
    }
    if (kind_ == SoftmaxKind::kHardmax) {
      for (int64_t i = 0; i < n * inner; ++i) y[i] = T(0);
      for (int64_t j = 0; j < inner; ++j) y[arg[static_cast<size_t>(j)] * inner + j] = T(1);
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      const T* xi = x + i * inner;
      T* yi = y + i * inner;
      for (int64_t j = 0; j < inner; ++j) {
        T e = Exp<T>(xi[j] - mx[j]);
        if (kind_ == SoftmaxKind::kSoftmax) yi[j] = e;
        acc[j] += e;
      }
    }
    if (kind_ == SoftmaxKind::kSoftmax) {
      for (int64_t j = 0; j < inner; ++j) acc[j] = T(1) / acc[j];
      for (int64_t i = 0; i < n; ++i) {
        T* yi = y + i * inner;
        for (int64_t j = 0; j < inner; ++j) yi[j] *= acc[j];
      }
    } else {
      for (int64_t j = 0; j < inner; ++j) acc[j] = mx[j] + std::log(acc[j]);
      for (int64_t i = 0; i < n; ++i) {
        const T* xi = x + i * inner;
        T* yi = y + i * inner;
        for (int64_t j = 0; j < inner; ++j) yi[j] = xi[j] - acc[j];
      }
    }
  }

  SoftmaxKind kind_;
  int64_t axis_;
  bool legacy_;
};

// Dropout at inference: Y = X, and the optional mask is all true.
class DropoutKernel final : public Kernel {
 public:
  bool OutputIsInputView() const override { return true; }
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects an input");
    if (const Tensor* training = ctx.input(2); training && training->size() == 1 && training->data<bool>()[0]) {
      const Tensor* ratio = ctx.input(1);
      bool zero_ratio = ratio && ratio->size() == 1 &&
                        ((ratio->dtype() == DataType::kFloat && ratio->data<float>()[0] == 0.0f) ||
                         (ratio->dtype() == DataType::kDouble && ratio->data<double>()[0] == 0.0));
      if (!zero_ratio) return KernelError("Dropout in training mode is not supported");
    }
    ctx.output(0) = *in;
    if (ctx.num_outputs() > 1) {
      ctx.output(1) = Tensor(DataType::kBool, in->shape());
      std::fill(ctx.output(1).data<bool>(), ctx.output(1).data<bool>() + in->size(), true);
    }
    return Status::Ok();
  }
};

KernelFactory ActFactory(Act act, float alpha = 0, float beta = 0, float gamma = 0) {
  return [=](const KernelInit& init) {
    const auto& attrs = init.attributes;
    return MakeKernel<ActivationKernel>(act, attrs.Float("alpha", alpha), attrs.Float("beta", beta),
                                        attrs.Float("gamma", gamma));
  };
}

void RegisterAll(KernelRegistry& registry) {
  registry.Register("", "Relu", 1, kLatestOpset, ActFactory(Act::kRelu));
  registry.Register("", "LeakyRelu", 1, kLatestOpset, ActFactory(Act::kLeakyRelu, 0.01f));
  registry.Register("", "Sigmoid", 1, kLatestOpset, ActFactory(Act::kSigmoid));
  registry.Register("", "HardSigmoid", 1, kLatestOpset, ActFactory(Act::kHardSigmoid, 0.2f, 0.5f));
  registry.Register("", "HardSwish", 14, kLatestOpset, ActFactory(Act::kHardSwish));
  registry.Register("", "Tanh", 1, kLatestOpset, ActFactory(Act::kTanh));
  registry.Register("", "Elu", 1, kLatestOpset, ActFactory(Act::kElu, 1.0f));
  registry.Register("", "Selu", 1, kLatestOpset,
                    ActFactory(Act::kSelu, 1.67326319217681884765625f, 0, 1.05070102214813232421875f));
  registry.Register("", "Softplus", 1, kLatestOpset, ActFactory(Act::kSoftplus));
  registry.Register("", "Softsign", 1, kLatestOpset, ActFactory(Act::kSoftsign));
  registry.Register("", "Celu", 12, kLatestOpset, ActFactory(Act::kCelu, 1.0f));
  registry.Register("", "ThresholdedRelu", 10, kLatestOpset, ActFactory(Act::kThresholdedRelu, 1.0f));
  registry.Register("", "Mish", 18, kLatestOpset, ActFactory(Act::kMish));
  registry.Register("", "Shrink", 9, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<ActivationKernel>(Act::kShrink, 0.0f, init.attributes.Float("lambd", 0.5f),
                                        init.attributes.Float("bias", 0.0f));
  });
  registry.Register("", "Gelu", 20, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    std::string approximate = init.attributes.String("approximate", "none");
    if (approximate != "none" && approximate != "tanh") return NodeError("approximate must be 'none' or 'tanh'");
    return MakeKernel<ActivationKernel>(approximate == "tanh" ? Act::kGeluTanh : Act::kGelu, 0.0f, 0.0f, 0.0f);
  });
  registry.Register("", "PRelu", 1, kLatestOpset, [](const KernelInit&) { return MakeKernel<PReluKernel>(); });
  registry.Register("", "Clip", 1, 10, [](const KernelInit& init) {
    return MakeKernel<ClipKernel>(false, init.attributes.Float("min", -std::numeric_limits<float>::max()),
                                  init.attributes.Float("max", std::numeric_limits<float>::max()));
  });
  registry.Register("", "Clip", 11, kLatestOpset, [](const KernelInit&) { return MakeKernel<ClipKernel>(true, 0.0f, 0.0f); });
  struct Variant {
    const char* op;
    SoftmaxKind kind;
  };
  for (Variant v : {Variant{"Softmax", SoftmaxKind::kSoftmax}, Variant{"LogSoftmax", SoftmaxKind::kLogSoftmax},
                    Variant{"Hardmax", SoftmaxKind::kHardmax}}) {
    SoftmaxKind kind = v.kind;
    registry.Register("", v.op, 1, 12, [kind](const KernelInit& init) {
      return MakeKernel<SoftmaxKernel>(kind, init.attributes.Int("axis", 1), true);
    });
    registry.Register("", v.op, 13, kLatestOpset, [kind](const KernelInit& init) {
      return MakeKernel<SoftmaxKernel>(kind, init.attributes.Int("axis", -1), false);
    });
  }
  registry.Register("", "Dropout", 1, kLatestOpset, [](const KernelInit&) { return MakeKernel<DropoutKernel>(); });
}

}  // namespace

void ErfArray(const float* x, float* y, int64_t n) { ArrayMap(y, n) = ConstArrayMap(x, n).erf(); }
void TanhArray(const float* x, float* y, int64_t n) { ArrayMap(y, n) = ConstArrayMap(x, n).tanh(); }
void SigmoidArray(const float* x, float* y, int64_t n) { ArrayMap(y, n) = ConstArrayMap(x, n).logistic(); }

}  // namespace quantd::runtime::kernels

namespace quantd::runtime {
void RegisterActivationKernels(KernelRegistry& registry) { kernels::RegisterAll(registry); }
}  // namespace quantd::runtime
