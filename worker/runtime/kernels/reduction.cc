// Reduce* ops and ArgMax/ArgMin.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <optional>

#include <onnx/onnx_pb.h>

#include "worker/runtime/kernels/kernel_util.h"

namespace quantd::runtime::kernels {

namespace {

enum class Reduce { kSum, kMean, kMax, kMin, kProd, kL1, kL2, kLogSum, kLogSumExp, kSumSquare };

// Per-element transform before combining.
enum class Pre { kNone, kAbs, kSquare, kExp };
enum class Combine { kSum, kProd, kMax, kMin };

// Accumulator type: float sums use float with split accumulators (see
// SumRun); integers accumulate in their own type, as ONNX Runtime does.
template <typename T, Pre kPre>
T Transform(T v) {
  if constexpr (kPre == Pre::kAbs) {
    if constexpr (std::is_unsigned_v<T>) {
      return v;
    } else {
      return v < T(0) ? static_cast<T>(-v) : v;
    }
  } else if constexpr (kPre == Pre::kSquare) {
    return static_cast<T>(v * v);
  } else if constexpr (kPre == Pre::kExp) {
    return static_cast<T>(std::exp(static_cast<double>(v)));
  } else {
    return v;
  }
}

template <typename T, Combine kCombine>
T Identity() {
  if constexpr (kCombine == Combine::kSum) {
    return T(0);
  } else if constexpr (kCombine == Combine::kProd) {
    return T(1);
  } else if constexpr (kCombine == Combine::kMax) {
    return std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::lowest();
  } else {
    return std::numeric_limits<T>::has_infinity ? std::numeric_limits<T>::infinity() : std::numeric_limits<T>::max();
  }
}

template <typename T, Combine kCombine>
T CombineTwo(T a, T b) {
  if constexpr (kCombine == Combine::kSum) {
    return static_cast<T>(a + b);
  } else if constexpr (kCombine == Combine::kProd) {
    return static_cast<T>(a * b);
  } else if constexpr (kCombine == Combine::kMax) {
    return b > a ? b : a;
  } else {
    return b < a ? b : a;
  }
}

// Reduces a contiguous run; eight partial accumulators let GCC vectorise
// float sums without reassociating a single chain.
template <typename T, Pre kPre, Combine kCombine>
T ReduceRun(const T* x, int64_t n) {
  constexpr int kLanes = 8;
  T lanes[kLanes];
  for (int j = 0; j < kLanes; ++j) lanes[j] = Identity<T, kCombine>();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] = CombineTwo<T, kCombine>(lanes[j], Transform<T, kPre>(x[i + j]));
  }
  T acc = Identity<T, kCombine>();
  for (int j = 0; j < kLanes; ++j) acc = CombineTwo<T, kCombine>(acc, lanes[j]);
  for (; i < n; ++i) acc = CombineTwo<T, kCombine>(acc, Transform<T, kPre>(x[i]));
  return acc;
}

template <typename T>
T Finish(Reduce r, T acc, int64_t count) {
  switch (r) {
    case Reduce::kMean: return static_cast<T>(static_cast<double>(acc) / static_cast<double>(count));
    case Reduce::kL2: return static_cast<T>(std::sqrt(static_cast<double>(acc)));
    case Reduce::kLogSum:
    case Reduce::kLogSumExp: return static_cast<T>(std::log(static_cast<double>(acc)));
    default: return acc;
  }
}

class ReduceKernel final : public Kernel {
 public:
  ReduceKernel(Reduce reduce, std::vector<int64_t> axes_attr, bool axes_from_input, bool keepdims,
               bool noop_with_empty_axes)
      : reduce_(reduce),
        axes_attr_(std::move(axes_attr)),
        axes_from_input_(axes_from_input),
        keepdims_(keepdims),
        noop_(noop_with_empty_axes) {}

  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects an input");
    std::vector<int64_t> axes = axes_attr_;
    if (axes_from_input_ && ctx.input(1)) {
      QUANTD_ASSIGN_OR_RETURN(axes, ToInt64Vector(*ctx.input(1)));
    }
    const int rank = in->rank();
    std::vector<bool> reduced(static_cast<size_t>(rank), false);
    if (axes.empty()) {
      if (noop_) {
        ctx.output(0) = *in;
        return Status::Ok();
      }
      reduced.assign(static_cast<size_t>(rank), true);
    }
    for (int64_t a : axes) {
      QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(a, rank));
      reduced[static_cast<size_t>(axis)] = true;
    }
    Shape kept_shape;  // keepdims form
    Shape out_shape;
    int64_t count = 1;
    for (int d = 0; d < rank; ++d) {
      if (reduced[static_cast<size_t>(d)]) {
        kept_shape.push_back(1);
        if (keepdims_) out_shape.push_back(1);
        count *= in->dim(d);
      } else {
        kept_shape.push_back(in->dim(d));
        out_shape.push_back(in->dim(d));
      }
    }
    return DispatchNumeric(in->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      ctx.output(0) = Tensor(in->dtype(), out_shape);
      switch (reduce_) {
        case Reduce::kMax: return Run<T, Pre::kNone, Combine::kMax>(ctx, *in, kept_shape, count);
        case Reduce::kMin: return Run<T, Pre::kNone, Combine::kMin>(ctx, *in, kept_shape, count);
        case Reduce::kProd: return Run<T, Pre::kNone, Combine::kProd>(ctx, *in, kept_shape, count);
        case Reduce::kL1: return Run<T, Pre::kAbs, Combine::kSum>(ctx, *in, kept_shape, count);
        case Reduce::kL2:
        case Reduce::kSumSquare: return Run<T, Pre::kSquare, Combine::kSum>(ctx, *in, kept_shape, count);
        case Reduce::kLogSumExp: return Run<T, Pre::kExp, Combine::kSum>(ctx, *in, kept_shape, count);
        default: return Run<T, Pre::kNone, Combine::kSum>(ctx, *in, kept_shape, count);
      }
    });
  }

 private:
  template <typename T, Pre kPre, Combine kCombine>
  Status Run(KernelContext& ctx, const Tensor& in, const Shape& kept_shape, int64_t count) const {
    Tensor& out = ctx.output(0);
    const T* x = in.data<T>();
    T* y = out.data<T>();
    const int64_t n_out = out.size();
    if (n_out == 0) return Status::Ok();
    // Every reduced axis trails every kept one: each output is one run.
    bool trailing = true;
    {
      bool seen_reduced = false;
      for (size_t d = 0; d < kept_shape.size(); ++d) {
        bool r = kept_shape[d] == 1 && in.shape()[d] != 1;
        if (r) seen_reduced = true;
        if (!r && seen_reduced && in.shape()[d] != 1) trailing = false;
      }
    }
    if (trailing) {
      int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(count, 1));
      ParallelRange(ctx.threads(), n_out, grain, [&](int64_t begin, int64_t end) {
        for (int64_t o = begin; o < end; ++o) {
          y[o] = Finish<T>(reduce_, ReduceRun<T, kPre, kCombine>(x + o * count, count), count);
        }
      });
      return Status::Ok();
    }
    // General case: walk the input once; the output is the "broadcast"
    // operand, stride 0 along reduced axes.
    for (int64_t o = 0; o < n_out; ++o) y[o] = Identity<T, kCombine>();
    QUANTD_ASSIGN_OR_RETURN(auto layout, BroadcastLayout<2>::Make({&in.shape(), &kept_shape}));
    layout.ForRuns(0, in.size(), [&](int64_t pos, int64_t n, const std::array<int64_t, 2>& off,
                                     const std::array<int64_t, 2>& inner) {
      const T* xs = x + off[0];
      T* ys = y + off[1];
      if (inner[1]) {
        for (int64_t i = 0; i < n; ++i) ys[i] = CombineTwo<T, kCombine>(ys[i], Transform<T, kPre>(xs[i]));
      } else {
        *ys = CombineTwo<T, kCombine>(*ys, ReduceRun<T, kPre, kCombine>(xs, n));
      }
    });
    for (int64_t o = 0; o < n_out; ++o) y[o] = Finish<T>(reduce_, y[o], count);
    return Status::Ok();
  }

  Reduce reduce_;
  std::vector<int64_t> axes_attr_;
  bool axes_from_input_;
  bool keepdims_;
  bool noop_;
};

class ArgKernel final : public Kernel {
 public:
  ArgKernel(bool is_max, int64_t axis, bool keepdims, bool select_last)
      : is_max_(is_max), axis_(axis), keepdims_(keepdims), select_last_(select_last) {}

  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects an input");
    QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_, std::max(in->rank(), 1)));
    if (in->rank() == 0) return KernelError("input must have rank >= 1");
    int64_t outer = 1, n = in->dim(axis), inner = 1;
    for (int d = 0; d < axis; ++d) outer *= in->dim(d);
    for (int d = axis + 1; d < in->rank(); ++d) inner *= in->dim(d);
    Shape out_shape = in->shape();
    if (keepdims_) {
      out_shape[static_cast<size_t>(axis)] = 1;
    } else {
      out_shape.erase(out_shape.begin() + axis);
    }
    ctx.output(0) = Tensor(DataType::kInt64, out_shape);
    int64_t* y = ctx.output(0).data<int64_t>();
    return DispatchNumeric(in->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      const T* x = in->data<T>();
      for (int64_t o = 0; o < outer; ++o) {
        for (int64_t j = 0; j < inner; ++j) {
          const T* base = x + o * n * inner + j;
          int64_t best = 0;
          for (int64_t i = 1; i < n; ++i) {
            T v = base[i * inner];
            T b = base[best * inner];
            bool better = is_max_ ? (select_last_ ? v >= b : v > b) : (select_last_ ? v <= b : v < b);
            if (better) best = i;
          }
          y[o * inner + j] = best;
        }
      }
      return Status::Ok();
    });
  }

 private:
  bool is_max_;
  int64_t axis_;
  bool keepdims_;
  bool select_last_;
};

// TopK: values and int64 indices of the k largest (or smallest) along an
// axis; ties keep the lower index first.
class TopKKernel final : public Kernel {
 public:
  // `sorted` = 0 lets the order be anything, so sorting always is fine.
  TopKKernel(std::optional<int64_t> k_attr, int64_t axis, bool largest)
      : k_attr_(k_attr), axis_(axis), largest_(largest) {}

  Status Compute(KernelContext& ctx) const override {
    const Tensor* in = ctx.input(0);
    if (!in) return KernelError("expects an input");
    int64_t k = 0;
    if (k_attr_) {
      k = *k_attr_;
    } else {
      if (!ctx.input(1)) return KernelError("expects K");
      QUANTD_ASSIGN_OR_RETURN(auto kv, ToInt64Vector(*ctx.input(1)));
      if (kv.size() != 1) return KernelError("K must hold one value");
      k = kv[0];
    }
    QUANTD_ASSIGN_OR_RETURN(int axis, NormalizeAxis(axis_, in->rank()));
    const int64_t n = in->dim(axis);
    if (k < 0 || k > n) return KernelError("K=" + std::to_string(k) + " is out of range for axis size " + std::to_string(n));
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < axis; ++d) outer *= in->dim(d);
    for (int d = axis + 1; d < in->rank(); ++d) inner *= in->dim(d);
    Shape out_shape = in->shape();
    out_shape[static_cast<size_t>(axis)] = k;
    ctx.output(0) = Tensor(in->dtype(), out_shape);
    Tensor indices(DataType::kInt64, out_shape);
    QUANTD_RETURN_IF_ERROR(DispatchNumeric(in->dtype(), [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      const T* x = in->data<T>();
      T* y = ctx.output(0).data<T>();
      int64_t* yi = indices.data<int64_t>();
      std::vector<int64_t> order(static_cast<size_t>(n));
      for (int64_t o = 0; o < outer; ++o) {
        for (int64_t j = 0; j < inner; ++j) {
          const T* base = x + o * n * inner + j;
          for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
          auto better = [&](int64_t a, int64_t b) {
            T va = base[a * inner], vb = base[b * inner];
            if (va != vb) return largest_ ? va > vb : va < vb;
            return a < b;
          };
          std::partial_sort(order.begin(), order.begin() + k, order.end(), better);
          for (int64_t i = 0; i < k; ++i) {
            int64_t src = order[static_cast<size_t>(i)];
            y[(o * k + i) * inner + j] = base[src * inner];
            yi[(o * k + i) * inner + j] = src;
          }
        }
      }
      return Status::Ok();
    }));
    if (ctx.num_outputs() > 1) ctx.output(1) = std::move(indices);
    return Status::Ok();
  }

 private:
  std::optional<int64_t> k_attr_;
  int64_t axis_;
  bool largest_;
};

// Einsum, evaluated directly: one loop over every letter of the equation,
// each operand indexed through per-letter strides (a repeated letter in one
// operand adds its strides, which gives diagonals). Broadcast ellipsis
// dims of size 1 get stride 0.
class EinsumKernel final : public Kernel {
 public:
  static StatusOr<std::unique_ptr<Kernel>> Make(const std::string& equation) {
    std::string eq;
    for (char c : equation) {
      if (c != ' ') eq += c;
    }
    auto arrow = eq.find("->");
    std::string lhs = eq.substr(0, arrow);
    std::vector<std::string> terms;
    size_t start = 0;
    for (;;) {
      size_t comma = lhs.find(',', start);
      terms.push_back(lhs.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    for (const auto& t : terms) {
      for (size_t i = 0; i < t.size(); ++i) {
        if (t[i] == '.') {
          if (t.compare(i, 3, "...") != 0) return NodeError("malformed ellipsis in '" + equation + "'");
          i += 2;
        } else if (!std::isalpha(static_cast<unsigned char>(t[i]))) {
          return NodeError("unexpected '" + std::string(1, t[i]) + "' in equation '" + equation + "'");
        }
      }
    }
    std::optional<std::string> rhs;
    if (arrow != std::string::npos) rhs = eq.substr(arrow + 2);
    return MakeKernel<EinsumKernel>(std::move(terms), std::move(rhs));
  }

  EinsumKernel(std::vector<std::string> terms, std::optional<std::string> rhs)
      : terms_(std::move(terms)), rhs_(std::move(rhs)) {}

  Status Compute(KernelContext& ctx) const override {
    const int n = static_cast<int>(terms_.size());
    if (ctx.num_inputs() != n) return KernelError("equation has " + std::to_string(n) + " operands");
    DataType type = DataType::kUndefined;
    int ellipsis_rank = 0;
    // Letters of each operand, with the ellipsis replaced by markers 0..E-1
    // (aligned right, like broadcasting).
    std::vector<std::vector<int>> letters(static_cast<size_t>(n));
    for (int k = 0; k < n; ++k) {
      const Tensor* t = ctx.input(k);
      if (!t) return KernelError("missing operand");
      if (type == DataType::kUndefined) type = t->dtype();
      if (t->dtype() != type) return KernelError("operands differ in element type");
      int named = 0;
      for (char c : terms_[static_cast<size_t>(k)]) named += c != '.';
      if (terms_[static_cast<size_t>(k)].find("...") != std::string::npos) {
        ellipsis_rank = std::max(ellipsis_rank, t->rank() - named);
      } else if (named != t->rank()) {
        return KernelError("operand " + std::to_string(k) + " has rank " + std::to_string(t->rank()) + ", equation says " +
                           std::to_string(named));
      }
    }
    constexpr int kEllipsisBase = 1000;
    for (int k = 0; k < n; ++k) {
      const std::string& term = terms_[static_cast<size_t>(k)];
      int named = 0;
      for (char c : term) named += c != '.';
      int e = ctx.input(k)->rank() - named;
      if (e < 0) return KernelError("operand rank is below the equation's");
      for (size_t i = 0; i < term.size(); ++i) {
        if (term[i] == '.') {
          for (int j = 0; j < e; ++j) letters[static_cast<size_t>(k)].push_back(kEllipsisBase + ellipsis_rank - e + j);
          i += 2;
        } else {
          letters[static_cast<size_t>(k)].push_back(term[i]);
        }
      }
    }
    // Size of every letter (1 broadcasts).
    std::map<int, int64_t> size;
    std::map<int, int> count;
    for (int k = 0; k < n; ++k) {
      const Tensor* t = ctx.input(k);
      for (size_t d = 0; d < letters[static_cast<size_t>(k)].size(); ++d) {
        int l = letters[static_cast<size_t>(k)][d];
        int64_t v = t->dim(static_cast<int>(d));
        auto it = size.find(l);
        if (it == size.end() || it->second == 1) {
          size[l] = v;
        } else if (v != 1 && v != it->second) {
          return KernelError("dimension sizes disagree for a letter of the equation");
        }
        ++count[l];
      }
    }
    std::vector<int> out_letters;
    if (rhs_) {
      for (size_t i = 0; i < rhs_->size(); ++i) {
        if ((*rhs_)[i] == '.') {
          for (int j = 0; j < ellipsis_rank; ++j) out_letters.push_back(kEllipsisBase + j);
          i += 2;
        } else {
          if (!size.count((*rhs_)[i])) return KernelError("output letter not in the inputs");
          out_letters.push_back((*rhs_)[i]);
        }
      }
    } else {
      for (int j = 0; j < ellipsis_rank; ++j) out_letters.push_back(kEllipsisBase + j);
      for (const auto& [l, c] : count) {
        if (l < kEllipsisBase && c == 1) out_letters.push_back(l);
      }
    }
    std::vector<int> all = out_letters;
    for (const auto& [l, c] : size) {
      if (std::find(all.begin(), all.end(), l) == all.end()) all.push_back(l);
    }
    const size_t L = all.size();
    std::vector<int64_t> dims(L);
    for (size_t i = 0; i < L; ++i) dims[i] = size[all[i]];
    // strides[k][i]: operand k's element stride for letter all[i].
    std::vector<std::vector<int64_t>> strides(static_cast<size_t>(n), std::vector<int64_t>(L, 0));
    for (int k = 0; k < n; ++k) {
      const Tensor* t = ctx.input(k);
      int64_t st = 1;
      for (size_t d = letters[static_cast<size_t>(k)].size(); d-- > 0;) {
        int l = letters[static_cast<size_t>(k)][d];
        size_t i = static_cast<size_t>(std::find(all.begin(), all.end(), l) - all.begin());
        if (t->dim(static_cast<int>(d)) != 1) strides[static_cast<size_t>(k)][i] += st;
        st *= t->dim(static_cast<int>(d));
      }
    }
    Shape out_shape(dims.begin(), dims.begin() + static_cast<long>(out_letters.size()));
    int64_t out_total = NumElements(out_shape);
    int64_t sum_total = 1;
    for (size_t i = out_letters.size(); i < L; ++i) sum_total *= dims[i];
    ctx.output(0) = Tensor(type, out_shape);
    return DispatchNumeric(type, [&](auto tag) -> Status {
      using T = typename decltype(tag)::type;
      using Acc = std::conditional_t<std::is_floating_point_v<T>, double, T>;
      T* y = ctx.output(0).data<T>();
      std::vector<const T*> ptr(static_cast<size_t>(n));
      std::vector<int64_t> pos(L, 0);
      for (int64_t o = 0; o < out_total; ++o) {
        Acc acc = 0;
        std::fill(pos.begin() + static_cast<long>(out_letters.size()), pos.end(), 0);
        for (int64_t s = 0; s < sum_total; ++s) {
          Acc prod = 1;
          for (int k = 0; k < n; ++k) {
            int64_t off = 0;
            for (size_t i = 0; i < L; ++i) off += pos[i] * strides[static_cast<size_t>(k)][i];
            prod = static_cast<Acc>(prod * static_cast<Acc>(ctx.input(k)->data<T>()[off]));
          }
          acc = static_cast<Acc>(acc + prod);
          for (size_t i = L; i-- > out_letters.size();) {
            if (++pos[i] < dims[i]) break;
            pos[i] = 0;
          }
        }
        y[o] = static_cast<T>(acc);
        for (size_t i = out_letters.size(); i-- > 0;) {
          if (++pos[i] < dims[i]) break;
          pos[i] = 0;
        }
      }
      return Status::Ok();
    });
  }

 private:
  std::vector<std::string> terms_;
  std::optional<std::string> rhs_;
};

void RegisterAll(KernelRegistry& registry) {
  struct Op {
    const char* name;
    Reduce reduce;
    int input_axes_since;
  };
  for (Op op : {Op{"ReduceSum", Reduce::kSum, 13}, Op{"ReduceMean", Reduce::kMean, 18},
                Op{"ReduceMax", Reduce::kMax, 18}, Op{"ReduceMin", Reduce::kMin, 18},
                Op{"ReduceProd", Reduce::kProd, 18}, Op{"ReduceL1", Reduce::kL1, 18}, Op{"ReduceL2", Reduce::kL2, 18},
                Op{"ReduceLogSum", Reduce::kLogSum, 18}, Op{"ReduceLogSumExp", Reduce::kLogSumExp, 18},
                Op{"ReduceSumSquare", Reduce::kSumSquare, 18}}) {
    Reduce reduce = op.reduce;
    registry.Register("", op.name, 1, op.input_axes_since - 1, [reduce](const KernelInit& init) {
      return MakeKernel<ReduceKernel>(reduce, init.attributes.Ints("axes"), false,
                                      init.attributes.Int("keepdims", 1) != 0, false);
    });
    registry.Register("", op.name, op.input_axes_since, kLatestOpset, [reduce](const KernelInit& init) {
      return MakeKernel<ReduceKernel>(reduce, std::vector<int64_t>{}, true, init.attributes.Int("keepdims", 1) != 0,
                                      init.attributes.Int("noop_with_empty_axes", 0) != 0);
    });
  }
  registry.Register("", "Einsum", 12, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    return EinsumKernel::Make(init.attributes.String("equation", ""));
  });
  registry.Register("", "TopK", 1, 9, [](const KernelInit& init) {
    return MakeKernel<TopKKernel>(init.attributes.Int("k", 0), init.attributes.Int("axis", -1), true);
  });
  registry.Register("", "TopK", 10, kLatestOpset, [](const KernelInit& init) {
    return MakeKernel<TopKKernel>(std::nullopt, init.attributes.Int("axis", -1), init.attributes.Int("largest", 1) != 0);
  });
  for (bool is_max : {true, false}) {
    registry.Register("", is_max ? "ArgMax" : "ArgMin", 1, kLatestOpset, [is_max](const KernelInit& init) {
      return MakeKernel<ArgKernel>(is_max, init.attributes.Int("axis", 0), init.attributes.Int("keepdims", 1) != 0,
                                   init.attributes.Int("select_last_index", 0) != 0);
    });
  }
}

}  // namespace

}  // namespace quantd::runtime::kernels

namespace quantd::runtime {
void RegisterReductionKernels(KernelRegistry& registry) { kernels::RegisterAll(registry); }
}  // namespace quantd::runtime
