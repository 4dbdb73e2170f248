// BatchNormalization (inference), LayerNormalization, InstanceNormalization,
// MeanVarianceNormalization and LpNormalization.
#include <cmath>

#include <onnx/onnx_pb.h>

#include "worker/runtime/kernels/kernel_util.h"

namespace quantd::runtime::kernels {

namespace {

// Sum of a float run with split accumulators (vectorisable).
inline float SumRun(const float* x, int64_t n) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) lanes[j] += x[i + j];
  }
  float s = 0;
  for (int j = 0; j < 8; ++j) s += lanes[j];
  for (; i < n; ++i) s += x[i];
  return s;
}

inline float SquaredDeviationRun(const float* x, int64_t n, float mean) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      float d = x[i + j] - mean;
      lanes[j] += d * d;
    }
  }
  float s = 0;
  for (int j = 0; j < 8; ++j) s += lanes[j];
  for (; i < n; ++i) s += (x[i] - mean) * (x[i] - mean);
  return s;
}

// Reads a per-channel float vector, converting from double if needed.
StatusOr<std::vector<float>> FloatVector(const Tensor* t, int64_t expected, const char* what) {
  if (!t) return KernelError(std::string("missing ") + what);
  if (t->size() != expected) {
    return KernelError(std::string(what) + " has " + std::to_string(t->size()) + " elements, expected " +
                       std::to_string(expected));
  }
  Tensor f = CastTo(*t, DataType::kFloat);
  if (!f.defined()) return KernelError(std::string(what) + " has an unsupported type");
  return std::vector<float>(f.data<float>(), f.data<float>() + f.size());
}

// y = x * a[c] + b[c] over [N, C, spatial...].
Status ChannelAffine(KernelContext& ctx, const Tensor& x, const std::vector<float>& a, const std::vector<float>& b) {
  const int64_t n = x.rank() > 0 ? x.dim(0) : 1;
  const int64_t c = x.rank() > 1 ? x.dim(1) : 1;
  const int64_t spatial = n * c != 0 ? x.size() / (n * c) : 0;
  if (static_cast<int64_t>(a.size()) != c) return KernelError("channel count mismatch");
  if (x.dtype() == DataType::kDouble) {
    ctx.output(0) = Tensor(DataType::kDouble, x.shape());
    const double* px = x.data<double>();
    double* py = ctx.output(0).data<double>();
    for (int64_t i = 0; i < n * c; ++i) {
      for (int64_t s = 0; s < spatial; ++s) py[i * spatial + s] = px[i * spatial + s] * a[static_cast<size_t>(i % c)] + b[static_cast<size_t>(i % c)];
    }
    return Status::Ok();
  }
  if (x.dtype() != DataType::kFloat) return KernelError("element type " + ToString(x.dtype()) + " is not supported");
  Tensor& out = BroadcastOutput(ctx, DataType::kFloat, x.shape(), 1);
  const float* px = x.data<float>();
  float* py = out.data<float>();
  int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(spatial, 1));
  ParallelRange(ctx.threads(), n * c, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float sa = a[static_cast<size_t>(i % c)], sb = b[static_cast<size_t>(i % c)];
      const float* xi = px + i * spatial;
      float* yi = py + i * spatial;
      for (int64_t s = 0; s < spatial; ++s) yi[s] = xi[s] * sa + sb;
    }
  });
  return Status::Ok();
}

class BatchNormKernel final : public Kernel {
 public:
  BatchNormKernel(float epsilon, std::vector<float> a, std::vector<float> b)
      : epsilon_(epsilon), a_(std::move(a)), b_(std::move(b)) {}

  // Folds scale, bias, mean and variance into y = x * a + b.
  static StatusOr<std::pair<std::vector<float>, std::vector<float>>> Fold(const Tensor* scale, const Tensor* bias,
                                                                            const Tensor* mean, const Tensor* var,
                                                                            int64_t c, float epsilon) {
    QUANTD_ASSIGN_OR_RETURN(auto s, FloatVector(scale, c, "scale"));
    QUANTD_ASSIGN_OR_RETURN(auto b, FloatVector(bias, c, "B"));
    QUANTD_ASSIGN_OR_RETURN(auto m, FloatVector(mean, c, "mean"));
    QUANTD_ASSIGN_OR_RETURN(auto v, FloatVector(var, c, "var"));
    std::vector<float> a(static_cast<size_t>(c)), o(static_cast<size_t>(c));
    for (size_t i = 0; i < a.size(); ++i) {
      a[i] = s[i] / std::sqrt(v[i] + epsilon);
      o[i] = b[i] - m[i] * a[i];
    }
    return std::make_pair(std::move(a), std::move(o));
  }

  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (!x) return KernelError("expects X");
    if (!a_.empty()) return ChannelAffine(ctx, *x, a_, b_);
    const int64_t c = x->rank() > 1 ? x->dim(1) : 1;
    QUANTD_ASSIGN_OR_RETURN(auto folded, Fold(ctx.input(1), ctx.input(2), ctx.input(3), ctx.input(4), c, epsilon_));
    return ChannelAffine(ctx, *x, folded.first, folded.second);
  }

 private:
  float epsilon_;
  std::vector<float> a_, b_;  // precomputed when all parameters are constant
};

StatusOr<std::unique_ptr<Kernel>> MakeBatchNorm(const KernelInit& init) {
  if (init.attributes.Int("training_mode", 0) != 0) return NodeError("BatchNormalization in training mode is not supported");
  if (init.opset < 9 && init.attributes.Int("spatial", 1) == 0) return NodeError("non-spatial BatchNormalization is not supported");
  for (int i = 5; i < init.node.output_size(); ++i) {
    if (!init.node.output(i).empty()) return NodeError("BatchNormalization training outputs are not supported");
  }
  float epsilon = init.attributes.Float("epsilon", 1e-5f);
  bool all_constant = true;
  for (int i = 1; i <= 4; ++i) all_constant = all_constant && init.constant_inputs.count(i);
  if (all_constant) {
    const Tensor* scale = init.constant_inputs.at(1);
    auto folded = BatchNormKernel::Fold(scale, init.constant_inputs.at(2), init.constant_inputs.at(3),
                                        init.constant_inputs.at(4), scale->size(), epsilon);
    if (!folded.ok()) return NodeError(folded.status().message());
    return MakeKernel<BatchNormKernel>(epsilon, std::move(folded->first), std::move(folded->second));
  }
  return MakeKernel<BatchNormKernel>(epsilon, std::vector<float>{}, std::vector<float>{});
}

// Returns a float buffer of `n` values of `t` broadcast to `target` (the
// normalised shape), or its own data when it already has that size.
StatusOr<Tensor> ExpandTo(const Tensor& t, const Shape& target) {
  Tensor f = CastTo(t, DataType::kFloat);
  if (!f.defined()) return KernelError("unsupported parameter type");
  if (f.size() == NumElements(target)) return f;
  QUANTD_ASSIGN_OR_RETURN(auto layout, BroadcastLayout<2>::Make({&f.shape(), &target}));
  if (layout.out_shape.size() > target.size() || layout.total != NumElements(target)) {
    return KernelError("parameter " + ShapeToString(t.shape()) + " does not broadcast to " + ShapeToString(target));
  }
  Tensor out(DataType::kFloat, target);
  const float* src = f.data<float>();
  float* dst = out.data<float>();
  layout.ForRuns(0, layout.total, [&](int64_t o, int64_t n, const std::array<int64_t, 2>& off, const std::array<int64_t, 2>& inner) {
    for (int64_t i = 0; i < n; ++i) dst[o + i] = src[off[0] + i * inner[0]];
  });
  return out;
}

class LayerNormKernel final : public Kernel {
 public:
  LayerNormKernel(int64_t axis, float epsilon) : axis_(axis), epsilon_(epsilon) {}

  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    const Tensor* scale = ctx.input(1);
    if (!x || !scale) return KernelError("expects X and Scale");
    QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_, x->rank()));
    Shape norm_shape(x->shape().begin() + axis, x->shape().end());
    const int64_t d = NumElements(norm_shape);
    const int64_t rows = d ? x->size() / d : 0;
    Tensor xf = CastTo(*x, DataType::kFloat);
    if (!xf.defined()) return KernelError("unsupported input type");
    QUANTD_ASSIGN_OR_RETURN(Tensor s, ExpandTo(*scale, norm_shape));
    Tensor b;
    if (ctx.input(2)) {
      QUANTD_ASSIGN_OR_RETURN(b, ExpandTo(*ctx.input(2), norm_shape));
    }
    Tensor y(DataType::kFloat, x->shape());
    Shape stat_shape(x->shape().begin(), x->shape().begin() + axis);
    stat_shape.resize(static_cast<size_t>(x->rank()), 1);
    Tensor mean_out(DataType::kFloat, stat_shape), inv_out(DataType::kFloat, stat_shape);
    const float* px = xf.data<float>();
    const float* ps = s.data<float>();
    const float* pb = b.defined() ? b.data<float>() : nullptr;
    float* py = y.data<float>();
    float* pm = mean_out.data<float>();
    float* pi = inv_out.data<float>();
    const float eps = epsilon_;
    int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(d, 1));
    ParallelRange(ctx.threads(), rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* xr = px + r * d;
        float* yr = py + r * d;
        float mean = SumRun(xr, d) / static_cast<float>(d);
        float var = SquaredDeviationRun(xr, d, mean) / static_cast<float>(d);
        float inv = 1.0f / std::sqrt(var + eps);
        pm[r] = mean;
        pi[r] = inv;
        if (pb) {
          for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - mean) * inv * ps[i] + pb[i];
        } else {
          for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - mean) * inv * ps[i];
        }
      }
    });
    ctx.output(0) = x->dtype() == DataType::kFloat ? std::move(y) : CastTo(y, x->dtype());
    if (ctx.num_outputs() > 1) ctx.output(1) = std::move(mean_out);
    if (ctx.num_outputs() > 2) ctx.output(2) = std::move(inv_out);
    return Status::Ok();
  }

 private:
  int64_t axis_;
  float epsilon_;
};

class InstanceNormKernel final : public Kernel {
 public:
  explicit InstanceNormKernel(float epsilon) : epsilon_(epsilon) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (!x || x->rank() < 2) return KernelError("expects X of rank >= 2");
    const int64_t n = x->dim(0), c = x->dim(1);
    const int64_t spatial = n * c != 0 ? x->size() / (n * c) : 0;
    QUANTD_ASSIGN_OR_RETURN(auto scale, FloatVector(ctx.input(1), c, "scale"));
    QUANTD_ASSIGN_OR_RETURN(auto bias, FloatVector(ctx.input(2), c, "B"));
    Tensor xf = CastTo(*x, DataType::kFloat);
    if (!xf.defined()) return KernelError("unsupported input type");
    Tensor y(DataType::kFloat, x->shape());
    const float* px = xf.data<float>();
    float* py = y.data<float>();
    ParallelRange(ctx.threads(), n * c, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float* xi = px + i * spatial;
        float* yi = py + i * spatial;
        float mean = SumRun(xi, spatial) / static_cast<float>(spatial);
        float var = SquaredDeviationRun(xi, spatial, mean) / static_cast<float>(spatial);
        float a = scale[static_cast<size_t>(i % c)] / std::sqrt(var + epsilon_);
        float b = bias[static_cast<size_t>(i % c)] - mean * a;
        for (int64_t s = 0; s < spatial; ++s) yi[s] = xi[s] * a + b;
      }
    });
    ctx.output(0) = x->dtype() == DataType::kFloat ? std::move(y) : CastTo(y, x->dtype());
    return Status::Ok();
  }

 private:
  float epsilon_;
};

// (X - mean) / sqrt(var + 1e-9) over `axes` (default N, H, W).
class MvnKernel final : public Kernel {
 public:
  explicit MvnKernel(std::vector<int64_t> axes) : axes_(std::move(axes)) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (!x || x->dtype() != DataType::kFloat) return KernelError("expects a float32 input");
    const int rank = x->rank();
    Shape kept = x->shape();
    for (int64_t a : axes_) {
      QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(a, rank));
      kept[static_cast<size_t>(axis)] = 1;
    }
    QUANTD_ASSIGN_OR_RETURN(auto layout, BroadcastLayout<2>::Make({&x->shape(), &kept}));
    const int64_t groups = NumElements(kept);
    const double count = groups ? static_cast<double>(x->size()) / static_cast<double>(groups) : 1.0;
    std::vector<double> sum(static_cast<size_t>(groups), 0.0), sq(static_cast<size_t>(groups), 0.0);
    const float* px = x->data<float>();
    auto walk = [&](auto&& fn) {
      layout.ForRuns(0, x->size(), [&](int64_t pos, int64_t n, const std::array<int64_t, 2>& off,
                                       const std::array<int64_t, 2>& inner) {
        for (int64_t i = 0; i < n; ++i) fn(pos + i, off[1] + i * inner[1]);
      });
    };
    walk([&](int64_t i, int64_t g) {
      sum[static_cast<size_t>(g)] += px[i];
      sq[static_cast<size_t>(g)] += static_cast<double>(px[i]) * px[i];
    });
    std::vector<float> mean(static_cast<size_t>(groups)), inv(static_cast<size_t>(groups));
    for (size_t g = 0; g < mean.size(); ++g) {
      double m = sum[g] / count;
      double var = sq[g] / count - m * m;
      mean[g] = static_cast<float>(m);
      inv[g] = static_cast<float>(1.0 / std::sqrt(std::max(var, 0.0) + 1e-9));
    }
    ctx.output(0) = Tensor(DataType::kFloat, x->shape());
    float* py = ctx.output(0).data<float>();
    walk([&](int64_t i, int64_t g) { py[i] = (px[i] - mean[static_cast<size_t>(g)]) * inv[static_cast<size_t>(g)]; });
    return Status::Ok();
  }

 private:
  std::vector<int64_t> axes_;
};

class LpNormKernel final : public Kernel {
 public:
  LpNormKernel(int64_t axis, int64_t p) : axis_(axis), p_(p) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (!x) return KernelError("expects an input");
    if (p_ != 1 && p_ != 2) return KernelError("p must be 1 or 2");
    QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_, x->rank()));
    int64_t outer = 1, n = x->dim(axis), inner = 1;
    for (int d = 0; d < axis; ++d) outer *= x->dim(d);
    for (int d = axis + 1; d < x->rank(); ++d) inner *= x->dim(d);
    return DispatchFloat(x->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      ctx.output(0) = Tensor(x->dtype(), x->shape());
      const T* px = x->data<T>();
      T* py = ctx.output(0).data<T>();
      for (int64_t o = 0; o < outer; ++o) {
        for (int64_t j = 0; j < inner; ++j) {
          double norm = 0;
          for (int64_t i = 0; i < n; ++i) {
            double v = px[(o * n + i) * inner + j];
            norm += p_ == 1 ? std::fabs(v) : v * v;
          }
          if (p_ == 2) norm = std::sqrt(norm);
          for (int64_t i = 0; i < n; ++i) {
            int64_t k = (o * n + i) * inner + j;
            py[k] = norm == 0 ? T(0) : static_cast<T>(px[k] / norm);
          }
        }
      }
      return Status::Ok();
    });
  }

 private:
  int64_t axis_;
  int64_t p_;
};

// LRN across channels: y = x / (bias + alpha / size * sum(x^2 over the
// channel window))^beta.
class LrnKernel final : public Kernel {
 public:
  LrnKernel(int64_t size, float alpha, float beta, float bias) : size_(size), alpha_(alpha), beta_(beta), bias_(bias) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (!x || x->rank() < 2 || x->dtype() != DataType::kFloat) return KernelError("expects float32 X of rank >= 2");
    const int64_t n = x->dim(0), c = x->dim(1);
    const int64_t spatial = n * c != 0 ? x->size() / (n * c) : 0;
    const int64_t lo = (size_ - 1) / 2, hi = size_ - 1 - lo;
    ctx.output(0) = Tensor(DataType::kFloat, x->shape());
    const float* px = x->data<float>();
    float* py = ctx.output(0).data<float>();
    std::vector<float> sq(static_cast<size_t>(spatial));
    const float scale = alpha_ / static_cast<float>(size_);
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t ch = 0; ch < c; ++ch) {
        std::fill(sq.begin(), sq.end(), 0.0f);
        for (int64_t k = std::max<int64_t>(0, ch - lo); k <= std::min(c - 1, ch + hi); ++k) {
          const float* xk = px + (b * c + k) * spatial;
          for (int64_t s = 0; s < spatial; ++s) sq[static_cast<size_t>(s)] += xk[s] * xk[s];
        }
        const float* xc = px + (b * c + ch) * spatial;
        float* yc = py + (b * c + ch) * spatial;
        for (int64_t s = 0; s < spatial; ++s) {
          yc[s] = xc[s] / std::pow(bias_ + scale * sq[static_cast<size_t>(s)], beta_);
        }
      }
    }
    return Status::Ok();
  }

 private:
  int64_t size_;
  float alpha_, beta_, bias_;
};

void RegisterAll(KernelRegistry& registry) {
  registry.Register("", "BatchNormalization", 1, kLatestOpset, MakeBatchNorm);
  registry.Register("", "LayerNormalization", 17, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<LayerNormKernel>(init.attributes.Int("axis", -1), init.attributes.Float("epsilon", 1e-5f));
  });
  registry.Register("", "InstanceNormalization", 1, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<InstanceNormKernel>(init.attributes.Float("epsilon", 1e-5f));
  });
  registry.Register("", "MeanVarianceNormalization", 9, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<MvnKernel>(init.attributes.Ints("axes", {0, 2, 3}));
  });
  registry.Register("", "LRN", 1, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    QUANTD_ASSIGN_OR_RETURN(int64_t size, init.attributes.Int("size"));
    if (size < 1) return NodeError("size must be positive");
    return MakeKernel<LrnKernel>(size, init.attributes.Float("alpha", 1e-4f), init.attributes.Float("beta", 0.75f),
                                 init.attributes.Float("bias", 1.0f));
  });
  registry.Register("", "LpNormalization", 1, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<LpNormKernel>(init.attributes.Int("axis", -1), init.attributes.Int("p", 2));
  });
}

}  // namespace

}  // namespace quantd::runtime::kernels

namespace quantd::runtime {
void RegisterNormalizationKernels(KernelRegistry& registry) { kernels::RegisterAll(registry); }
}  // namespace quantd::runtime
