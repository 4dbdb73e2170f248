// Shape and data-movement ops. Everything here moves elements without
// interpreting them, so kernels dispatch on storage size and work for every
// element type (shape subgraphs run on int64).
#include <cmath>
#include <numeric>
#include <optional>

#include <onnx/onnx_pb.h>

#include "worker/runtime/kernels/kernel_util.h"

namespace quantd::runtime::kernels {

namespace {

Shape ContiguousStrides(const Shape& shape) {
  Shape strides(shape.size(), 1);
  for (size_t d = shape.size(); d-- > 1;) strides[d - 1] = strides[d] * shape[d];
  return strides;
}

// dst (contiguous, shape `out_shape`) = src viewed with `src_strides` per
// output dim. Dims are merged where the source is contiguous across them;
// the innermost two dims are tiled so transposes stay cache friendly.
template <typename T>
void StridedCopy(const T* src, const Shape& src_strides_in, const Shape& out_shape_in, T* dst, ThreadPool& pool) {
  Shape dims, strides;
  for (size_t d = 0; d < out_shape_in.size(); ++d) {
    if (out_shape_in[d] == 1) continue;
    if (!dims.empty() && strides.back() == src_strides_in[d] * out_shape_in[d]) {
      dims.back() *= out_shape_in[d];
      strides.back() = src_strides_in[d];
    } else {
      dims.push_back(out_shape_in[d]);
      strides.push_back(src_strides_in[d]);
    }
  }
  int64_t total = NumElements(out_shape_in);
  if (total == 0) return;
  if (dims.empty()) {
    dst[0] = src[0];
    return;
  }
  if (dims.size() == 1) {
    const int64_t n = dims[0], s = strides[0];
    if (s == 1) {
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = src[i * s];
    }
    return;
  }
  const size_t k = dims.size();
  const int64_t rows = dims[k - 2], cols = dims[k - 1];
  const int64_t rs = strides[k - 2], cs = strides[k - 1];
  const int64_t plane = rows * cols;
  const int64_t planes = total / plane;
  auto copy_plane = [&](int64_t p) {
    int64_t off = 0;
    int64_t rem = p;
    for (size_t d = k - 2; d-- > 0;) {
      off += (rem % dims[d]) * strides[d];
      rem /= dims[d];
    }
    const T* s = src + off;
    T* o = dst + p * plane;
    if (cs == 1) {
      if (cols * static_cast<int64_t>(sizeof(T)) >= 256) {
        for (int64_t r = 0; r < rows; ++r) std::memcpy(o + r * cols, s + r * rs, static_cast<size_t>(cols) * sizeof(T));
      } else {
        // Short rows (attention heads): an inline loop beats a memcpy call.
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < cols; ++c) o[r * cols + c] = s[r * rs + c];
        }
      }
      return;
    }
    constexpr int64_t kTile = 32;
    for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
      int64_t r1 = std::min(rows, r0 + kTile);
      for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
        int64_t c1 = std::min(cols, c0 + kTile);
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t c = c0; c < c1; ++c) o[r * cols + c] = s[r * rs + c * cs];
        }
      }
    }
  };
  int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(plane, 1));
  ParallelRange(pool, planes, grain, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) copy_plane(p);
  });
}

Status CopyStrided(const Tensor& in, int64_t offset, const Shape& src_strides, const Shape& out_shape, Tensor& out,
                   ThreadPool& pool) {
  out = Tensor(in.dtype(), out_shape);
  return DispatchStorage(in.dtype(), [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    StridedCopy<T>(in.data<T>() + offset, src_strides, out_shape, out.data<T>(), pool);
    return Status::Ok();
  });
}

// ------------------------------------------------------- Reshape & friends

class ReshapeKernel final : public Kernel {
 public:
  bool OutputIsInputView() const override { return true; }
  ReshapeKernel(std::vector<int64_t> shape_attr, bool from_input, bool allowzero)
      : shape_attr_(std::move(shape_attr)), from_input_(from_input), allowzero_(allowzero) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects data");
    std::vector<int64_t> shape = shape_attr_;
    if (from_input_) {
      if (!ctx.input(1)) return KernelError("expects a shape input");
      QUANTD_ASSIGN_OR_RETURN(shape, ToInt64Vector(*ctx.input(1)));
    }
    Shape out(shape.size());
    int infer = -1;
    int64_t known = 1;
    for (size_t i = 0; i < shape.size(); ++i) {
      int64_t d = shape[i];
      if (d == 0 && !allowzero_) {
        if (i >= in->shape().size()) return KernelError("shape entry 0 at " + std::to_string(i) + " has no input dim");
        d = in->shape()[i];
      }
      if (d == -1) {
        if (infer >= 0) return KernelError("shape " + ShapeToString(shape) + " has more than one -1");
        infer = static_cast<int>(i);
        continue;
      }
      if (d < 0) return KernelError("invalid shape " + ShapeToString(shape));
      out[i] = d;
      known *= d;
    }
    if (infer >= 0) {
      if (known == 0 || in->size() % known != 0) {
        return KernelError("cannot reshape " + ShapeToString(in->shape()) + " to " + ShapeToString(shape));
      }
      out[static_cast<size_t>(infer)] = in->size() / known;
    }
    if (NumElements(out) != in->size()) {
      return KernelError("cannot reshape " + ShapeToString(in->shape()) + " to " + ShapeToString(shape));
    }
    ctx.output(0) = in->Reshaped(std::move(out));
    return Status::Ok();
  }

 private:
  std::vector<int64_t> shape_attr_;
  bool from_input_;
  bool allowzero_;
};

class FlattenKernel final : public Kernel {
 public:
  bool OutputIsInputView() const override { return true; }
  explicit FlattenKernel(int64_t axis) : axis_(axis) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects an input");
    int64_t axis = axis_ < 0 ? axis_ + in->rank() : axis_;
    if (axis < 0 || axis > in->rank()) return KernelError("axis out of range");
    int64_t a = 1;
    for (int d = 0; d < axis; ++d) a *= in->dim(d);
    int64_t b = 1;
    for (int d = static_cast<int>(axis); d < in->rank(); ++d) b *= in->dim(d);
    ctx.output(0) = in->Reshaped({a, b});
    return Status::Ok();
  }

 private:
  int64_t axis_;
};

class SqueezeKernel final : public Kernel {
 public:
  bool OutputIsInputView() const override { return true; }
  SqueezeKernel(bool unsqueeze, std::vector<int64_t> axes_attr, bool from_input)
      : unsqueeze_(unsqueeze), axes_attr_(std::move(axes_attr)), from_input_(from_input) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects data");
    std::vector<int64_t> axes = axes_attr_;
    if (from_input_ && ctx.input(1)) {
      QUANTD_ASSIGN_OR_RETURN(axes, ToInt64Vector(*ctx.input(1)));
    }
    const Shape& s = in->shape();
    Shape out;
    if (unsqueeze_) {
      int rank = in->rank() + static_cast<int>(axes.size());
      std::vector<bool> inserted(static_cast<size_t>(rank), false);
      for (int64_t a : axes) {
        QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(a, rank));
        if (inserted[static_cast<size_t>(axis)]) return KernelError("repeated axis in Unsqueeze");
        inserted[static_cast<size_t>(axis)] = true;
      }
      size_t j = 0;
      for (int d = 0; d < rank; ++d) out.push_back(inserted[static_cast<size_t>(d)] ? 1 : s[j++]);
    } else {
      std::vector<bool> drop(s.size(), false);
      if (axes.empty()) {
        for (size_t d = 0; d < s.size(); ++d) drop[d] = s[d] == 1;
      }
      for (int64_t a : axes) {
        QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(a, in->rank()));
        if (s[static_cast<size_t>(axis)] != 1) {
          return KernelError("cannot squeeze axis " + std::to_string(a) + " of " + ShapeToString(s));
        }
        drop[static_cast<size_t>(axis)] = true;
      }
      for (size_t d = 0; d < s.size(); ++d) {
        if (!drop[d]) out.push_back(s[d]);
      }
    }
    ctx.output(0) = in->Reshaped(std::move(out));
    return Status::Ok();
  }

 private:
  bool unsqueeze_;
  std::vector<int64_t> axes_attr_;
  bool from_input_;
};

class TransposeKernel final : public Kernel {
 public:
  explicit TransposeKernel(std::vector<int64_t> perm) : perm_(std::move(perm)) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects an input");
    const int rank = in->rank();
    std::vector<int64_t> perm = perm_;
    if (perm.empty()) {
      for (int d = rank - 1; d >= 0; --d) perm.push_back(d);
    }
    if (static_cast<int>(perm.size()) != rank) return KernelError("perm does not match the input rank");
    Shape in_strides = ContiguousStrides(in->shape());
    Shape out_shape(static_cast<size_t>(rank)), src_strides(static_cast<size_t>(rank));
    std::vector<bool> used(static_cast<size_t>(rank), false);
    for (int d = 0; d < rank; ++d) {
      QUANTD_ASSIGN_OR_RETURN(int p, NormalizeAxis(perm[static_cast<size_t>(d)], rank));
      if (used[static_cast<size_t>(p)]) return KernelError("perm is not a permutation");
      used[static_cast<size_t>(p)] = true;
      out_shape[static_cast<size_t>(d)] = in->dim(p);
      src_strides[static_cast<size_t>(d)] = in_strides[static_cast<size_t>(p)];
    }
    return CopyStrided(*in, 0, src_strides, out_shape, ctx.output(0), ctx.threads());
  }

 private:
  std::vector<int64_t> perm_;
};

// ---------------------------------------------------------- Concat, Split

class ConcatKernel final : public Kernel {
 public:
  explicit ConcatKernel(int64_t axis) : axis_(axis) {}
  Status Compute(KernelContext& ctx) const override {
    std::vector<const Tensor*> ins;
    for (int i = 0; i < ctx.num_inputs(); ++i) {
      if (ctx.input(i)) ins.push_back(ctx.input(i));
    }
    if (ins.empty()) return KernelError("expects at least one input");
    const Tensor& first = *ins[0];
    QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_, first.rank()));
    Shape out_shape = first.shape();
    out_shape[static_cast<size_t>(axis)] = 0;
    for (const Tensor* t : ins) {
      if (t->dtype() != first.dtype() || t->rank() != first.rank()) {
        return KernelError("inputs differ in element type or rank");
      }
      for (int d = 0; d < first.rank(); ++d) {
        if (d != axis && t->dim(d) != first.dim(d)) {
          return KernelError("cannot concatenate " + ShapeToString(first.shape()) + " and " +
                             ShapeToString(t->shape()) + " on axis " + std::to_string(axis));
        }
      }
      out_shape[static_cast<size_t>(axis)] += t->dim(axis);
    }
    int64_t outer = 1;
    for (int d = 0; d < axis; ++d) outer *= first.dim(d);
    Tensor out(first.dtype(), out_shape);
    const size_t esize = ElementSize(first.dtype());
    const int64_t out_block = out.size() / std::max<int64_t>(outer, 1);
    auto* dst = static_cast<std::byte*>(out.raw());
    int64_t col = 0;
    for (const Tensor* t : ins) {
      const int64_t block = outer ? t->size() / outer : 0;
      const auto* src = static_cast<const std::byte*>(t->raw());
      for (int64_t o = 0; o < outer && block; ++o) {
        std::memcpy(dst + static_cast<size_t>(o * out_block + col) * esize, src + static_cast<size_t>(o * block) * esize,
                    static_cast<size_t>(block) * esize);
      }
      col += block;
    }
    ctx.output(0) = std::move(out);
    return Status::Ok();
  }

 private:
  int64_t axis_;
};

class SplitKernel final : public Kernel {
 public:
  SplitKernel(int64_t axis, std::vector<int64_t> split_attr, bool from_input, int64_t num_outputs)
      : axis_(axis), split_attr_(std::move(split_attr)), from_input_(from_input), num_outputs_(num_outputs) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects an input");
    QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_, in->rank()));
    const int64_t dim = in->dim(axis);
    const int n = ctx.num_outputs();
    std::vector<int64_t> split = split_attr_;
    if (from_input_ && ctx.input(1)) {
      QUANTD_ASSIGN_OR_RETURN(split, ToInt64Vector(*ctx.input(1)));
    }
    if (split.empty()) {
      int64_t parts = num_outputs_ > 0 ? num_outputs_ : n;
      int64_t chunk = (dim + parts - 1) / parts;
      for (int64_t i = 0; i < parts; ++i) split.push_back(std::max<int64_t>(0, std::min(chunk, dim - i * chunk)));
    }
    if (static_cast<int>(split.size()) != n) return KernelError("split has " + std::to_string(split.size()) + " parts for " + std::to_string(n) + " outputs");
    if (std::accumulate(split.begin(), split.end(), int64_t{0}) != dim) {
      return KernelError("split sizes do not add up to dim " + std::to_string(dim));
    }
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < axis; ++d) outer *= in->dim(d);
    for (int d = axis + 1; d < in->rank(); ++d) inner *= in->dim(d);
    const size_t esize = ElementSize(in->dtype());
    const auto* src = static_cast<const std::byte*>(in->raw());
    int64_t start = 0;
    for (int i = 0; i < n; ++i) {
      Shape shape = in->shape();
      shape[static_cast<size_t>(axis)] = split[static_cast<size_t>(i)];
      Tensor out(in->dtype(), shape);
      const int64_t block = split[static_cast<size_t>(i)] * inner;
      auto* dst = static_cast<std::byte*>(out.raw());
      for (int64_t o = 0; o < outer && block; ++o) {
        std::memcpy(dst + static_cast<size_t>(o * block) * esize,
                    src + static_cast<size_t>(o * dim * inner + start * inner) * esize, static_cast<size_t>(block) * esize);
      }
      start += split[static_cast<size_t>(i)];
      ctx.output(i) = std::move(out);
    }
    return Status::Ok();
  }

 private:
  int64_t axis_;
  std::vector<int64_t> split_attr_;
  bool from_input_;
  int64_t num_outputs_;
};

// ------------------------------------------------------------------ Slice

class SliceKernel final : public Kernel {
 public:
  // Opset < 10 passes starts/ends/axes as attributes.
  SliceKernel(bool from_inputs, std::vector<int64_t> starts, std::vector<int64_t> ends, std::vector<int64_t> axes)
      : from_inputs_(from_inputs), starts_(std::move(starts)), ends_(std::move(ends)), axes_(std::move(axes)) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects data");
    std::vector<int64_t> starts = starts_, ends = ends_, axes = axes_, steps;
    if (from_inputs_) {
      if (!ctx.input(1) || !ctx.input(2)) return KernelError("expects starts and ends");
      QUANTD_ASSIGN_OR_RETURN(starts, ToInt64Vector(*ctx.input(1)));
      QUANTD_ASSIGN_OR_RETURN(ends, ToInt64Vector(*ctx.input(2)));
      if (ctx.input(3)) {
        QUANTD_ASSIGN_OR_RETURN(axes, ToInt64Vector(*ctx.input(3)));
      }
      if (ctx.input(4)) {
        QUANTD_ASSIGN_OR_RETURN(steps, ToInt64Vector(*ctx.input(4)));
      }
    }
    if (starts.size() != ends.size()) return KernelError("starts and ends differ in length");
    if (axes.empty()) {
      for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
    }
    if (steps.empty()) steps.assign(starts.size(), 1);
    if (axes.size() != starts.size() || steps.size() != starts.size()) {
      return KernelError("starts, ends, axes and steps differ in length");
    }
    const int rank = in->rank();
    Shape out_shape = in->shape();
    Shape in_strides = ContiguousStrides(in->shape());
    Shape src_strides = in_strides;
    int64_t offset = 0;
    for (size_t i = 0; i < starts.size(); ++i) {
      QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axes[i], rank));
      const int64_t dim = in->dim(axis);
      const int64_t step = steps[i];
      if (step == 0) return KernelError("slice step is 0");
      int64_t start = starts[i], end = ends[i];
      if (start < 0) start += dim;
      if (end < 0) end += dim;
      int64_t count;
      if (step > 0) {
        start = std::clamp<int64_t>(start, 0, dim);
        end = std::clamp<int64_t>(end, 0, dim);
        count = end > start ? (end - start + step - 1) / step : 0;
      } else {
        start = std::clamp<int64_t>(start, 0, dim - 1);
        end = std::clamp<int64_t>(end, -1, dim - 1);
        count = start > end ? (start - end + (-step) - 1) / (-step) : 0;
      }
      out_shape[static_cast<size_t>(axis)] = count;
      if (count > 0) offset += start * in_strides[static_cast<size_t>(axis)];
      src_strides[static_cast<size_t>(axis)] = step * in_strides[static_cast<size_t>(axis)];
    }
    if (NumElements(out_shape) == 0) offset = 0;
    return CopyStrided(*in, offset, src_strides, out_shape, ctx.output(0), ctx.threads());
  }

 private:
  bool from_inputs_;
  std::vector<int64_t> starts_, ends_, axes_;
};

// ------------------------------------------------------------ Gather family

class GatherKernel final : public Kernel {
 public:
  explicit GatherKernel(int64_t axis) : axis_(axis) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* data = ctx.input(0);
    const Tensor* indices = ctx.input(1);
    if (!data || !indices) return KernelError("expects data and indices");
    QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_, data->rank()));
    QUANTD_ASSIGN_OR_RETURN(auto idx, ToInt64Vector(*indices));
    const int64_t dim = data->dim(axis);
    for (auto& i : idx) {
      if (i < -dim || i >= dim) return KernelError("index " + std::to_string(i) + " out of range for dim " + std::to_string(dim));
      if (i < 0) i += dim;
    }
    Shape out_shape(data->shape().begin(), data->shape().begin() + axis);
    out_shape.insert(out_shape.end(), indices->shape().begin(), indices->shape().end());
    out_shape.insert(out_shape.end(), data->shape().begin() + axis + 1, data->shape().end());
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < axis; ++d) outer *= data->dim(d);
    for (int d = axis + 1; d < data->rank(); ++d) inner *= data->dim(d);
    Tensor out(data->dtype(), out_shape);
    const size_t bytes = static_cast<size_t>(inner) * ElementSize(data->dtype());
    const auto* src = static_cast<const std::byte*>(data->raw());
    auto* dst = static_cast<std::byte*>(out.raw());
    const int64_t n = static_cast<int64_t>(idx.size());
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t j = 0; j < n; ++j) {
        std::memcpy(dst + (o * n + j) * bytes, src + (o * dim + idx[static_cast<size_t>(j)]) * bytes, bytes);
      }
    }
    ctx.output(0) = std::move(out);
    return Status::Ok();
  }

 private:
  int64_t axis_;
};

class GatherElementsKernel final : public Kernel {
 public:
  explicit GatherElementsKernel(int64_t axis) : axis_(axis) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* data = ctx.input(0);
    const Tensor* indices = ctx.input(1);
    if (!data || !indices) return KernelError("expects data and indices");
    if (data->rank() != indices->rank()) return KernelError("data and indices differ in rank");
    QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_, data->rank()));
    QUANTD_ASSIGN_OR_RETURN(auto idx, ToInt64Vector(*indices));
    const Shape& is = indices->shape();
    Shape ds = ContiguousStrides(data->shape());
    const int64_t dim = data->dim(axis);
    ctx.output(0) = Tensor(data->dtype(), is);
    return DispatchStorage(data->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      const T* src = data->data<T>();
      T* dst = ctx.output(0).data<T>();
      std::vector<int64_t> pos(is.size(), 0);
      for (int64_t e = 0; e < indices->size(); ++e) {
        int64_t off = 0;
        for (size_t d = 0; d < is.size(); ++d) {
          int64_t c = pos[d];
          if (static_cast<int>(d) == axis) {
            c = idx[static_cast<size_t>(e)];
            if (c < 0) c += dim;
            if (c < 0 || c >= dim) return KernelError("index out of range");
          }
          off += c * ds[d];
        }
        dst[e] = src[off];
        for (size_t d = is.size(); d-- > 0;) {
          if (++pos[d] < is[d]) break;
          pos[d] = 0;
        }
      }
      return Status::Ok();
    });
  }

 private:
  int64_t axis_;
};

// ------------------------------------------------- Shape, Size, constants

class ShapeKernel final : public Kernel {
 public:
  ShapeKernel(int64_t start, std::optional<int64_t> end) : start_(start), end_(end) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects an input");
    int64_t rank = in->rank();
    auto clampi = [rank](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + rank : v, 0, rank); };
    int64_t start = clampi(start_);
    int64_t end = end_ ? clampi(*end_) : rank;
    std::vector<int64_t> dims;
    for (int64_t d = start; d < end; ++d) dims.push_back(in->dim(static_cast<int>(d)));
    ctx.output(0) = Tensor::FromVector<int64_t>({static_cast<int64_t>(dims.size())}, dims);
    return Status::Ok();
  }

 private:
  int64_t start_;
  std::optional<int64_t> end_;
};

class SizeKernel final : public Kernel {
 public:
  Status Compute(KernelContext& ctx) const override {
    if (!ctx.input(0)) return KernelError("expects an input");
    ctx.output(0) = Tensor::Scalar<int64_t>(ctx.input(0)->size());
    return Status::Ok();
  }
};

class ConstantKernel final : public Kernel {
 public:
  explicit ConstantKernel(Tensor value) : value_(std::move(value)) {}
  Status Compute(KernelContext& ctx) const override {
    ctx.output(0) = value_;
    return Status::Ok();
  }

 private:
  Tensor value_;
};

StatusOr<std::unique_ptr<Kernel>> MakeConstant(const KernelInit& init) {
  const auto& a = init.attributes;
  if (a.Has("value")) {
    QUANTD_ASSIGN_OR_RETURN(Tensor t, a.TensorValue("value"));
    return MakeKernel<ConstantKernel>(std::move(t));
  }
  if (a.Has("value_float")) return MakeKernel<ConstantKernel>(Tensor::Scalar<float>(a.Float("value_float", 0)));
  if (a.Has("value_int")) return MakeKernel<ConstantKernel>(Tensor::Scalar<int64_t>(a.Int("value_int", 0)));
  if (a.Has("value_floats")) {
    auto v = a.Floats("value_floats");
    return MakeKernel<ConstantKernel>(Tensor::FromVector<float>({static_cast<int64_t>(v.size())}, v));
  }
  if (a.Has("value_ints")) {
    auto v = a.Ints("value_ints");
    return MakeKernel<ConstantKernel>(Tensor::FromVector<int64_t>({static_cast<int64_t>(v.size())}, v));
  }
  return Status(StatusCode::kUnimplemented, "RUNTIME_UNSUPPORTED_TYPE",
                "Constant needs value, value_float(s) or value_int(s); sparse and string values are not supported");
}

class ConstantOfShapeKernel final : public Kernel {
 public:
  explicit ConstantOfShapeKernel(Tensor value) : value_(std::move(value)) {}
  Status Compute(KernelContext& ctx) const override {
    if (!ctx.input(0)) return KernelError("expects a shape");
    QUANTD_ASSIGN_OR_RETURN(auto shape, ToInt64Vector(*ctx.input(0)));
    for (int64_t d : shape) {
      if (d < 0) return KernelError("negative dim in " + ShapeToString(shape));
    }
    Tensor out(value_.dtype(), shape);
    return DispatchStorage(out.dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      std::fill(out.data<T>(), out.data<T>() + out.size(), value_.data<T>()[0]);
      ctx.output(0) = std::move(out);
      return Status::Ok();
    });
  }

 private:
  Tensor value_;
};

// ------------------------------------------------------------ Expand, Tile

Status BroadcastTo(const Tensor& in, const Shape& in_shape, const Shape& target, Tensor& out, ThreadPool& pool) {
  QUANTD_ASSIGN_OR_RETURN(auto layout, BroadcastLayout<2>::Make({&in_shape, &target}));
  out = Tensor(in.dtype(), layout.out_shape);
  return DispatchStorage(in.dtype(), [&](auto tag) -> Status {
    using T = typename decltype(tag)::type;
    const T* src = in.data<T>();
    T* dst = out.data<T>();
    ParallelRange(pool, layout.total, kParallelGrain, [&](int64_t b, int64_t e) {
      layout.ForRuns(b, e, [&](int64_t o, int64_t n, const std::array<int64_t, 2>& off, const std::array<int64_t, 2>& inner) {
        if (inner[0]) {
          std::memcpy(dst + o, src + off[0], static_cast<size_t>(n) * sizeof(T));
        } else {
          std::fill(dst + o, dst + o + n, src[off[0]]);
        }
      });
    });
    return Status::Ok();
  });
}

class ExpandKernel final : public Kernel {
 public:
  Status Compute(KernelContext& ctx) const override {
    if (!ctx.input(0) || !ctx.input(1)) return KernelError("expects input and shape");
    QUANTD_ASSIGN_OR_RETURN(auto shape, ToInt64Vector(*ctx.input(1)));
    return BroadcastTo(*ctx.input(0), ctx.input(0)->shape(), shape, ctx.output(0), ctx.threads());
  }
};

class TileKernel final : public Kernel {
 public:
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in || !ctx.input(1)) return KernelError("expects input and repeats");
    QUANTD_ASSIGN_OR_RETURN(auto repeats, ToInt64Vector(*ctx.input(1)));
    if (static_cast<int>(repeats.size()) != in->rank()) return KernelError("repeats does not match the input rank");
    // Tile is a broadcast of [1,d0,1,d1,...] to [r0,d0,r1,d1,...].
    Shape interleaved_in, interleaved_out, out_shape;
    for (int d = 0; d < in->rank(); ++d) {
      if (repeats[static_cast<size_t>(d)] < 0) return KernelError("negative repeat");
      interleaved_in.push_back(1);
      interleaved_in.push_back(in->dim(d));
      interleaved_out.push_back(repeats[static_cast<size_t>(d)]);
      interleaved_out.push_back(in->dim(d));
      out_shape.push_back(in->dim(d) * repeats[static_cast<size_t>(d)]);
    }
    Tensor out;
    QUANTD_RETURN_IF_ERROR(BroadcastTo(*in, interleaved_in, interleaved_out, out, ctx.threads()));
    ctx.output(0) = out.Reshaped(out_shape);
    return Status::Ok();
  }
};

// -------------------------------------------------------------------- Pad

enum class PadMode { kConstant, kReflect, kEdge, kWrap };

class PadKernel final : public Kernel {
 public:
  PadKernel(PadMode mode, bool from_inputs, std::vector<int64_t> pads_attr, float value_attr)
      : mode_(mode), from_inputs_(from_inputs), pads_attr_(std::move(pads_attr)), value_attr_(value_attr) {}

  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects data");
    const int rank = in->rank();
    std::vector<int64_t> pads = pads_attr_;
    Tensor value = CastTo(Tensor::Scalar<float>(value_attr_), in->dtype());
    if (from_inputs_) {
      if (!ctx.input(1)) return KernelError("expects pads");
      QUANTD_ASSIGN_OR_RETURN(pads, ToInt64Vector(*ctx.input(1)));
      if (const Tensor* v = ctx.input(2); v && v->size() > 0) {
        if (v->dtype() != in->dtype()) return KernelError("constant_value type differs from data");
        value = *v;
      } else {
        value = Tensor::Zeros(in->dtype(), {});
      }
      if (const Tensor* axes_t = ctx.input(3)) {
        QUANTD_ASSIGN_OR_RETURN(auto axes, ToInt64Vector(*axes_t));
        if (pads.size() != 2 * axes.size()) return KernelError("pads does not match axes");
        std::vector<int64_t> full(static_cast<size_t>(2 * rank), 0);
        for (size_t i = 0; i < axes.size(); ++i) {
          QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axes[i], rank));
          full[static_cast<size_t>(axis)] = pads[i];
          full[static_cast<size_t>(axis + rank)] = pads[i + axes.size()];
        }
        pads = std::move(full);
      }
    }
    if (static_cast<int>(pads.size()) != 2 * rank) return KernelError("pads must have 2 * rank entries");
    if (!value.defined()) return KernelError("cannot convert the pad value");
    Shape out_shape(static_cast<size_t>(rank));
    for (int d = 0; d < rank; ++d) {
      out_shape[static_cast<size_t>(d)] = in->dim(d) + pads[static_cast<size_t>(d)] + pads[static_cast<size_t>(d + rank)];
      if (out_shape[static_cast<size_t>(d)] < 0) return KernelError("pads crop more than the input has");
      if (mode_ != PadMode::kConstant && in->dim(d) == 0 && out_shape[static_cast<size_t>(d)] > 0) {
        return KernelError("cannot reflect/edge pad an empty axis");
      }
    }
    Tensor out(in->dtype(), out_shape);
    return DispatchStorage(in->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      const T* src = in->data<T>();
      T* dst = out.data<T>();
      const T fill = value.data<T>()[0];
      Shape in_strides = ContiguousStrides(in->shape());
      // Maps an output coordinate to an input one; -1 when it falls in the
      // constant padding.
      auto map = [&](int d, int64_t o) -> int64_t {
        int64_t n = in->dim(d);
        int64_t i = o - pads[static_cast<size_t>(d)];
        if (i >= 0 && i < n) return i;
        switch (mode_) {
          case PadMode::kConstant: return -1;
          case PadMode::kEdge: return i < 0 ? 0 : n - 1;
          case PadMode::kWrap: return ((i % n) + n) % n;
          case PadMode::kReflect: {
            if (n == 1) return 0;
            int64_t period = 2 * (n - 1);
            int64_t m = ((i % period) + period) % period;
            return m < n ? m : period - m;
          }
        }
        return -1;
      };
      if (rank == 0) {
        if (out.size()) dst[0] = src[0];
        ctx.output(0) = std::move(out);
        return Status::Ok();
      }
      const int64_t cols = out_shape.back();
      const int64_t rows = cols ? out.size() / cols : 0;
      std::vector<int64_t> col_map(static_cast<size_t>(cols));
      for (int64_t c = 0; c < cols; ++c) col_map[static_cast<size_t>(c)] = map(rank - 1, c);
      std::vector<int64_t> pos(static_cast<size_t>(rank - 1), 0);
      for (int64_t r = 0; r < rows; ++r) {
        int64_t off = 0;
        bool inside = true;
        for (int d = 0; d < rank - 1; ++d) {
          int64_t i = map(d, pos[static_cast<size_t>(d)]);
          if (i < 0) {
            inside = false;
            break;
          }
          off += i * in_strides[static_cast<size_t>(d)];
        }
        T* row = dst + r * cols;
        if (!inside) {
          std::fill(row, row + cols, fill);
        } else {
          for (int64_t c = 0; c < cols; ++c) {
            int64_t i = col_map[static_cast<size_t>(c)];
            row[c] = i < 0 ? fill : src[off + i];
          }
        }
        for (int d = rank - 2; d >= 0; --d) {
          if (++pos[static_cast<size_t>(d)] < out_shape[static_cast<size_t>(d)]) break;
          pos[static_cast<size_t>(d)] = 0;
        }
      }
      ctx.output(0) = std::move(out);
      return Status::Ok();
    });
  }

 private:
  PadMode mode_;
  bool from_inputs_;
  std::vector<int64_t> pads_attr_;
  float value_attr_;
};

// ------------------------------------------------ Range, NonZero, CumSum

class RangeKernel final : public Kernel {
 public:
  Status Compute(KernelContext& ctx) const override {
    const Tensor* s = ctx.input(0);
    const Tensor* l = ctx.input(1);
    const Tensor* d = ctx.input(2);
    if (!s || !l || !d) return KernelError("expects start, limit and delta");
    if (s->size() != 1 || l->size() != 1 || d->size() != 1) return KernelError("start, limit and delta must be scalars");
    return DispatchNumeric(s->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      if (l->dtype() != s->dtype() || d->dtype() != s->dtype()) return KernelError("inputs differ in type");
      T start = s->data<T>()[0], limit = l->data<T>()[0], delta = d->data<T>()[0];
      if (delta == T(0)) return KernelError("delta is 0");
      double count = std::ceil((static_cast<double>(limit) - static_cast<double>(start)) / static_cast<double>(delta));
      int64_t n = std::max<int64_t>(0, static_cast<int64_t>(count));
      ctx.output(0) = Tensor(s->dtype(), {n});
      T* y = ctx.output(0).data<T>();
      for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(start + static_cast<T>(i) * delta);
      return Status::Ok();
    });
  }
};

class NonZeroKernel final : public Kernel {
 public:
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects an input");
    std::vector<int64_t> flat;
    Status status = [&]() -> Status {
      if (in->dtype() == DataType::kBool) {
        for (int64_t i = 0; i < in->size(); ++i) {
          if (in->data<bool>()[i]) flat.push_back(i);
        }
        return Status::Ok();
      }
      return DispatchNumeric(in->dtype(), [&](auto tag) -> Status {
        using T = typename decltype(tag)::type;
        for (int64_t i = 0; i < in->size(); ++i) {
          if (in->data<T>()[i] != T(0)) flat.push_back(i);
        }
        return Status::Ok();
      });
    }();
    QUANTD_RETURN_IF_ERROR(status);
    const int rank = in->rank();
    const int64_t nnz = static_cast<int64_t>(flat.size());
    Tensor out(DataType::kInt64, {rank, nnz});
    int64_t* y = out.data<int64_t>();
    for (int64_t j = 0; j < nnz; ++j) {
      int64_t rem = flat[static_cast<size_t>(j)];
      for (int d = rank - 1; d >= 0; --d) {
        y[d * nnz + j] = rem % in->dim(d);
        rem /= in->dim(d);
      }
    }
    ctx.output(0) = std::move(out);
    return Status::Ok();
  }
};

class CumSumKernel final : public Kernel {
 public:
  CumSumKernel(bool exclusive, bool reverse) : exclusive_(exclusive), reverse_(reverse) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in || !ctx.input(1)) return KernelError("expects x and axis");
    QUANTD_ASSIGN_OR_RETURN(auto axis_v, ToInt64Vector(*ctx.input(1)));
    if (axis_v.size() != 1) return KernelError("axis must be a scalar");
    QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_v[0], in->rank()));
    int64_t outer = 1, n = in->dim(axis), inner = 1;
    for (int d = 0; d < axis; ++d) outer *= in->dim(d);
    for (int d = axis + 1; d < in->rank(); ++d) inner *= in->dim(d);
    ctx.output(0) = Tensor(in->dtype(), in->shape());
    return DispatchNumeric(in->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      const T* x = in->data<T>();
      T* y = ctx.output(0).data<T>();
      std::vector<T> acc(static_cast<size_t>(inner));
      for (int64_t o = 0; o < outer; ++o) {
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t k = 0; k < n; ++k) {
          int64_t i = reverse_ ? n - 1 - k : k;
          const T* xi = x + (o * n + i) * inner;
          T* yi = y + (o * n + i) * inner;
          for (int64_t j = 0; j < inner; ++j) {
            if (exclusive_) {
              yi[j] = acc[static_cast<size_t>(j)];
              acc[static_cast<size_t>(j)] = static_cast<T>(acc[static_cast<size_t>(j)] + xi[j]);
            } else {
              acc[static_cast<size_t>(j)] = static_cast<T>(acc[static_cast<size_t>(j)] + xi[j]);
              yi[j] = acc[static_cast<size_t>(j)];
            }
          }
        }
      }
      return Status::Ok();
    });
  }

 private:
  bool exclusive_;
  bool reverse_;
};

// ------------------------------------------------- DepthToSpace & friends

class DepthToSpaceKernel final : public Kernel {
 public:
  DepthToSpaceKernel(bool to_space, int64_t block, bool crd) : to_space_(to_space), block_(block), crd_(crd) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in || in->rank() != 4) return KernelError("expects a 4-D input");
    const int64_t n = in->dim(0), c = in->dim(1), h = in->dim(2), w = in->dim(3), b = block_;
    if (b <= 0) return KernelError("blocksize must be positive");
    Shape view, perm_src, out_shape;
    // Express both ops as a 6-D transpose of a reshaped view.
    std::vector<int> perm;
    if (to_space_) {
      if (c % (b * b) != 0) return KernelError("channels not divisible by blocksize^2");
      int64_t oc = c / (b * b);
      if (crd_) {
        view = {n, oc, b, b, h, w};
        perm = {0, 1, 4, 2, 5, 3};
      } else {
        view = {n, b, b, oc, h, w};
        perm = {0, 3, 4, 1, 5, 2};
      }
      out_shape = {n, oc, h * b, w * b};
    } else {
      if (h % b != 0 || w % b != 0) return KernelError("spatial dims not divisible by blocksize");
      view = {n, c, h / b, b, w / b, b};
      perm = {0, 3, 5, 1, 2, 4};
      out_shape = {n, c * b * b, h / b, w / b};
    }
    Shape strides = ContiguousStrides(view);
    Shape pshape(6), pstrides(6);
    for (int i = 0; i < 6; ++i) {
      pshape[static_cast<size_t>(i)] = view[static_cast<size_t>(perm[static_cast<size_t>(i)])];
      pstrides[static_cast<size_t>(i)] = strides[static_cast<size_t>(perm[static_cast<size_t>(i)])];
    }
    Tensor out;
    QUANTD_RETURN_IF_ERROR(CopyStrided(*in, 0, pstrides, pshape, out, ctx.threads()));
    ctx.output(0) = out.Reshaped(out_shape);
    return Status::Ok();
  }

 private:
  bool to_space_;
  int64_t block_;
  bool crd_;
};

class TriluKernel final : public Kernel {
 public:
  explicit TriluKernel(bool upper) : upper_(upper) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in || in->rank() < 2) return KernelError("expects a tensor of rank >= 2");
    int64_t k = 0;
    if (const Tensor* kt = ctx.input(1)) {
      QUANTD_ASSIGN_OR_RETURN(auto kv, ToInt64Vector(*kt));
      if (kv.size() != 1) return KernelError("k must be a scalar");
      k = kv[0];
    }
    const int64_t rows = in->dim(in->rank() - 2), cols = in->dim(in->rank() - 1);
    const int64_t planes = rows * cols != 0 ? in->size() / (rows * cols) : 0;
    ctx.output(0) = in->Clone();
    return DispatchStorage(in->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      T* y = ctx.output(0).data<T>();
      for (int64_t p = 0; p < planes; ++p) {
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < cols; ++c) {
            bool keep = upper_ ? c - r >= k : c - r <= k;
            if (!keep) y[(p * rows + r) * cols + c] = T(0);
          }
        }
      }
      return Status::Ok();
    });
  }

 private:
  bool upper_;
};

// ------------------------------------------------- GatherND / Scatter*

class GatherNDKernel final : public Kernel {
 public:
  explicit GatherNDKernel(int64_t batch_dims) : batch_dims_(batch_dims) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* data = ctx.input(0);
    const Tensor* indices = ctx.input(1);
    if (!data || !indices) return KernelError("expects data and indices");
    const int64_t b = batch_dims_;
    const int q = indices->rank();
    if (q < 1 || b >= q || b >= data->rank()) return KernelError("batch_dims out of range");
    const int64_t k = indices->dim(q - 1);
    if (b + k > data->rank()) return KernelError("index tuples are longer than the data rank allows");
    QUANTD_ASSIGN_OR_RETURN(auto idx, ToInt64Vector(*indices));
    int64_t batch = 1;
    for (int64_t d = 0; d < b; ++d) {
      if (indices->dim(static_cast<int>(d)) != data->dim(static_cast<int>(d))) return KernelError("batch dims differ");
      batch *= data->dim(static_cast<int>(d));
    }
    int64_t slice = 1;
    for (int d = static_cast<int>(b + k); d < data->rank(); ++d) slice *= data->dim(d);
    const int64_t data_batch = batch ? data->size() / batch : 0;
    const int64_t tuples = batch && k ? indices->size() / k / batch : (batch ? indices->size() / batch : 0);
    Shape data_strides = ContiguousStrides(data->shape());
    Shape out_shape(indices->shape().begin(), indices->shape().end() - 1);
    out_shape.insert(out_shape.end(), data->shape().begin() + b + k, data->shape().end());
    Tensor out(data->dtype(), out_shape);
    const size_t es = ElementSize(data->dtype());
    const auto* src = static_cast<const std::byte*>(data->raw());
    auto* dst = static_cast<std::byte*>(out.raw());
    for (int64_t bi = 0; bi < batch; ++bi) {
      for (int64_t t = 0; t < tuples; ++t) {
        const int64_t* tuple = idx.data() + (bi * tuples + t) * k;
        int64_t off = bi * data_batch;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t dim = data->dim(static_cast<int>(b + j));
          int64_t i = tuple[j] < 0 ? tuple[j] + dim : tuple[j];
          if (i < 0 || i >= dim) return KernelError("index out of range");
          off += i * data_strides[static_cast<size_t>(b + j)];
        }
        std::memcpy(dst + static_cast<size_t>((bi * tuples + t) * slice) * es, src + static_cast<size_t>(off) * es,
                    static_cast<size_t>(slice) * es);
      }
    }
    ctx.output(0) = std::move(out);
    return Status::Ok();
  }

 private:
  int64_t batch_dims_;
};

enum class ScatterReduce { kNone, kAdd, kMul, kMax, kMin };

StatusOr<ScatterReduce> ParseScatterReduce(const std::string& r) {
  if (r == "none") return ScatterReduce::kNone;
  if (r == "add") return ScatterReduce::kAdd;
  if (r == "mul") return ScatterReduce::kMul;
  if (r == "max") return ScatterReduce::kMax;
  if (r == "min") return ScatterReduce::kMin;
  return NodeError("unknown reduction '" + r + "'");
}

template <typename T>
void ScatterApply(ScatterReduce r, T& dst, T v) {
  switch (r) {
    case ScatterReduce::kNone: dst = v; break;
    case ScatterReduce::kAdd: dst = static_cast<T>(dst + v); break;
    case ScatterReduce::kMul: dst = static_cast<T>(dst * v); break;
    case ScatterReduce::kMax: dst = v > dst ? v : dst; break;
    case ScatterReduce::kMin: dst = v < dst ? v : dst; break;
  }
}

// Scatter (opset 9-10) and ScatterElements.
class ScatterElementsKernel final : public Kernel {
 public:
  ScatterElementsKernel(int64_t axis, ScatterReduce reduce) : axis_(axis), reduce_(reduce) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* data = ctx.input(0);
    const Tensor* indices = ctx.input(1);
    const Tensor* updates = ctx.input(2);
    if (!data || !indices || !updates) return KernelError("expects data, indices and updates");
    if (indices->shape() != updates->shape() || indices->rank() != data->rank()) {
      return KernelError("indices and updates must have the same shape and data's rank");
    }
    QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_, data->rank()));
    QUANTD_ASSIGN_OR_RETURN(auto idx, ToInt64Vector(*indices));
    Tensor out = data->Clone();
    Shape ds = ContiguousStrides(data->shape());
    const Shape& is = indices->shape();
    const int64_t dim = data->dim(axis);
    auto body = [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      T* y = out.data<T>();
      const T* u = updates->data<T>();
      std::vector<int64_t> pos(is.size(), 0);
      for (int64_t e = 0; e < indices->size(); ++e) {
        int64_t off = 0;
        for (size_t d = 0; d < is.size(); ++d) {
          int64_t c = pos[d];
          if (static_cast<int>(d) == axis) {
            c = idx[static_cast<size_t>(e)] < 0 ? idx[static_cast<size_t>(e)] + dim : idx[static_cast<size_t>(e)];
            if (c < 0 || c >= dim) return KernelError("index out of range");
          }
          off += c * ds[d];
        }
        ScatterApply(reduce_, y[off], u[e]);
        for (size_t d = is.size(); d-- > 0;) {
          if (++pos[d] < is[d]) break;
          pos[d] = 0;
        }
      }
      return Status::Ok();
    };
    Status st = reduce_ == ScatterReduce::kNone ? DispatchStorage(data->dtype(), body) : DispatchNumeric(data->dtype(), body);
    QUANTD_RETURN_IF_ERROR(st);
    ctx.output(0) = std::move(out);
    return Status::Ok();
  }

 private:
  int64_t axis_;
  ScatterReduce reduce_;
};

class ScatterNDKernel final : public Kernel {
 public:
  explicit ScatterNDKernel(ScatterReduce reduce) : reduce_(reduce) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* data = ctx.input(0);
    const Tensor* indices = ctx.input(1);
    const Tensor* updates = ctx.input(2);
    if (!data || !indices || !updates) return KernelError("expects data, indices and updates");
    if (indices->rank() < 1) return KernelError("indices must have rank >= 1");
    const int64_t k = indices->dim(indices->rank() - 1);
    if (k > data->rank()) return KernelError("index tuples are longer than the data rank");
    QUANTD_ASSIGN_OR_RETURN(auto idx, ToInt64Vector(*indices));
    int64_t slice = 1;
    for (int d = static_cast<int>(k); d < data->rank(); ++d) slice *= data->dim(d);
    const int64_t tuples = k ? indices->size() / k : 0;
    if (updates->size() != tuples * slice) return KernelError("updates has the wrong size");
    Shape ds = ContiguousStrides(data->shape());
    Tensor out = data->Clone();
    auto body = [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      T* y = out.data<T>();
      const T* u = updates->data<T>();
      for (int64_t t = 0; t < tuples; ++t) {
        int64_t off = 0;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t dim = data->dim(static_cast<int>(j));
          int64_t i = idx[static_cast<size_t>(t * k + j)];
          if (i < 0) i += dim;
          if (i < 0 || i >= dim) return KernelError("index out of range");
          off += i * ds[static_cast<size_t>(j)];
        }
        for (int64_t s = 0; s < slice; ++s) ScatterApply(reduce_, y[off + s], u[t * slice + s]);
      }
      return Status::Ok();
    };
    Status st = reduce_ == ScatterReduce::kNone ? DispatchStorage(data->dtype(), body) : DispatchNumeric(data->dtype(), body);
    QUANTD_RETURN_IF_ERROR(st);
    ctx.output(0) = std::move(out);
    return Status::Ok();
  }

 private:
  ScatterReduce reduce_;
};

// --------------------------------------- OneHot, EyeLike, Compress, ...

class OneHotKernel final : public Kernel {
 public:
  explicit OneHotKernel(int64_t axis) : axis_(axis) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* indices = ctx.input(0);
    const Tensor* depth_t = ctx.input(1);
    const Tensor* values = ctx.input(2);
    if (!indices || !depth_t || !values) return KernelError("expects indices, depth and values");
    if (values->size() != 2) return KernelError("values must hold [off, on]");
    Tensor depth_d = CastTo(*depth_t, DataType::kDouble);
    Tensor idx_d = CastTo(*indices, DataType::kDouble);
    if (!depth_d.defined() || !idx_d.defined() || depth_d.size() != 1) return KernelError("bad depth or indices");
    const int64_t depth = static_cast<int64_t>(depth_d.data<double>()[0]);
    if (depth < 1) return KernelError("depth must be positive");
    const int out_rank = indices->rank() + 1;
    QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_, out_rank));
    Shape out_shape = indices->shape();
    out_shape.insert(out_shape.begin() + axis, depth);
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < axis; ++d) outer *= indices->dim(d);
    for (int d = axis; d < indices->rank(); ++d) inner *= indices->dim(d);
    Tensor out(values->dtype(), out_shape);
    return DispatchStorage(values->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      const T off = values->data<T>()[0], on = values->data<T>()[1];
      T* y = out.data<T>();
      std::fill(y, y + out.size(), off);
      const double* ix = idx_d.data<double>();
      for (int64_t o = 0; o < outer; ++o) {
        for (int64_t j = 0; j < inner; ++j) {
          int64_t v = static_cast<int64_t>(ix[o * inner + j]);
          if (v < 0) v += depth;
          if (v >= 0 && v < depth) y[(o * depth + v) * inner + j] = on;
        }
      }
      ctx.output(0) = std::move(out);
      return Status::Ok();
    });
  }

 private:
  int64_t axis_;
};

class EyeLikeKernel final : public Kernel {
 public:
  EyeLikeKernel(DataType dtype, int64_t k) : dtype_(dtype), k_(k) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in || in->rank() != 2) return KernelError("expects a 2-D input");
    DataType type = dtype_ == DataType::kUndefined ? in->dtype() : dtype_;
    Tensor out = Tensor::Zeros(type, in->shape());
    Tensor one = CastTo(Tensor::Scalar<float>(1.0f), type);
    if (!one.defined()) return KernelError("unsupported output type");
    const size_t es = ElementSize(type);
    auto* y = static_cast<std::byte*>(out.raw());
    for (int64_t r = 0; r < in->dim(0); ++r) {
      int64_t c = r + k_;
      if (c >= 0 && c < in->dim(1)) std::memcpy(y + static_cast<size_t>(r * in->dim(1) + c) * es, one.raw(), es);
    }
    ctx.output(0) = std::move(out);
    return Status::Ok();
  }

 private:
  DataType dtype_;
  int64_t k_;
};

class CompressKernel final : public Kernel {
 public:
  explicit CompressKernel(std::optional<int64_t> axis) : axis_(axis) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    const Tensor* cond = ctx.input(1);
    if (!in || !cond || cond->dtype() != DataType::kBool) return KernelError("expects input and a bool condition");
    Tensor src = *in;
    int axis = 0;
    if (axis_) {
      QUANTD_ASSIGN_OR_RETURN(axis, NormalizeAxis(*axis_, in->rank()));
    } else {
      src = in->Reshaped({in->size()});
    }
    const int64_t dim = src.dim(axis);
    std::vector<int64_t> keep;
    for (int64_t i = 0; i < std::min(dim, cond->size()); ++i) {
      if (cond->data<bool>()[i]) keep.push_back(i);
    }
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < axis; ++d) outer *= src.dim(d);
    for (int d = axis + 1; d < src.rank(); ++d) inner *= src.dim(d);
    Shape out_shape = src.shape();
    out_shape[static_cast<size_t>(axis)] = static_cast<int64_t>(keep.size());
    Tensor out(src.dtype(), out_shape);
    const size_t bytes = static_cast<size_t>(inner) * ElementSize(src.dtype());
    const auto* s = static_cast<const std::byte*>(src.raw());
    auto* d = static_cast<std::byte*>(out.raw());
    const int64_t n = static_cast<int64_t>(keep.size());
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t j = 0; j < n; ++j) {
        std::memcpy(d + (o * n + j) * bytes, s + (o * dim + keep[static_cast<size_t>(j)]) * bytes, bytes);
      }
    }
    ctx.output(0) = std::move(out);
    return Status::Ok();
  }

 private:
  std::optional<int64_t> axis_;
};

class ReverseSequenceKernel final : public Kernel {
 public:
  ReverseSequenceKernel(int64_t batch_axis, int64_t time_axis) : batch_axis_(batch_axis), time_axis_(time_axis) {}
  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    const Tensor* lens_t = ctx.input(1);
    if (!in || !lens_t || in->rank() < 2) return KernelError("expects input of rank >= 2 and sequence_lens");
    QUANTD_ASSIGN_OR_RETURN(auto lens, ToInt64Vector(*lens_t));
    QUANTD_ASSIGN_OR_RETURN(int ba, NormalizeAxis(batch_axis_, in->rank()));
    QUANTD_ASSIGN_OR_RETURN(int ta, NormalizeAxis(time_axis_, in->rank()));
    if (static_cast<int64_t>(lens.size()) != in->dim(ba)) return KernelError("sequence_lens must have one entry per batch");
    Shape strides = ContiguousStrides(in->shape());
    Tensor out = in->Clone();
    const size_t es = ElementSize(in->dtype());
    const auto* s = static_cast<const std::byte*>(in->raw());
    auto* d = static_cast<std::byte*>(out.raw());
    std::vector<int64_t> pos(static_cast<size_t>(in->rank()), 0);
    for (int64_t e = 0; e < in->size(); ++e) {
      int64_t b = pos[static_cast<size_t>(ba)], t = pos[static_cast<size_t>(ta)];
      int64_t len = std::clamp<int64_t>(lens[static_cast<size_t>(b)], 0, in->dim(ta));
      if (t < len) {
        int64_t src_off = e + (len - 1 - 2 * t) * strides[static_cast<size_t>(ta)];
        std::memcpy(d + static_cast<size_t>(e) * es, s + static_cast<size_t>(src_off) * es, es);
      }
      for (int k = in->rank() - 1; k >= 0; --k) {
        if (++pos[static_cast<size_t>(k)] < in->dim(k)) break;
        pos[static_cast<size_t>(k)] = 0;
      }
    }
    ctx.output(0) = std::move(out);
    return Status::Ok();
  }

 private:
  int64_t batch_axis_;
  int64_t time_axis_;
};

void RegisterAll(KernelRegistry& registry) {
  registry.Register("", "Reshape", 1, 4, [](const KernelInit& init) {
    return MakeKernel<ReshapeKernel>(init.attributes.Ints("shape"), false, false);
  });
  registry.Register("", "Reshape", 5, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<ReshapeKernel>(std::vector<int64_t>{}, true, init.attributes.Int("allowzero", 0) != 0);
  });
  registry.Register("", "Flatten", 1, kLatestOpset,
                    [](const KernelInit& init) { return MakeKernel<FlattenKernel>(init.attributes.Int("axis", 1)); });
  for (bool unsqueeze : {false, true}) {
    const char* op = unsqueeze ? "Unsqueeze" : "Squeeze";
    registry.Register("", op, 1, 12, [unsqueeze](const KernelInit& init) {
      return MakeKernel<SqueezeKernel>(unsqueeze, init.attributes.Ints("axes"), false);
    });
    registry.Register("", op, 13, kLatestOpset, [unsqueeze](const KernelInit&) {
      return MakeKernel<SqueezeKernel>(unsqueeze, std::vector<int64_t>{}, true);
    });
  }
  registry.Register("", "Transpose", 1, kLatestOpset,
                    [](const KernelInit& init) { return MakeKernel<TransposeKernel>(init.attributes.Ints("perm")); });
  registry.Register("", "Concat", 1, kLatestOpset,
                    [](const KernelInit& init) { return MakeKernel<ConcatKernel>(init.attributes.Int("axis", 1)); });
  registry.Register("", "Split", 1, 12, [](const KernelInit& init) {
    return MakeKernel<SplitKernel>(init.attributes.Int("axis", 0), init.attributes.Ints("split"), init.opset < 2, 0);
  });
  registry.Register("", "Split", 13, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<SplitKernel>(init.attributes.Int("axis", 0), std::vector<int64_t>{}, true,
                                   init.attributes.Int("num_outputs", 0));
  });
  registry.Register("", "Slice", 1, 9, [](const KernelInit& init) {
    return MakeKernel<SliceKernel>(false, init.attributes.Ints("starts"), init.attributes.Ints("ends"),
                                   init.attributes.Ints("axes"));
  });
  registry.Register("", "Slice", 10, kLatestOpset, [](const KernelInit&) {
    return MakeKernel<SliceKernel>(true, std::vector<int64_t>{}, std::vector<int64_t>{}, std::vector<int64_t>{});
  });
  registry.Register("", "Gather", 1, kLatestOpset,
                    [](const KernelInit& init) { return MakeKernel<GatherKernel>(init.attributes.Int("axis", 0)); });
  registry.Register("", "GatherElements", 11, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<GatherElementsKernel>(init.attributes.Int("axis", 0));
  });
  registry.Register("", "Shape", 1, kLatestOpset, [](const KernelInit& init) {
    std::optional<int64_t> end;
    if (init.attributes.Has("end")) end = init.attributes.Int("end", 0);
    return MakeKernel<ShapeKernel>(init.attributes.Int("start", 0), end);
  });
  registry.Register("", "Size", 1, kLatestOpset, [](const KernelInit&) { return MakeKernel<SizeKernel>(); });
  registry.Register("", "Constant", 1, kLatestOpset, MakeConstant);
  registry.Register("", "ConstantOfShape", 9, kLatestOpset,
                    [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
                      Tensor value = Tensor::Zeros(DataType::kFloat, {1});
                      if (init.attributes.Has("value")) {
                        QUANTD_ASSIGN_OR_RETURN(value, init.attributes.TensorValue("value"));
                        if (value.size() != 1) return NodeError("value must hold one element");
                      }
                      return MakeKernel<ConstantOfShapeKernel>(std::move(value));
                    });
  registry.Register("", "Expand", 8, kLatestOpset, [](const KernelInit&) { return MakeKernel<ExpandKernel>(); });
  registry.Register("", "Tile", 6, kLatestOpset, [](const KernelInit&) { return MakeKernel<TileKernel>(); });
  auto pad_factory = [](bool from_inputs) {
    return [from_inputs](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
      std::string mode = init.attributes.String("mode", "constant");
      PadMode m;
      if (mode == "constant") {
        m = PadMode::kConstant;
      } else if (mode == "reflect") {
        m = PadMode::kReflect;
      } else if (mode == "edge") {
        m = PadMode::kEdge;
      } else if (mode == "wrap") {
        m = PadMode::kWrap;
      } else {
        return NodeError("unknown pad mode '" + mode + "'");
      }
      std::vector<int64_t> pads = init.attributes.Ints(init.opset < 2 ? "paddings" : "pads");
      return MakeKernel<PadKernel>(m, from_inputs, std::move(pads), init.attributes.Float("value", 0.0f));
    };
  };
  registry.Register("", "Pad", 1, 10, pad_factory(false));
  registry.Register("", "Pad", 11, kLatestOpset, pad_factory(true));
  registry.Register("", "Range", 11, kLatestOpset, [](const KernelInit&) { return MakeKernel<RangeKernel>(); });
  registry.Register("", "NonZero", 9, kLatestOpset, [](const KernelInit&) { return MakeKernel<NonZeroKernel>(); });
  registry.Register("", "CumSum", 11, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<CumSumKernel>(init.attributes.Int("exclusive", 0) != 0, init.attributes.Int("reverse", 0) != 0);
  });
  registry.Register("", "DepthToSpace", 1, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<DepthToSpaceKernel>(true, init.attributes.Int("blocksize", 0),
                                          init.attributes.String("mode", "DCR") == "CRD");
  });
  registry.Register("", "SpaceToDepth", 1, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<DepthToSpaceKernel>(false, init.attributes.Int("blocksize", 0), false);
  });
  registry.Register("", "Trilu", 14, kLatestOpset,
                    [](const KernelInit& init) { return MakeKernel<TriluKernel>(init.attributes.Int("upper", 1) != 0); });

  registry.Register("", "GatherND", 11, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<GatherNDKernel>(init.attributes.Int("batch_dims", 0));
  });
  registry.Register("", "Scatter", 9, 10, [](const KernelInit& init) {
    return MakeKernel<ScatterElementsKernel>(init.attributes.Int("axis", 0), ScatterReduce::kNone);
  });
  registry.Register("", "ScatterElements", 11, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    QUANTD_ASSIGN_OR_RETURN(ScatterReduce r, ParseScatterReduce(init.attributes.String("reduction", "none")));
    return MakeKernel<ScatterElementsKernel>(init.attributes.Int("axis", 0), r);
  });
  registry.Register("", "ScatterND", 11, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    QUANTD_ASSIGN_OR_RETURN(ScatterReduce r, ParseScatterReduce(init.attributes.String("reduction", "none")));
    return MakeKernel<ScatterNDKernel>(r);
  });
  registry.Register("", "OneHot", 9, kLatestOpset,
                    [](const KernelInit& init) { return MakeKernel<OneHotKernel>(init.attributes.Int("axis", -1)); });
  registry.Register("", "EyeLike", 9, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<EyeLikeKernel>(static_cast<DataType>(init.attributes.Int("dtype", 0)), init.attributes.Int("k", 0));
  });
  registry.Register("", "Compress", 9, kLatestOpset, [](const KernelInit& init) {
    std::optional<int64_t> axis;
    if (init.attributes.Has("axis")) axis = init.attributes.Int("axis", 0);
    return MakeKernel<CompressKernel>(axis);
  });
  registry.Register("", "ReverseSequence", 10, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<ReverseSequenceKernel>(init.attributes.Int("batch_axis", 1), init.attributes.Int("time_axis", 0));
  });
}

}  // namespace

}  // namespace quantd::runtime::kernels

namespace quantd::runtime {
void RegisterShapeKernels(KernelRegistry& registry) { kernels::RegisterAll(registry); }
}  // namespace quantd::runtime
