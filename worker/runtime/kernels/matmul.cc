// Gemm and MatMul.
//
// A constant right-hand side (the usual case: layer weights) is re-laid out
// once into the blocked format oneDNN's matmul primitive prefers, and the
// primitive is cached per row count. Products too small to amortise a
// primitive call, and right-hand sides computed at run time, go to
// dnnl_sgemm, which reads plain (optionally transposed) matrices directly.
// Batched MatMul with matching or fully broadcast batch dimensions runs as one
// batched primitive; other broadcast patterns loop over SGEMM calls.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include <onnx/onnx_pb.h>

#include "worker/runtime/kernel.h"
#include "worker/runtime/kernels/cpu_features.h"

namespace quantd::runtime {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;

dnnl::engine& CpuEngine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

dnnl::stream& ThreadStream() {
  thread_local dnnl::stream stream(CpuEngine());
  return stream;
}

// oneDNN parallelises with OpenMP, whose team size is per calling thread.
void SetOmpThreads(int n) {
  if (omp_get_max_threads() != n) omp_set_num_threads(n);
}

// Grow-only per-thread buffer for oneDNN scratchpads and bias staging.
float* Scratch(int slot, size_t floats) {
  struct Buffer {
    float* data = nullptr;
    size_t capacity = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local std::array<Buffer, 2> buffers;
  Buffer& buffer = buffers[static_cast<size_t>(slot)];
  if (buffer.capacity < floats) {
    std::free(buffer.data);
    const size_t bytes = (std::max<size_t>(floats, 16) * sizeof(float) + 63) / 64 * 64;
    buffer.data = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (buffer.data == nullptr) throw std::bad_alloc();
    buffer.capacity = bytes / sizeof(float);
  }
  return buffer.data;
}

// Below this many multiply-adds a primitive call costs more than SGEMM.
constexpr int64_t kPrimitiveMinWork = 32 * 1024;

// Waking pool workers (or an OpenMP team) costs microseconds, more on a busy
// machine: only products worth about 20 us on one core are split.
constexpr int64_t kParallelMinWork = int64_t{1} << 22;

int UsefulThreads(int threads, int64_t work) { return work >= kParallelMinWork ? threads : 1; }

// Shapes that do not fit the op (the executor adds the node's name).
Status Invalid(const onnx::NodeProto&, const std::string& message) { return KernelError(message); }

Status NotFloat(const onnx::NodeProto&) {
  return Status(StatusCode::kUnimplemented, "RUNTIME_UNSUPPORTED_TYPE", "only float32 inputs are supported");
}

// ---------------------------------------------------------------------------
// Small products (a few rows: batch-1 layers, attention heads) lose more to
// a primitive call or SGEMM's packing than they spend computing, so they run
// on a register-tiled kernel that reads A and B where they are: 8 rows of C
// x up to 3 vectors of columns, B rows loaded as vectors, A elements
// broadcast.
// ---------------------------------------------------------------------------


// C[M, N] = A[M, K] x B[K, N] (+ bias[N]) (+ C when accumulating); all
// row-major with leading dimensions. `tail` has room for K x 16 floats.
struct SmallGemmArgs {
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  int64_t m, n, k;
  const float* bias;
  bool accumulate;
  float* tail;
};

constexpr int64_t kSmallGemmMaxRows = 64;

template <int VL, int MR, int NV, bool kPartial>
__attribute__((always_inline)) inline void SmallGemmTile(const SmallGemmArgs& g, int64_t i0, int64_t rows,
                                                         const float* b, int64_t ldb, int64_t col0,
                                                         int64_t valid_cols) {
  typedef float Vec __attribute__((vector_size(VL * sizeof(float))));
  const float* arow[MR];
  for (int r = 0; r < MR; ++r) arow[r] = g.a + (i0 + std::min<int64_t>(r, rows - 1)) * g.lda;
  Vec acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < NV; ++j) acc[r][j] = Vec{};
  }
  for (int64_t kk = 0; kk < g.k; ++kk, b += ldb) {
    Vec bv[NV];
    for (int j = 0; j < NV; ++j) std::memcpy(&bv[j], b + j * VL, sizeof(Vec));
    for (int r = 0; r < MR; ++r) {
      const float av = arow[r][kk];
      for (int j = 0; j < NV; ++j) acc[r][j] += bv[j] * av;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* out = g.c + (i0 + r) * g.ldc + col0;
    if constexpr (!kPartial) {
      for (int j = 0; j < NV; ++j) {
        Vec v = acc[r][j];
        if (g.bias != nullptr) {
          Vec bias;
          std::memcpy(&bias, g.bias + col0 + j * VL, sizeof(Vec));
          v += bias;
        }
        if (g.accumulate) {
          Vec old;
          std::memcpy(&old, out + j * VL, sizeof(Vec));
          v += old;
        }
        std::memcpy(out + j * VL, &v, sizeof(Vec));
      }
    } else {
      float lanes[NV * VL];
      std::memcpy(lanes, acc[r], sizeof(lanes));
      for (int64_t i = 0; i < valid_cols; ++i) {
        float v = lanes[i];
        if (g.bias != nullptr) v += g.bias[col0 + i];
        if (g.accumulate) v += out[i];
        out[i] = v;
      }
    }
  }
}

template <int VL, int MR, int NV>
__attribute__((always_inline)) inline void SmallGemmRows(const SmallGemmArgs& g, int64_t i0, int64_t rows) {
  const int64_t full = g.n / VL;
  int64_t v = 0;
  for (; v + NV <= full; v += NV) SmallGemmTile<VL, MR, NV, false>(g, i0, rows, g.b + v * VL, g.ldb, v * VL, 0);
  for (; v < full; ++v) SmallGemmTile<VL, MR, 1, false>(g, i0, rows, g.b + v * VL, g.ldb, v * VL, 0);
  if (g.n % VL != 0) SmallGemmTile<VL, MR, 1, true>(g, i0, rows, g.tail, VL, full * VL, g.n % VL);
}

template <int VL>
__attribute__((always_inline)) inline void SmallGemmImpl(const SmallGemmArgs& g) {
  const int64_t full = g.n / VL, rem = g.n % VL;
  if (rem != 0) {
    // The last partial column vector of B, zero-padded, so no load runs past B.
    for (int64_t kk = 0; kk < g.k; ++kk) {
      for (int64_t i = 0; i < VL; ++i) g.tail[kk * VL + i] = i < rem ? g.b[kk * g.ldb + full * VL + i] : 0.0f;
    }
  }
  int64_t i0 = 0;
  // 8 x 3 vectors of accumulators fit AVX-512's 32 registers; AVX2 has 16.
  for (; i0 + 8 <= g.m; i0 += 8) SmallGemmRows<VL, 8, VL == 16 ? 3 : 1>(g, i0, 8);
  for (; i0 < g.m; ++i0) SmallGemmRows<VL, 1, 4>(g, i0, 1);
}

__attribute__((target("avx512f"))) void SmallGemm16(const SmallGemmArgs& g) { SmallGemmImpl<16>(g); }
__attribute__((target("avx2,fma"))) void SmallGemm8(const SmallGemmArgs& g) { SmallGemmImpl<8>(g); }

// Runs the small kernel when this CPU has one; false: use another path.
bool SmallGemm(SmallGemmArgs g) {
  const int width = VectorWidth();
  if (width < 8 || g.m > kSmallGemmMaxRows) return false;
  g.tail = Scratch(1, static_cast<size_t>(g.k * 16));
  if (width == 16) SmallGemm16(g);
  else SmallGemm8(g);
  return true;
}

// ---------------------------------------------------------------------------
// Constant right-hand side: [K, N] (or [N, K] transposed) packed per
// primitive. Y[M, N] = A[M, K] x B (+ bias[N]) (+ existing Y when `sum`).
// ---------------------------------------------------------------------------

class PackedWeights {
 public:
  // `b` is K x N, or N x K when `trans_b`; `scale` is folded into the values.
  PackedWeights(const float* b, int64_t k, int64_t n, bool trans_b, float scale) : k_(k), n_(n) {
    plain_.resize(static_cast<size_t>(k * n));
    for (int64_t r = 0; r < k; ++r) {
      for (int64_t c = 0; c < n; ++c) plain_[static_cast<size_t>(r * n + c)] = scale * b[trans_b ? c * k + r : r * n + c];
    }
  }

  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  const float* plain() const { return plain_.data(); }

  // Weights in `desc`, laid out on first use and then shared by every
  // primitive that asks for the same layout.
  const float* For(const memory::desc& desc) const {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [d, data] : packed_) {
      if (d == desc) return data->data();
    }
    auto data = std::make_shared<std::vector<float>>(desc.get_size() / sizeof(float) + 1);
    memory from(memory::desc({k_, n_}, memory::data_type::f32, Tag::ab), CpuEngine(),
                const_cast<float*>(plain_.data()));
    memory to(desc, CpuEngine(), data->data());
    SetOmpThreads(1);
    dnnl::reorder(from, to).execute(ThreadStream(), from, to);
    ThreadStream().wait();
    packed_.emplace_back(desc, data);
    return data->data();
  }

 private:
  int64_t k_, n_;
  std::vector<float> plain_;
  mutable std::mutex mutex_;
  mutable std::vector<std::pair<memory::desc, std::shared_ptr<std::vector<float>>>> packed_;
};

class PackedMatMul {
 public:
  // Returns null when oneDNN has no implementation for the shapes.
  // oneDNN fixes a primitive's thread count when it is created: `threads`
  // must be the OpenMP setting it will run under.
  static std::shared_ptr<PackedMatMul> Create(const PackedWeights& weights, int64_t m, bool trans_a, bool bias,
                                              bool sum, int threads) {
    auto plan = std::make_shared<PackedMatMul>();
    try {
      SetOmpThreads(threads);
      const auto f32 = memory::data_type::f32;
      const int64_t k = weights.k(), n = weights.n();
      const memory::desc src = trans_a ? memory::desc({m, k}, f32, memory::dims{1, m})
                                       : memory::desc({m, k}, f32, Tag::ab);
      const memory::desc wei({k, n}, f32, Tag::any);
      const memory::desc dst({m, n}, f32, Tag::ab);
      const memory::desc bias_desc = bias ? memory::desc({1, n}, f32, Tag::ab) : memory::desc();
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      if (sum) {
        dnnl::post_ops ops;
        ops.append_sum(1.0f);
        attr.set_post_ops(ops);
      }
      plan->pd_ = dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, wei, bias_desc, dst), attr, CpuEngine());
      if (std::string(plan->pd_.impl_info_str()).find("ref") != std::string::npos) return nullptr;
      plan->primitive_ = dnnl::matmul(plan->pd_);
      plan->weights_ = weights.For(plan->pd_.weights_desc());
    } catch (const dnnl::error&) {
      return nullptr;
    }
    return plan;
  }

  void Run(const float* a, const float* bias, float* y, int threads) const {
    const dnnl::engine& eng = CpuEngine();
    SetOmpThreads(threads);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, memory(pd_.src_desc(), eng, const_cast<float*>(a))},
        {DNNL_ARG_WEIGHTS, memory(pd_.weights_desc(), eng, const_cast<float*>(weights_))},
        {DNNL_ARG_DST, memory(pd_.dst_desc(), eng, y)},
        {DNNL_ARG_SCRATCHPAD,
         memory(pd_.scratchpad_desc(), eng, Scratch(0, pd_.scratchpad_desc().get_size() / sizeof(float) + 1))}};
    if (bias != nullptr) args.emplace(DNNL_ARG_BIAS, memory(pd_.bias_desc(), eng, const_cast<float*>(bias)));
    primitive_.execute(ThreadStream(), args);
    ThreadStream().wait();
  }

 private:
  dnnl::matmul::primitive_desc pd_;
  dnnl::matmul primitive_;
  const float* weights_ = nullptr;
};

// Per-shape cache of packed-weight primitives; nullptr entries remember
// shapes oneDNN refused.
class PackedCache {
 public:
  std::shared_ptr<PackedMatMul> Get(const PackedWeights& weights, int64_t m, bool trans_a, bool bias, bool sum,
                                    int threads) const {
    const std::array<int64_t, 5> key = {m, trans_a, bias, sum, threads};
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    auto plan = PackedMatMul::Create(weights, m, trans_a, bias, sum, threads);
    plans_.emplace(key, plan);
    return plan;
  }

 private:
  mutable std::mutex mutex_;
  mutable std::map<std::array<int64_t, 5>, std::shared_ptr<PackedMatMul>> plans_;
};

const Tensor* ConstantInput(const KernelInit& init, int index) {
  auto it = init.constant_inputs.find(index);
  if (it == init.constant_inputs.end() || it->second == nullptr || it->second->dtype() != DataType::kFloat) {
    return nullptr;
  }
  return it->second;
}

// ---------------------------------------------------------------------------
// Gemm
// ---------------------------------------------------------------------------

class GemmKernel final : public Kernel {
 public:
  explicit GemmKernel(const KernelInit& init)
      : node_(init.node),
        trans_a_(init.attributes.Int("transA", 0) != 0),
        trans_b_(init.attributes.Int("transB", 0) != 0),
        alpha_(init.attributes.Float("alpha", 1.0f)),
        beta_(init.attributes.Float("beta", 1.0f)) {
    const Tensor* b = ConstantInput(init, 1);
    if (b != nullptr && b->rank() == 2) {
      const int64_t k = trans_b_ ? b->dim(1) : b->dim(0), n = trans_b_ ? b->dim(0) : b->dim(1);
      weights_ = std::make_unique<PackedWeights>(b->data<float>(), k, n, trans_b_, alpha_);
      b_tensor_ = *b;
    }
    const Tensor* c = ConstantInput(init, 2);
    if (c != nullptr && weights_ != nullptr && beta_ != 0.0f && c->size() == weights_->n() &&
        (c->rank() == 1 || (c->rank() == 2 && c->dim(0) == 1))) {
      // A per-column C is the layer bias: fold beta in and pass it as bias.
      bias_.resize(static_cast<size_t>(c->size()));
      for (int64_t i = 0; i < c->size(); ++i) bias_[static_cast<size_t>(i)] = beta_ * c->data<float>()[i];
      c_tensor_ = *c;
    }
  }

  Status Compute(KernelContext& ctx) const override {
    const Tensor* a = ctx.input(0);
    const Tensor* b = ctx.input(1);
    const Tensor* c = ctx.input(2);
    if (a == nullptr || b == nullptr) return Invalid(node_, "A and B are required");
    if (a->dtype() != DataType::kFloat || b->dtype() != DataType::kFloat ||
        (c != nullptr && c->dtype() != DataType::kFloat)) {
      return NotFloat(node_);
    }
    if (a->rank() != 2 || b->rank() != 2) {
      return Invalid(node_, "A " + ShapeToString(a->shape()) + " and B " + ShapeToString(b->shape()) +
                                " must be 2-D");
    }
    const int64_t m = trans_a_ ? a->dim(1) : a->dim(0), k = trans_a_ ? a->dim(0) : a->dim(1);
    const int64_t kb = trans_b_ ? b->dim(1) : b->dim(0), n = trans_b_ ? b->dim(0) : b->dim(1);
    if (k != kb) {
      return Invalid(node_, "A " + ShapeToString(a->shape()) + " and B " + ShapeToString(b->shape()) +
                                " have different inner dimensions");
    }
    int64_t c_rows = 1, c_cols = 1;
    if (c != nullptr) {
      if (c->rank() > 2) return Invalid(node_, "C must have rank <= 2");
      c_rows = c->rank() == 2 ? c->dim(0) : 1;
      c_cols = c->rank() >= 1 ? c->dim(c->rank() - 1) : 1;
      if ((c_rows != 1 && c_rows != m) || (c_cols != 1 && c_cols != n)) {
        return Invalid(node_, "C " + ShapeToString(c->shape()) + " cannot broadcast to [" + std::to_string(m) +
                                  ", " + std::to_string(n) + "]");
      }
    }
    Tensor& y = ctx.output(0);
    y = Tensor(DataType::kFloat, {m, n});
    if (y.size() == 0) return Status::Ok();
    float* yd = y.data<float>();
    const int threads = UsefulThreads(ctx.threads().num_threads(), m * n * k);
    const bool use_c = c != nullptr && beta_ != 0.0f;
    const bool bias_folded = use_c && !bias_.empty() && c->SharesBufferWith(c_tensor_) && c->raw() == c_tensor_.raw();
    if (use_c && !bias_folded) {
      // Y starts as beta * C broadcast; the product is accumulated onto it.
      const float* cd = c->data<float>();
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          yd[i * n + j] = beta_ * cd[(c_rows == 1 ? 0 : i) * c_cols + (c_cols == 1 ? 0 : j)];
        }
      }
    }
    const bool accumulate = use_c && !bias_folded;
    if (k == 0) {
      if (!accumulate) {
        std::fill(yd, yd + m * n, 0.0f);
        if (bias_folded) {
          for (int64_t i = 0; i < m; ++i) std::copy(bias_.begin(), bias_.end(), yd + i * n);
        }
      }
      return Status::Ok();
    }
    const bool constant_b = weights_ != nullptr && b->SharesBufferWith(b_tensor_) && b->raw() == b_tensor_.raw();
    if (threads == 1 && !trans_a_ && (constant_b || (!trans_b_ && alpha_ == 1.0f))) {
      // B as K x N row-major: the packed copy (alpha folded in) or B itself.
      const SmallGemmArgs g{a->data<float>(), k, constant_b ? weights_->plain() : b->data<float>(), n, yd, n, m, n, k,
                            bias_folded ? bias_.data() : nullptr, accumulate, nullptr};
      if (SmallGemm(g)) return Status::Ok();
    }
    if (constant_b && m * n * k >= kPrimitiveMinWork) {
      if (auto plan = cache_.Get(*weights_, m, trans_a_, bias_folded, accumulate, threads)) {
        plan->Run(a->data<float>(), bias_folded ? bias_.data() : nullptr, yd, threads);
        return Status::Ok();
      }
    }
    SetOmpThreads(threads);
    if (bias_folded) {
      for (int64_t i = 0; i < m; ++i) std::copy(bias_.begin(), bias_.end(), yd + i * n);
    }
    dnnl_sgemm(trans_a_ ? 'T' : 'N', trans_b_ ? 'T' : 'N', m, n, k, alpha_, a->data<float>(), trans_a_ ? m : k,
               b->data<float>(), trans_b_ ? k : n, accumulate || bias_folded ? 1.0f : 0.0f, yd, n);
    return Status::Ok();
  }

 private:
  const onnx::NodeProto node_;  // a copy: the graph may not outlive the kernel
  bool trans_a_, trans_b_;
  float alpha_, beta_;
  std::unique_ptr<PackedWeights> weights_;
  Tensor b_tensor_, c_tensor_;
  std::vector<float> bias_;
  PackedCache cache_;
};

// ---------------------------------------------------------------------------
// MatMul
// ---------------------------------------------------------------------------

// Batched product of plain row-major matrices: dst[b] = src[b or 0] x wei[b or 0].
class BatchedMatMul {
 public:
  static std::shared_ptr<BatchedMatMul> Create(int64_t batch_a, int64_t batch_b, int64_t m, int64_t k, int64_t n,
                                               int threads) {
    auto plan = std::make_shared<BatchedMatMul>();
    try {
      SetOmpThreads(threads);
      const auto f32 = memory::data_type::f32;
      const int64_t batch = std::max(batch_a, batch_b);
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      plan->pd_ = dnnl::matmul::primitive_desc(
          dnnl::matmul::desc(memory::desc({batch_a, m, k}, f32, Tag::abc), memory::desc({batch_b, k, n}, f32, Tag::abc),
                             memory::desc({batch, m, n}, f32, Tag::abc)),
          attr, CpuEngine());
      if (std::string(plan->pd_.impl_info_str()).find("ref") != std::string::npos) return nullptr;
      plan->primitive_ = dnnl::matmul(plan->pd_);
    } catch (const dnnl::error&) {
      return nullptr;
    }
    return plan;
  }

  void Run(const float* a, const float* b, float* y, int threads) const {
    const dnnl::engine& eng = CpuEngine();
    SetOmpThreads(threads);
    primitive_.execute(
        ThreadStream(),
        {{DNNL_ARG_SRC, memory(pd_.src_desc(), eng, const_cast<float*>(a))},
         {DNNL_ARG_WEIGHTS, memory(pd_.weights_desc(), eng, const_cast<float*>(b))},
         {DNNL_ARG_DST, memory(pd_.dst_desc(), eng, y)},
         {DNNL_ARG_SCRATCHPAD,
          memory(pd_.scratchpad_desc(), eng, Scratch(1, pd_.scratchpad_desc().get_size() / sizeof(float) + 1))}});
    ThreadStream().wait();
  }

 private:
  dnnl::matmul::primitive_desc pd_;
  dnnl::matmul primitive_;
};

// Per output matrix t of the broadcast batch: offsets of its A and B
// matrices, interleaved [a0, b0, a1, b1, ...].
std::vector<int64_t> BatchOffsets(const Shape& batch, const Shape& a_batch, const Shape& b_batch, int64_t m,
                                  int64_t n, int64_t k) {
  const int64_t count = NumElements(batch);
  std::vector<int64_t> offsets(static_cast<size_t>(2 * count));
  for (int64_t t = 0; t < count; ++t) {
    int64_t rest = t, ai = 0, bi = 0, a_stride = 1, b_stride = 1;
    for (size_t i = batch.size(); i-- > 0;) {
      const int64_t idx = rest % batch[i];
      rest /= batch[i];
      if (a_batch[i] != 1) ai += idx * a_stride;
      if (b_batch[i] != 1) bi += idx * b_stride;
      a_stride *= a_batch[i];
      b_stride *= b_batch[i];
    }
    offsets[static_cast<size_t>(2 * t)] = ai * m * k;
    offsets[static_cast<size_t>(2 * t + 1)] = bi * k * n;
  }
  return offsets;
}

class MatMulKernel final : public Kernel {
 public:
  explicit MatMulKernel(const KernelInit& init) : node_(init.node) {
    const Tensor* b = ConstantInput(init, 1);
    if (b != nullptr && b->rank() == 2) {
      weights_ = std::make_unique<PackedWeights>(b->data<float>(), b->dim(0), b->dim(1), false, 1.0f);
      b_tensor_ = *b;
    }
  }

  Status Compute(KernelContext& ctx) const override {
    const Tensor* a = ctx.input(0);
    const Tensor* b = ctx.input(1);
    if (a == nullptr || b == nullptr) return Invalid(node_, "A and B are required");
    if (a->dtype() != DataType::kFloat || b->dtype() != DataType::kFloat) return NotFloat(node_);
    if (a->rank() < 1 || b->rank() < 1) return Invalid(node_, "inputs must have rank >= 1");
    Shape as = a->shape(), bs = b->shape();
    const bool a_vector = as.size() == 1, b_vector = bs.size() == 1;
    if (a_vector) as.insert(as.begin(), 1);
    if (b_vector) bs.push_back(1);
    const int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
    if (bs[bs.size() - 2] != k) {
      return Invalid(node_, "A " + ShapeToString(a->shape()) + " and B " + ShapeToString(b->shape()) +
                                " have different inner dimensions");
    }
    const size_t batch_rank = std::max(as.size(), bs.size()) - 2;
    Shape a_batch(batch_rank, 1), b_batch(batch_rank, 1), batch(batch_rank);
    std::copy(as.begin(), as.end() - 2, a_batch.end() - static_cast<std::ptrdiff_t>(as.size() - 2));
    std::copy(bs.begin(), bs.end() - 2, b_batch.end() - static_cast<std::ptrdiff_t>(bs.size() - 2));
    for (size_t i = 0; i < batch_rank; ++i) {
      if (a_batch[i] != b_batch[i] && a_batch[i] != 1 && b_batch[i] != 1) {
        return Invalid(node_, "A " + ShapeToString(a->shape()) + " and B " + ShapeToString(b->shape()) +
                                  " have batch dimensions that do not broadcast");
      }
      batch[i] = std::max(a_batch[i], b_batch[i]);
    }
    Shape out = batch;
    if (!a_vector) out.push_back(m);
    if (!b_vector) out.push_back(n);
    Tensor& y = ctx.output(0);
    y = Tensor(DataType::kFloat, out);
    if (y.size() == 0) return Status::Ok();
    float* yd = y.data<float>();
    if (k == 0) {
      std::fill(yd, yd + y.size(), 0.0f);
      return Status::Ok();
    }
    const int64_t a_count = NumElements(a_batch), b_count = NumElements(b_batch), count = NumElements(batch);
    const int threads = UsefulThreads(ctx.threads().num_threads(), count * m * n * k);
    const float* ad = a->data<float>();
    const float* bd = b->data<float>();

    if (b_count == 1) {
      // Every batch of A against the same B: one [count * M, K] x [K, N].
      const int64_t rows = count * m;
      if (threads == 1 && SmallGemm({ad, k, bd, n, yd, n, rows, n, k, nullptr, false, nullptr})) return Status::Ok();
      const bool constant_b = weights_ != nullptr && b->SharesBufferWith(b_tensor_) && b->raw() == b_tensor_.raw();
      if (constant_b && rows * n * k >= kPrimitiveMinWork) {
        if (auto plan = cache_.Get(*weights_, rows, false, false, false, threads)) {
          plan->Run(ad, nullptr, yd, threads);
          return Status::Ok();
        }
      }
      SetOmpThreads(threads);
      dnnl_sgemm('N', 'N', rows, n, k, 1.0f, ad, k, bd, n, 0.0f, yd, n);
      return Status::Ok();
    }
    if (m <= kSmallGemmMaxRows && VectorWidth() >= 8 && threads == 1) {
      // Many small matrices (attention): the small kernel per matrix.
      const std::vector<int64_t> offsets = BatchOffsets(batch, a_batch, b_batch, m, n, k);
      for (int64_t t = 0; t < count; ++t) {
        SmallGemm({ad + offsets[static_cast<size_t>(2 * t)], k, bd + offsets[static_cast<size_t>(2 * t + 1)], n,
                   yd + t * m * n, n, m, n, k, nullptr, false, nullptr});
      }
      return Status::Ok();
    }
    if (a_count == count && (b_count == count || b_count == 1)) {
      if (auto plan = Batched(a_count, b_count, m, k, n, threads)) {
        plan->Run(ad, bd, yd, threads);
        return Status::Ok();
      }
    }
    if (a_count == 1 && b_count == count) {
      if (auto plan = Batched(1, b_count, m, k, n, threads)) {
        plan->Run(ad, bd, yd, threads);
        return Status::Ok();
      }
    }
    // General broadcasting: one SGEMM per output matrix.
    std::vector<int64_t> offsets = BatchOffsets(batch, a_batch, b_batch, m, n, k);
    ThreadPool& pool = ctx.threads();
    auto one = [&](int64_t t) {
      dnnl_sgemm('N', 'N', m, n, k, 1.0f, ad + offsets[static_cast<size_t>(2 * t)], k,
                 bd + offsets[static_cast<size_t>(2 * t + 1)], n, 0.0f, yd + t * m * n, n);
    };
    if (threads > 1 && count >= threads) {
      pool.ParallelFor(count, 1, [&](int64_t begin, int64_t end) {
        SetOmpThreads(1);
        for (int64_t t = begin; t < end; ++t) one(t);
      });
    } else {
      SetOmpThreads(threads);
      for (int64_t t = 0; t < count; ++t) one(t);
    }
    return Status::Ok();
  }

 private:
  std::shared_ptr<BatchedMatMul> Batched(int64_t batch_a, int64_t batch_b, int64_t m, int64_t k, int64_t n,
                                         int threads) const {
    const std::array<int64_t, 6> key = {batch_a, batch_b, m, k, n, threads};
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = batched_.find(key);
    if (it != batched_.end()) return it->second;
    auto plan = BatchedMatMul::Create(batch_a, batch_b, m, k, n, threads);
    batched_.emplace(key, plan);
    return plan;
  }

  const onnx::NodeProto node_;  // a copy: the graph may not outlive the kernel
  std::unique_ptr<PackedWeights> weights_;
  Tensor b_tensor_;
  PackedCache cache_;
  mutable std::mutex mutex_;
  mutable std::map<std::array<int64_t, 6>, std::shared_ptr<BatchedMatMul>> batched_;
};

}  // namespace

void RegisterMatMulKernels(KernelRegistry& registry) {
  registry.Register("", "Gemm", 7, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    return std::unique_ptr<Kernel>(new GemmKernel(init));
  });
  registry.Register("", "MatMul", 1, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    return std::unique_ptr<Kernel>(new MatMulKernel(init));
  });
}

}  // namespace quantd::runtime
