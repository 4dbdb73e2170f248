// Resize (opset 10-19+) and Upsample (opset 7-9). Every mode here is
// separable, so an N-D resize is a sequence of 1-D passes, one per axis
// that changes; each pass uses a table of source taps and weights per
// output coordinate computed once per axis.
#include <cmath>

#include <onnx/onnx_pb.h>

#include "worker/runtime/kernels/kernel_util.h"

namespace quantd::runtime::kernels {

namespace {

enum class Mode { kNearest, kLinear, kCubic };
enum class Coord {
  kHalfPixel, kHalfPixelSymmetric, kPytorchHalfPixel, kAlignCorners, kAsymmetric, kTfHalfPixelForNn, kTfCropAndResize,
};
enum class NearestMode { kRoundPreferFloor, kRoundPreferCeil, kFloor, kCeil };

struct ResizeParams {
  Mode mode = Mode::kNearest;
  Coord coord = Coord::kHalfPixel;
  NearestMode nearest = NearestMode::kRoundPreferFloor;
  float cubic_a = -0.75f;
  bool exclude_outside = false;
  float extrapolation = 0.0f;
  std::vector<int64_t> axes;
  std::string keep_aspect = "stretch";
};

// Source taps of one output coordinate along one axis.
struct AxisTaps {
  int taps = 1;
  std::vector<int64_t> index;  // out_len * taps
  std::vector<float> weight;   // out_len * taps
  std::vector<char> outside;   // out_len: use the extrapolation value
  bool identity = false;
};

// `resized_len` is in_len * scale before rounding to whole elements, which
// is what the ONNX reference divides by for align_corners and
// tf_crop_and_resize.
double SourceCoordinate(const ResizeParams& p, double x, double scale, int64_t in_len, int64_t out_len, double roi_start,
                        double roi_end) {
  const double resized_len = scale * static_cast<double>(in_len);
  switch (p.coord) {
    case Coord::kHalfPixel: return (x + 0.5) / scale - 0.5;
    case Coord::kHalfPixelSymmetric: {
      double adjustment = static_cast<double>(out_len) / (scale * static_cast<double>(in_len));
      double center = static_cast<double>(in_len) / 2.0;
      double offset = center * (1.0 - adjustment);
      return offset + (x + 0.5) / scale - 0.5;
    }
    case Coord::kPytorchHalfPixel: return out_len > 1 ? (x + 0.5) / scale - 0.5 : 0.0;
    case Coord::kAlignCorners:
      return resized_len == 1.0 ? 0.0 : x * static_cast<double>(in_len - 1) / (resized_len - 1.0);
    case Coord::kAsymmetric: return x / scale;
    case Coord::kTfHalfPixelForNn: return (x + 0.5) / scale;
    case Coord::kTfCropAndResize:
      if (resized_len != 1.0) {
        return roi_start * static_cast<double>(in_len - 1) +
               x * (roi_end - roi_start) * static_cast<double>(in_len - 1) / (resized_len - 1.0);
      }
      return 0.5 * (roi_start + roi_end) * static_cast<double>(in_len - 1);
  }
  return x;
}

AxisTaps MakeTaps(const ResizeParams& p, double scale, int64_t in_len, int64_t out_len, double roi_start, double roi_end) {
  AxisTaps t;
  t.taps = p.mode == Mode::kNearest ? 1 : (p.mode == Mode::kLinear ? 2 : 4);
  t.index.resize(static_cast<size_t>(out_len * t.taps));
  t.weight.resize(static_cast<size_t>(out_len * t.taps));
  t.outside.assign(static_cast<size_t>(out_len), 0);
  bool identity = in_len == out_len;
  auto clampi = [in_len](int64_t i) { return std::clamp<int64_t>(i, 0, in_len - 1); };
  for (int64_t o = 0; o < out_len; ++o) {
    double x = SourceCoordinate(p, static_cast<double>(o), scale, in_len, out_len, roi_start, roi_end);
    if (p.coord == Coord::kTfCropAndResize && (x < 0 || x > static_cast<double>(in_len - 1))) {
      t.outside[static_cast<size_t>(o)] = 1;
      identity = false;
    }
    int64_t* idx = &t.index[static_cast<size_t>(o * t.taps)];
    float* w = &t.weight[static_cast<size_t>(o * t.taps)];
    if (p.mode == Mode::kNearest) {
      double f = std::floor(x);
      double frac = x - f;
      int64_t i = static_cast<int64_t>(f);
      switch (p.nearest) {
        case NearestMode::kRoundPreferFloor: i = static_cast<int64_t>(frac <= 0.5 ? f : f + 1); break;
        case NearestMode::kRoundPreferCeil: i = static_cast<int64_t>(frac < 0.5 ? f : f + 1); break;
        case NearestMode::kFloor: i = static_cast<int64_t>(f); break;
        case NearestMode::kCeil: i = static_cast<int64_t>(std::ceil(x)); break;
      }
      idx[0] = clampi(i);
      w[0] = 1.0f;
      if (idx[0] != o) identity = false;
      continue;
    }
    double f = std::floor(x);
    double r = x - f;
    int64_t base = static_cast<int64_t>(f);
    if (p.mode == Mode::kLinear) {
      idx[0] = clampi(base);
      idx[1] = clampi(base + 1);
      w[0] = static_cast<float>(1.0 - r);
      w[1] = static_cast<float>(r);
      if (!(r == 0 && idx[0] == o)) identity = false;
      continue;
    }
    const double a = p.cubic_a;
    double c[4];
    double r1 = r + 1, r2 = 1 - r, r3 = 2 - r;
    c[0] = ((a * r1 - 5 * a) * r1 + 8 * a) * r1 - 4 * a;
    c[1] = ((a + 2) * r - (a + 3)) * r * r + 1;
    c[2] = ((a + 2) * r2 - (a + 3)) * r2 * r2 + 1;
    c[3] = ((a * r3 - 5 * a) * r3 + 8 * a) * r3 - 4 * a;
    double sum = 0;
    for (int k = 0; k < 4; ++k) {
      int64_t i = base - 1 + k;
      if (p.exclude_outside && (i < 0 || i >= in_len)) c[k] = 0;
      sum += c[k];
    }
    for (int k = 0; k < 4; ++k) {
      idx[k] = clampi(base - 1 + k);
      w[k] = static_cast<float>(p.exclude_outside && sum != 0 ? c[k] / sum : c[k]);
    }
    if (!(r == 0 && clampi(base) == o)) identity = false;
  }
  t.identity = identity;
  return t;
}

// One pass along `axis` of a tensor viewed as [outer, in_len, inner].
template <typename T>
void ResizeAxis(const T* src, T* dst, int64_t outer, int64_t in_len, int64_t out_len, int64_t inner, const AxisTaps& t,
                float extrapolation, ThreadPool& pool) {
  const int64_t rows = outer * out_len;
  int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(inner * t.taps, 1));
  ParallelRange(pool, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t o = row / out_len, x = row % out_len;
      T* out = dst + row * inner;
      if (t.outside[static_cast<size_t>(x)]) {
        std::fill(out, out + inner, static_cast<T>(extrapolation));
        continue;
      }
      const int64_t* idx = &t.index[static_cast<size_t>(x * t.taps)];
      const float* w = &t.weight[static_cast<size_t>(x * t.taps)];
      if (t.taps == 1) {
        std::memcpy(out, src + (o * in_len + idx[0]) * inner, static_cast<size_t>(inner) * sizeof(T));
        continue;
      }
      if constexpr (std::is_floating_point_v<T>) {
        const T* s0 = src + (o * in_len + idx[0]) * inner;
        const T w0 = static_cast<T>(w[0]);
        for (int64_t j = 0; j < inner; ++j) out[j] = w0 * s0[j];
        for (int k = 1; k < t.taps; ++k) {
          const T* sk = src + (o * in_len + idx[k]) * inner;
          const T wk = static_cast<T>(w[k]);
          for (int64_t j = 0; j < inner; ++j) out[j] += wk * sk[j];
        }
      }
    }
  });
}

class ResizeKernel final : public Kernel {
 public:
  // Inputs: Resize-10 and Upsample-9 (X, scales); Resize-11+ (X, roi,
  // scales, sizes); Upsample-7 takes scales as an attribute.
  ResizeKernel(ResizeParams params, int scales_input, int sizes_input, int roi_input, std::vector<float> scales_attr)
      : p_(std::move(params)),
        scales_input_(scales_input),
        sizes_input_(sizes_input),
        roi_input_(roi_input),
        scales_attr_(std::move(scales_attr)) {}

  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (!x) return KernelError("expects X");
    const int rank = x->rank();
    std::vector<int64_t> axes = p_.axes;
    if (axes.empty()) {
      for (int d = 0; d < rank; ++d) axes.push_back(d);
    }
    for (auto& a : axes) {
      QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(a, rank));
      a = axis;
    }
    const size_t na = axes.size();
    std::vector<double> scales(static_cast<size_t>(rank), 1.0);
    Shape out_shape = x->shape();
    std::vector<double> roi_start(static_cast<size_t>(rank), 0.0), roi_end(static_cast<size_t>(rank), 1.0);
    if (roi_input_ >= 0 && ctx.input(roi_input_) && ctx.input(roi_input_)->size() > 0) {
      Tensor roi = CastTo(*ctx.input(roi_input_), DataType::kDouble);
      if (roi.size() != static_cast<int64_t>(2 * na)) return KernelError("roi must have 2 * axes entries");
      for (size_t i = 0; i < na; ++i) {
        roi_start[static_cast<size_t>(axes[i])] = roi.data<double>()[i];
        roi_end[static_cast<size_t>(axes[i])] = roi.data<double>()[i + na];
      }
    }
    const Tensor* sizes_t = sizes_input_ >= 0 ? ctx.input(sizes_input_) : nullptr;
    const Tensor* scales_t = scales_input_ >= 0 ? ctx.input(scales_input_) : nullptr;
    if (sizes_t && sizes_t->size() > 0) {
      QUANTD_ASSIGN_OR_RETURN(auto sizes, ToInt64Vector(*sizes_t));
      if (sizes.size() != na) return KernelError("sizes must have one entry per axis");
      if (p_.keep_aspect != "stretch") {
        double s = p_.keep_aspect == "not_larger" ? 1e300 : 0.0;
        for (size_t i = 0; i < na; ++i) {
          double r = static_cast<double>(sizes[i]) / static_cast<double>(x->dim(static_cast<int>(axes[i])));
          s = p_.keep_aspect == "not_larger" ? std::min(s, r) : std::max(s, r);
        }
        for (size_t i = 0; i < na; ++i) {
          auto d = static_cast<size_t>(axes[i]);
          scales[d] = s;
          out_shape[d] = static_cast<int64_t>(std::round(s * static_cast<double>(x->dim(static_cast<int>(d)))));
        }
      } else {
        for (size_t i = 0; i < na; ++i) {
          auto d = static_cast<size_t>(axes[i]);
          out_shape[d] = sizes[i];
          scales[d] = static_cast<double>(sizes[i]) / static_cast<double>(x->dim(static_cast<int>(d)));
        }
      }
    } else {
      std::vector<float> sv = scales_attr_;
      if (scales_t && scales_t->size() > 0) {
        Tensor f = CastTo(*scales_t, DataType::kFloat);
        sv.assign(f.data<float>(), f.data<float>() + f.size());
      }
      if (sv.size() != na) return KernelError("scales must have one entry per axis");
      for (size_t i = 0; i < na; ++i) {
        auto d = static_cast<size_t>(axes[i]);
        if (sv[i] <= 0) return KernelError("scales must be positive");
        scales[d] = sv[i];
        double len = static_cast<double>(x->dim(static_cast<int>(d)));
        if (p_.coord == Coord::kTfCropAndResize) len *= roi_end[d] - roi_start[d];
        out_shape[d] = static_cast<int64_t>(std::floor(len * static_cast<double>(sv[i])));
      }
    }
    if (p_.mode != Mode::kNearest && x->dtype() != DataType::kFloat && x->dtype() != DataType::kDouble) {
      return KernelError("linear and cubic resize need float input");
    }
    Tensor cur = *x;
    for (int d = 0; d < rank; ++d) {
      const int64_t in_len = cur.dim(d), out_len = out_shape[static_cast<size_t>(d)];
      if (in_len == out_len && scales[static_cast<size_t>(d)] == 1.0 && p_.coord != Coord::kTfCropAndResize) continue;
      if (in_len == 0 && out_len > 0) return KernelError("cannot resize an empty axis");
      AxisTaps taps = MakeTaps(p_, scales[static_cast<size_t>(d)], in_len, out_len, roi_start[static_cast<size_t>(d)],
                               roi_end[static_cast<size_t>(d)]);
      if (taps.identity) continue;
      int64_t outer = 1, inner = 1;
      for (int k = 0; k < d; ++k) outer *= cur.dim(k);
      for (int k = d + 1; k < rank; ++k) inner *= cur.dim(k);
      Shape next_shape = cur.shape();
      next_shape[static_cast<size_t>(d)] = out_len;
      Tensor next(cur.dtype(), next_shape);
      Status status;
      if (p_.mode == Mode::kNearest) {
        status = DispatchStorage(cur.dtype(), [&](auto tag) -> Status {
          using T = typename decltype(tag)::type;
          ResizeAxis<T>(cur.data<T>(), next.data<T>(), outer, in_len, out_len, inner, taps, 0.0f, ctx.threads());
          if (cur.dtype() == DataType::kFloat) {
            // Nearest can still extrapolate in tf_crop_and_resize.
            float* y = next.data<float>();
            for (int64_t row = 0; row < outer * out_len; ++row) {
              if (taps.outside[static_cast<size_t>(row % out_len)]) std::fill(y + row * inner, y + (row + 1) * inner, p_.extrapolation);
            }
          }
          return Status::Ok();
        });
      } else {
        status = DispatchFloat(cur.dtype(), [&](auto tag) -> Status {
          using T = typename decltype(tag)::type;
          ResizeAxis<T>(cur.data<T>(), next.data<T>(), outer, in_len, out_len, inner, taps, p_.extrapolation,
                        ctx.threads());
          return Status::Ok();
        });
      }
      QUANTD_RETURN_IF_ERROR(status);
      cur = std::move(next);
    }
    ctx.output(0) = cur;
    return Status::Ok();
  }

 private:
  ResizeParams p_;
  int scales_input_;
  int sizes_input_;
  int roi_input_;
  std::vector<float> scales_attr_;
};

StatusOr<ResizeParams> ParseParams(const KernelInit& init, bool legacy) {
  const auto& a = init.attributes;
  ResizeParams p;
  std::string mode = a.String("mode", "nearest");
  if (mode == "nearest") {
    p.mode = Mode::kNearest;
  } else if (mode == "linear" || mode == "bilinear") {
    p.mode = Mode::kLinear;
  } else if (mode == "cubic" && !legacy) {
    p.mode = Mode::kCubic;
  } else {
    return NodeError("unsupported mode '" + mode + "'");
  }
  if (legacy) {
    // Upsample and Resize-10: coordinates are x / scale, nearest rounds down.
    p.coord = Coord::kAsymmetric;
    p.nearest = NearestMode::kFloor;
    return p;
  }
  std::string coord = a.String("coordinate_transformation_mode", "half_pixel");
  static const std::pair<const char*, Coord> kCoords[] = {
      {"half_pixel", Coord::kHalfPixel},         {"half_pixel_symmetric", Coord::kHalfPixelSymmetric},
      {"pytorch_half_pixel", Coord::kPytorchHalfPixel}, {"align_corners", Coord::kAlignCorners},
      {"asymmetric", Coord::kAsymmetric},        {"tf_half_pixel_for_nn", Coord::kTfHalfPixelForNn},
      {"tf_crop_and_resize", Coord::kTfCropAndResize},
  };
  bool found = false;
  for (const auto& [name, value] : kCoords) {
    if (coord == name) {
      p.coord = value;
      found = true;
    }
  }
  if (!found) return NodeError("unsupported coordinate_transformation_mode '" + coord + "'");
  std::string nearest = a.String("nearest_mode", "round_prefer_floor");
  if (nearest == "round_prefer_floor") {
    p.nearest = NearestMode::kRoundPreferFloor;
  } else if (nearest == "round_prefer_ceil") {
    p.nearest = NearestMode::kRoundPreferCeil;
  } else if (nearest == "floor") {
    p.nearest = NearestMode::kFloor;
  } else if (nearest == "ceil") {
    p.nearest = NearestMode::kCeil;
  } else {
    return NodeError("unsupported nearest_mode '" + nearest + "'");
  }
  p.cubic_a = a.Float("cubic_coeff_a", -0.75f);
  p.exclude_outside = a.Int("exclude_outside", 0) != 0;
  p.extrapolation = a.Float("extrapolation_value", 0.0f);
  p.axes = a.Ints("axes");
  p.keep_aspect = a.String("keep_aspect_ratio_policy", "stretch");
  if (p.keep_aspect != "stretch" && p.keep_aspect != "not_larger" && p.keep_aspect != "not_smaller") {
    return NodeError("unsupported keep_aspect_ratio_policy '" + p.keep_aspect + "'");
  }
  if (a.Int("antialias", 0) != 0) return NodeError("antialias is not supported");
  return p;
}

void RegisterAll(KernelRegistry& registry) {
  registry.Register("", "Upsample", 7, 8, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    QUANTD_ASSIGN_OR_RETURN(ResizeParams p, ParseParams(init, true));
    return MakeKernel<ResizeKernel>(std::move(p), -1, -1, -1, init.attributes.Floats("scales"));
  });
  registry.Register("", "Upsample", 9, 9, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    QUANTD_ASSIGN_OR_RETURN(ResizeParams p, ParseParams(init, true));
    return MakeKernel<ResizeKernel>(std::move(p), 1, -1, -1, std::vector<float>{});
  });
  registry.Register("", "Resize", 10, 10, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    QUANTD_ASSIGN_OR_RETURN(ResizeParams p, ParseParams(init, true));
    return MakeKernel<ResizeKernel>(std::move(p), 1, -1, -1, std::vector<float>{});
  });
  registry.Register("", "Resize", 11, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    QUANTD_ASSIGN_OR_RETURN(ResizeParams p, ParseParams(init, false));
    return MakeKernel<ResizeKernel>(std::move(p), 2, 3, 1, std::vector<float>{});
  });
}

}  // namespace

}  // namespace quantd::runtime::kernels

namespace quantd::runtime {
void RegisterResizeKernels(KernelRegistry& registry) { kernels::RegisterAll(registry); }
}  // namespace quantd::runtime
