// Conv, ConvTranspose and com.microsoft FusedConv (Conv followed by an
// activation: the form graph optimisers fuse Conv+Relu/Clip into).
//
// The executor's tensors are NCHW. Fast convolution code wants channels
// interleaved in vectors (oneDNN's nChw16c), which costs a layout conversion
// of the input and the output on every call, so each shape gets the cheapest
// of (chosen once per input shape, cached with its packed weights):
//  - pointwise (1x1) layers: a register-tiled GEMM straight on the NCHW
//    planes, Y[M, HW] = W[M, K] x X[K, HW];
//  - few input channels (first layers): a direct kernel on NCHW rows;
//  - depthwise layers: a stencil straight on wide NCHW rows, or on groups of
//    16 channels converted to interleaved form in L1;
//  - everything else, and the small 7x7 planes where vectors along the width
//    waste lanes: oneDNN's blocked convolution, converting a few images at a
//    time while they are hot in cache with vectorised transposes;
//  - shapes oneDNN refuses: im2col + SGEMM, which handles any geometry.
// ConvTranspose uses GEMM + col2im.
//
// Threads: plans split images (or channel blocks) over the executor's pool
// and keep oneDNN single-threaded inside, or, for a single large image, let
// oneDNN's OpenMP team use the same thread count; small layers stay on the
// calling thread.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include <onnx/onnx_pb.h>

#include "worker/runtime/kernels/cpu_features.h"
#include "worker/runtime/kernel.h"

namespace quantd::runtime {
namespace {

// ---------------------------------------------------------------------------
// Shared plumbing
// ---------------------------------------------------------------------------

dnnl::engine& CpuEngine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

// Streams are cheap but not meant to be shared between threads.
dnnl::stream& ThreadStream() {
  thread_local dnnl::stream stream(CpuEngine());
  return stream;
}

// oneDNN and SGEMM parallelise with OpenMP, whose team size is a per-thread
// setting: match it to the executor's thread count before every call.
void SetOmpThreads(int n) {
  if (omp_get_max_threads() != n) omp_set_num_threads(n);
}

// Per-thread, grow-only scratch buffers (64-byte aligned), shared by all
// conv kernels on that thread so the working memory is the largest single
// need, not the sum over layers.
enum ScratchSlot { kSlotSrc, kSlotDst, kSlotDnnl, kSlotWeights, kSlotCol, kNumSlots };

float* Scratch(ScratchSlot slot, size_t floats) {
  struct Buffer {
    float* data = nullptr;
    size_t capacity = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local std::array<Buffer, kNumSlots> buffers;
  Buffer& buffer = buffers[slot];
  if (buffer.capacity < floats) {
    std::free(buffer.data);
    const size_t bytes = (std::max<size_t>(floats, 16) * sizeof(float) + 63) / 64 * 64;
    buffer.data = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (buffer.data == nullptr) throw std::bad_alloc();
    buffer.capacity = bytes / sizeof(float);
  }
  return buffer.data;
}

// Shapes that do not fit the op (the executor adds the node's name).
Status Invalid(const onnx::NodeProto&, const std::string& message) { return KernelError(message); }

Status UnsupportedType(const std::string& message) {
  return Status(StatusCode::kUnimplemented, "RUNTIME_UNSUPPORTED_TYPE", message);
}

// Waking pool workers costs microseconds (more on a busy machine), so a
// kernel only splits work worth about 20 us or more on one core; `work`
// counts multiply-adds.
constexpr int64_t kParallelMinWork = int64_t{1} << 22;

int UsefulThreads(int threads, int64_t work) { return work >= kParallelMinWork ? threads : 1; }

// Runs fn(i) for i in [0, n): on the pool when it has threads and there is
// enough work, otherwise inline. Returns whether it went to the pool.
template <typename Fn>
bool MaybeParallel(ThreadPool& pool, int64_t n, int64_t work, Fn&& fn) {
  if (UsefulThreads(pool.num_threads(), work) > 1 && n >= pool.num_threads()) {
    pool.ParallelFor(n, 1, [&](int64_t begin, int64_t end) {
      SetOmpThreads(1);
      for (int64_t i = begin; i < end; ++i) fn(i);
    });
    return true;
  }
  SetOmpThreads(UsefulThreads(pool.num_threads(), work));
  for (int64_t i = 0; i < n; ++i) fn(i);
  return false;
}

// ---------------------------------------------------------------------------
// Activations fused into FusedConv
// ---------------------------------------------------------------------------

struct Activation {
  enum Kind { kNone, kRelu, kLeakyRelu, kClip, kSigmoid, kTanh, kHardSigmoid } kind = kNone;
  float alpha = 0.0f;
  float beta = 0.0f;

  void AppendTo(dnnl::post_ops& ops) const {
    using dnnl::algorithm;
    switch (kind) {
      case kNone: break;
      case kRelu: ops.append_eltwise(1.0f, algorithm::eltwise_relu, 0.0f, 0.0f); break;
      case kLeakyRelu: ops.append_eltwise(1.0f, algorithm::eltwise_relu, alpha, 0.0f); break;
      case kClip: ops.append_eltwise(1.0f, algorithm::eltwise_clip, alpha, beta); break;
      case kSigmoid: ops.append_eltwise(1.0f, algorithm::eltwise_logistic, 0.0f, 0.0f); break;
      case kTanh: ops.append_eltwise(1.0f, algorithm::eltwise_tanh, 0.0f, 0.0f); break;
      case kHardSigmoid:
        ops.append_eltwise(1.0f, algorithm::eltwise_linear, alpha, beta);
        ops.append_eltwise(1.0f, algorithm::eltwise_clip, 0.0f, 1.0f);
        break;
    }
  }

  void Apply(float* data, int64_t n) const {
    switch (kind) {
      case kNone: return;
      case kRelu:
        for (int64_t i = 0; i < n; ++i) data[i] = std::max(data[i], 0.0f);
        return;
      case kLeakyRelu:
        for (int64_t i = 0; i < n; ++i) data[i] = data[i] >= 0.0f ? data[i] : data[i] * alpha;
        return;
      case kClip:
        for (int64_t i = 0; i < n; ++i) data[i] = std::min(std::max(data[i], alpha), beta);
        return;
      case kSigmoid:
        for (int64_t i = 0; i < n; ++i) data[i] = 1.0f / (1.0f + std::exp(-data[i]));
        return;
      case kTanh:
        for (int64_t i = 0; i < n; ++i) data[i] = std::tanh(data[i]);
        return;
      case kHardSigmoid:
        for (int64_t i = 0; i < n; ++i) data[i] = std::min(std::max(alpha * data[i] + beta, 0.0f), 1.0f);
        return;
    }
  }
};

StatusOr<Activation> ParseActivation(const KernelInit& init) {
  Activation act;
  const std::string name = init.attributes.String("activation", "");
  const std::vector<float> params = init.attributes.Floats("activation_params");
  auto need = [&](size_t count) -> Status {
    if (params.size() != count) {
      return NodeError("activation " + name + " needs " + std::to_string(count) + " activation_params");
    }
    return Status::Ok();
  };
  if (name.empty()) {
    act.kind = Activation::kNone;
  } else if (name == "Relu") {
    act.kind = Activation::kRelu;
  } else if (name == "Sigmoid") {
    act.kind = Activation::kSigmoid;
  } else if (name == "Tanh") {
    act.kind = Activation::kTanh;
  } else if (name == "LeakyRelu") {
    QUANTD_RETURN_IF_ERROR(need(1));
    act = {Activation::kLeakyRelu, params[0], 0.0f};
  } else if (name == "Clip") {
    QUANTD_RETURN_IF_ERROR(need(2));
    act = {Activation::kClip, params[0], params[1]};
  } else if (name == "HardSigmoid") {
    QUANTD_RETURN_IF_ERROR(need(2));
    act = {Activation::kHardSigmoid, params[0], params[1]};
  } else {
    return Status(StatusCode::kUnimplemented, "RUNTIME_INVALID_NODE",
                  "fused activation '" + name + "' is not supported");
  }
  return act;
}

// Clamp bounds for activations that are a clamp; others run afterwards.
void ClampBounds(const Activation& act, float* lo, float* hi) {
  *lo = -std::numeric_limits<float>::infinity();
  *hi = std::numeric_limits<float>::infinity();
  if (act.kind == Activation::kRelu) *lo = 0.0f;
  if (act.kind == Activation::kClip) {
    *lo = act.alpha;
    *hi = act.beta;
  }
}

bool IsClamp(const Activation& act) {
  return act.kind == Activation::kNone || act.kind == Activation::kRelu || act.kind == Activation::kClip;
}

// ---------------------------------------------------------------------------
// Layout conversion between planar [C][S] and channel-blocked
// [C/B][S][B] (channels-last is the single-block case B = C).
// ---------------------------------------------------------------------------

__attribute__((target("avx"))) inline void Transpose8x8(const float* src, int64_t src_stride, float* dst,
                                                        int64_t dst_stride) {
  __m256 r0 = _mm256_loadu_ps(src + 0 * src_stride);
  __m256 r1 = _mm256_loadu_ps(src + 1 * src_stride);
  __m256 r2 = _mm256_loadu_ps(src + 2 * src_stride);
  __m256 r3 = _mm256_loadu_ps(src + 3 * src_stride);
  __m256 r4 = _mm256_loadu_ps(src + 4 * src_stride);
  __m256 r5 = _mm256_loadu_ps(src + 5 * src_stride);
  __m256 r6 = _mm256_loadu_ps(src + 6 * src_stride);
  __m256 r7 = _mm256_loadu_ps(src + 7 * src_stride);
  // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
  const __m256 a0 = _mm256_unpacklo_ps(r0, r1), a1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 a2 = _mm256_unpacklo_ps(r2, r3), a3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 a4 = _mm256_unpacklo_ps(r4, r5), a5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 a6 = _mm256_unpacklo_ps(r6, r7), a7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44), b1 = _mm256_shuffle_ps(a0, a2, 0xEE);
  const __m256 b2 = _mm256_shuffle_ps(a1, a3, 0x44), b3 = _mm256_shuffle_ps(a1, a3, 0xEE);
  const __m256 b4 = _mm256_shuffle_ps(a4, a6, 0x44), b5 = _mm256_shuffle_ps(a4, a6, 0xEE);
  const __m256 b6 = _mm256_shuffle_ps(a5, a7, 0x44), b7 = _mm256_shuffle_ps(a5, a7, 0xEE);
  _mm256_storeu_ps(dst + 0 * dst_stride, _mm256_permute2f128_ps(b0, b4, 0x20));
  _mm256_storeu_ps(dst + 1 * dst_stride, _mm256_permute2f128_ps(b1, b5, 0x20));
  _mm256_storeu_ps(dst + 2 * dst_stride, _mm256_permute2f128_ps(b2, b6, 0x20));
  _mm256_storeu_ps(dst + 3 * dst_stride, _mm256_permute2f128_ps(b3, b7, 0x20));
  _mm256_storeu_ps(dst + 4 * dst_stride, _mm256_permute2f128_ps(b0, b4, 0x31));
  _mm256_storeu_ps(dst + 5 * dst_stride, _mm256_permute2f128_ps(b1, b5, 0x31));
  _mm256_storeu_ps(dst + 6 * dst_stride, _mm256_permute2f128_ps(b2, b6, 0x31));
  _mm256_storeu_ps(dst + 7 * dst_stride, _mm256_permute2f128_ps(b3, b7, 0x31));
}

// 16x16 in three rounds: pairs of rows within 128-bit lanes, quads of rows
// within lanes (row 4k+c of `b` then holds column 4L+c of rows 4k..4k+3 in
// lane L), then 128-bit lanes gathered across the four quads.
__attribute__((target("avx512f"))) inline void Transpose16x16(const float* src, int64_t src_stride, float* dst,
                                                              int64_t dst_stride) {
  // Full-mask maskz forms: the plain ones trip GCC 12's -Wuninitialized.
  constexpr __mmask16 kAll = 0xFFFF;
  __m512 r[16], a[16], b[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * src_stride);
  for (int k = 0; k < 8; ++k) {
    a[2 * k] = _mm512_maskz_unpacklo_ps(kAll, r[2 * k], r[2 * k + 1]);
    a[2 * k + 1] = _mm512_maskz_unpackhi_ps(kAll, r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {
    b[4 * k + 0] = _mm512_maskz_shuffle_ps(kAll, a[4 * k], a[4 * k + 2], 0x44);
    b[4 * k + 1] = _mm512_maskz_shuffle_ps(kAll, a[4 * k], a[4 * k + 2], 0xEE);
    b[4 * k + 2] = _mm512_maskz_shuffle_ps(kAll, a[4 * k + 1], a[4 * k + 3], 0x44);
    b[4 * k + 3] = _mm512_maskz_shuffle_ps(kAll, a[4 * k + 1], a[4 * k + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 e0 = _mm512_maskz_shuffle_f32x4(kAll, b[c], b[4 + c], 0x44);
    const __m512 e1 = _mm512_maskz_shuffle_f32x4(kAll, b[8 + c], b[12 + c], 0x44);
    const __m512 e2 = _mm512_maskz_shuffle_f32x4(kAll, b[c], b[4 + c], 0xEE);
    const __m512 e3 = _mm512_maskz_shuffle_f32x4(kAll, b[8 + c], b[12 + c], 0xEE);
    _mm512_storeu_ps(dst + (c + 0) * dst_stride, _mm512_maskz_shuffle_f32x4(kAll, e0, e1, 0x88));
    _mm512_storeu_ps(dst + (c + 4) * dst_stride, _mm512_maskz_shuffle_f32x4(kAll, e0, e1, 0xDD));
    _mm512_storeu_ps(dst + (c + 8) * dst_stride, _mm512_maskz_shuffle_f32x4(kAll, e2, e3, 0x88));
    _mm512_storeu_ps(dst + (c + 12) * dst_stride, _mm512_maskz_shuffle_f32x4(kAll, e2, e3, 0xDD));
  }
}

struct Tile16 {
  static constexpr int kSize = 16;
  __attribute__((target("avx512f"))) static void Move(const float* src, int64_t ss, float* dst, int64_t ds) {
    Transpose16x16(src, ss, dst, ds);
  }
};
struct Tile8 {
  static constexpr int kSize = 8;
  __attribute__((target("avx"))) static void Move(const float* src, int64_t ss, float* dst, int64_t ds) {
    Transpose8x8(src, ss, dst, ds);
  }
};
struct Tile1 {
  static constexpr int kSize = 1;
  static void Move(const float* src, int64_t, float* dst, int64_t) { *dst = *src; }
};

// planar [channels][spatial] <-> blocked [channels/block][spatial][block]
// (zero-filled past `channels` when writing the blocked side), in T x T
// tiles. Inlined into per-ISA entry points so the tile moves inline too.
template <bool kToBlocked, typename Tile>
__attribute__((always_inline)) inline void ConvertLayoutTiles(float* planar, float* blocked, int64_t channels,
                                                              int64_t spatial, int64_t block) {
  constexpr int T = Tile::kSize;
  const int64_t blocks = (channels + block - 1) / block;
  for (int64_t cb = 0; cb < blocks; ++cb) {
    for (int64_t ct = 0; ct < block; ct += T) {
      const int64_t c0 = cb * block + ct;
      const int64_t valid = std::clamp<int64_t>(channels - c0, 0, T);
      float* group = blocked + cb * spatial * block + ct;
      float* rows = planar + c0 * spatial;
      int64_t s = 0;
      if (valid == T) {
        for (; s + T <= spatial; s += T) {
          if constexpr (kToBlocked) {
            Tile::Move(rows + s, spatial, group + s * block, block);
          } else {
            Tile::Move(group + s * block, block, rows + s, spatial);
          }
        }
      }
      for (; s < spatial; ++s) {
        for (int64_t c = 0; c < T; ++c) {
          if constexpr (kToBlocked) {
            group[s * block + c] = c < valid ? rows[c * spatial + s] : 0.0f;
          } else if (c < valid) {
            rows[c * spatial + s] = group[s * block + c];
          }
        }
      }
    }
  }
}

template <bool kToBlocked>
__attribute__((target("avx512f"))) void ConvertLayout16(float* planar, float* blocked, int64_t channels,
                                                        int64_t spatial, int64_t block) {
  ConvertLayoutTiles<kToBlocked, Tile16>(planar, blocked, channels, spatial, block);
}
template <bool kToBlocked>
__attribute__((target("avx"))) void ConvertLayout8(float* planar, float* blocked, int64_t channels, int64_t spatial,
                                                   int64_t block) {
  ConvertLayoutTiles<kToBlocked, Tile8>(planar, blocked, channels, spatial, block);
}

// planar [channels][spatial] <-> blocked; `block` is the oneDNN channel block
// (channels-last is the single-block case block == channels).
template <bool kToBlocked>
void ConvertLayout(float* planar, float* blocked, int64_t channels, int64_t spatial, int64_t block) {
  const int isa = VectorWidth() >= 16 ? 2 : VectorWidth() >= 8 ? 1 : 0;
  if (isa == 2 && block % 16 == 0) return ConvertLayout16<kToBlocked>(planar, blocked, channels, spatial, block);
  if (isa >= 1 && block % 8 == 0) return ConvertLayout8<kToBlocked>(planar, blocked, channels, spatial, block);
  ConvertLayoutTiles<kToBlocked, Tile1>(planar, blocked, channels, spatial, block);
}

// ---------------------------------------------------------------------------
// Geometry
// ---------------------------------------------------------------------------

struct ConvAttributes {
  std::vector<int64_t> kernel_shape, strides, pads, dilations, output_padding, output_shape;
  std::string auto_pad = "NOTSET";
  int64_t group = 1;
  Activation activation;
};

ConvAttributes ParseConvAttributes(const KernelInit& init) {
  ConvAttributes a;
  a.kernel_shape = init.attributes.Ints("kernel_shape");
  a.strides = init.attributes.Ints("strides");
  a.pads = init.attributes.Ints("pads");
  a.dilations = init.attributes.Ints("dilations");
  a.output_padding = init.attributes.Ints("output_padding");
  a.output_shape = init.attributes.Ints("output_shape");
  a.auto_pad = init.attributes.String("auto_pad", "NOTSET");
  a.group = init.attributes.Int("group", 1);
  return a;
}

struct ConvGeometry {
  int64_t n = 0, c = 0, m = 0, group = 1, cg = 0, mg = 0;
  // Spatial, always padded to 3 axes (leading axes of size 1) so 1-D, 2-D
  // and 3-D share one code path.
  std::array<int64_t, 3> in{1, 1, 1}, out{1, 1, 1}, kernel{1, 1, 1}, stride{1, 1, 1}, dilation{1, 1, 1},
      pad_begin{0, 0, 0}, pad_end{0, 0, 0};
  int rank = 2;  // spatial rank as given
  int64_t in_size() const { return in[0] * in[1] * in[2]; }
  int64_t out_size() const { return out[0] * out[1] * out[2]; }
  int64_t kernel_size() const { return kernel[0] * kernel[1] * kernel[2]; }
  bool pointwise() const {
    for (int i = 0; i < 3; ++i) {
      if (kernel[i] != 1 || stride[i] != 1 || pad_begin[i] != 0 || pad_end[i] != 0) return false;
    }
    return true;
  }
};

Status FillSpatial(const onnx::NodeProto& node, const ConvAttributes& a, const Shape& x, const Shape& w,
                   ConvGeometry* g) {
  const int k = static_cast<int>(x.size()) - 2;
  if (k < 1 || k > 3) {
    return Status(StatusCode::kUnimplemented, "RUNTIME_KERNEL_ERROR",
                  "only 1-D, 2-D and 3-D convolutions are supported, got X " + ShapeToString(x));
  }
  if (w.size() != x.size()) return Invalid(node, "W " + ShapeToString(w) + " does not match X " + ShapeToString(x));
  const size_t ku = static_cast<size_t>(k);
  auto sized = [&](const std::vector<int64_t>& v, size_t n, int64_t fallback, const char* name,
                   std::vector<int64_t>* out) -> Status {
    if (v.empty()) {
      out->assign(n, fallback);
    } else if (v.size() != n) {
      return Invalid(node, std::string(name) + " has " + std::to_string(v.size()) + " values, expected " +
                               std::to_string(n));
    } else {
      *out = v;
    }
    return Status::Ok();
  };
  std::vector<int64_t> kernel, strides, dilations, pads;
  const std::vector<int64_t> wk(w.begin() + 2, w.end());
  QUANTD_RETURN_IF_ERROR(sized(a.kernel_shape, ku, 0, "kernel_shape", &kernel));
  if (a.kernel_shape.empty()) kernel = wk;
  if (kernel != wk) return Invalid(node, "kernel_shape does not match W " + ShapeToString(w));
  QUANTD_RETURN_IF_ERROR(sized(a.strides, ku, 1, "strides", &strides));
  QUANTD_RETURN_IF_ERROR(sized(a.dilations, ku, 1, "dilations", &dilations));
  QUANTD_RETURN_IF_ERROR(sized(a.pads, 2 * ku, 0, "pads", &pads));
  g->rank = k;
  const int off = 3 - k;
  for (int i = 0; i < k; ++i) {
    const size_t iu = static_cast<size_t>(i);
    if (kernel[iu] < 1 || strides[iu] < 1 || dilations[iu] < 1 || pads[iu] < 0 || pads[iu + ku] < 0) {
      return Invalid(node, "kernel, strides and dilations must be positive and pads non-negative");
    }
    g->in[static_cast<size_t>(off + i)] = x[iu + 2];
    g->kernel[static_cast<size_t>(off + i)] = kernel[iu];
    g->stride[static_cast<size_t>(off + i)] = strides[iu];
    g->dilation[static_cast<size_t>(off + i)] = dilations[iu];
    g->pad_begin[static_cast<size_t>(off + i)] = pads[iu];
    g->pad_end[static_cast<size_t>(off + i)] = pads[iu + ku];
  }
  return Status::Ok();
}

StatusOr<ConvGeometry> ResolveConv(const onnx::NodeProto& node, const ConvAttributes& a, const Shape& x,
                                   const Shape& w) {
  ConvGeometry g;
  QUANTD_RETURN_IF_ERROR(FillSpatial(node, a, x, w, &g));
  g.n = x[0];
  g.c = x[1];
  g.m = w[0];
  g.group = a.group;
  if (g.group < 1 || g.c % g.group != 0 || g.m % g.group != 0 || w[1] * g.group != g.c) {
    return Invalid(node, "X " + ShapeToString(x) + ", W " + ShapeToString(w) + " and group " +
                             std::to_string(g.group) + " do not fit together");
  }
  g.cg = g.c / g.group;
  g.mg = g.m / g.group;
  for (size_t i = 0; i < 3; ++i) {
    const int64_t eff = (g.kernel[i] - 1) * g.dilation[i] + 1;
    const int64_t s = g.stride[i];
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
      g.out[i] = span >= 0 ? span / s + 1 : 0;
    } else {
      return Invalid(node, "unknown auto_pad '" + a.auto_pad + "'");
    }
    if (g.out[i] < 1) return Invalid(node, "the kernel does not fit into X " + ShapeToString(x));
  }
  return g;
}

Shape OutputShape(const ConvGeometry& g) {
  Shape s = {g.n, g.m};
  for (int i = 3 - g.rank; i < 3; ++i) s.push_back(g.out[static_cast<size_t>(i)]);
  return s;
}

// ---------------------------------------------------------------------------
// im2col / col2im over the 3-axis geometry
// ---------------------------------------------------------------------------

// col[(c * K + k) * out_size + o] = x[c, o * stride - pad + k * dilation] (0 outside).
void Im2Col(const float* x, int64_t channels, const ConvGeometry& g, float* col) {
  const int64_t in_size = g.in_size(), out_size = g.out_size();
  float* dst = col;
  for (int64_t c = 0; c < channels; ++c) {
    const float* xc = x + c * in_size;
    for (int64_t kd = 0; kd < g.kernel[0]; ++kd) {
      for (int64_t kh = 0; kh < g.kernel[1]; ++kh) {
        for (int64_t kw = 0; kw < g.kernel[2]; ++kw) {
          for (int64_t od = 0; od < g.out[0]; ++od) {
            const int64_t id = od * g.stride[0] - g.pad_begin[0] + kd * g.dilation[0];
            for (int64_t oh = 0; oh < g.out[1]; ++oh) {
              const int64_t ih = oh * g.stride[1] - g.pad_begin[1] + kh * g.dilation[1];
              float* row = dst + (od * g.out[1] + oh) * g.out[2];
              if (id < 0 || id >= g.in[0] || ih < 0 || ih >= g.in[1]) {
                std::fill(row, row + g.out[2], 0.0f);
                continue;
              }
              const float* xrow = xc + (id * g.in[1] + ih) * g.in[2];
              const int64_t base = kw * g.dilation[2] - g.pad_begin[2];
              if (g.stride[2] == 1) {
                // Contiguous: zero the clipped ends, copy the middle.
                const int64_t lo = std::clamp<int64_t>(-base, 0, g.out[2]);
                const int64_t hi = std::clamp<int64_t>(g.in[2] - base, lo, g.out[2]);
                std::fill(row, row + lo, 0.0f);
                std::memcpy(row + lo, xrow + base + lo, static_cast<size_t>(hi - lo) * sizeof(float));
                std::fill(row + hi, row + g.out[2], 0.0f);
              } else {
                for (int64_t ow = 0; ow < g.out[2]; ++ow) {
                  const int64_t iw = ow * g.stride[2] + base;
                  row[ow] = iw >= 0 && iw < g.in[2] ? xrow[iw] : 0.0f;
                }
              }
            }
          }
          dst += out_size;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// oneDNN convolution plan
// ---------------------------------------------------------------------------

// How a oneDNN tensor is laid out relative to NCHW: plain (no copy),
// channel-blocked with `block` (channels-last is block == C), or something
// else that needs a oneDNN reorder.
struct Layout {
  enum Kind { kPlain, kBlocked, kOther } kind = kOther;
  int64_t block = 0;
};

using dnnl::memory;
using Tag = memory::format_tag;

Layout Classify(const memory::desc& desc, const memory::dims& dims, int spatial_rank, int64_t channels) {
  auto same = [&](Tag tag) { return desc == memory::desc(dims, memory::data_type::f32, tag); };
  const Tag plain[] = {Tag::ncw, Tag::nchw, Tag::ncdhw};
  const Tag last[] = {Tag::nwc, Tag::nhwc, Tag::ndhwc};
  const Tag b16[] = {Tag::nCw16c, Tag::nChw16c, Tag::nCdhw16c};
  const Tag b8[] = {Tag::nCw8c, Tag::nChw8c, Tag::nCdhw8c};
  const size_t r = static_cast<size_t>(spatial_rank - 1);
  if (same(plain[r])) return {Layout::kPlain, 0};
  if (same(b16[r])) return {Layout::kBlocked, 16};
  if (same(b8[r])) return {Layout::kBlocked, 8};
  if (same(last[r])) return {Layout::kBlocked, channels};
  return {Layout::kOther, 0};
}

Tag PlainTag(int spatial_rank) {
  const Tag tags[] = {Tag::ncw, Tag::nchw, Tag::ncdhw};
  return tags[spatial_rank - 1];
}

Tag WeightsTag(int spatial_rank, bool grouped) {
  const Tag plain[] = {Tag::oiw, Tag::oihw, Tag::oidhw};
  const Tag groups[] = {Tag::goiw, Tag::goihw, Tag::goidhw};
  return grouped ? groups[spatial_rank - 1] : plain[spatial_rank - 1];
}

memory::dims SpatialDims(const ConvGeometry& g, const std::array<int64_t, 3>& v) {
  return memory::dims(v.begin() + (3 - g.rank), v.end());
}

class ConvPlan {
 public:
  virtual ~ConvPlan() = default;
  // x: [N, C, ...], w: [M, C/group, ...] as given; y preallocated.
  virtual void Run(const float* x, const float* w, const float* bias, float* y, ThreadPool& pool) const = 0;
};

class DnnlConvPlan final : public ConvPlan {
 public:
  static std::unique_ptr<DnnlConvPlan> Create(const ConvGeometry& g, bool has_bias, const Activation& act,
                                              const float* constant_weights, int threads) {
    auto plan = std::unique_ptr<DnnlConvPlan>(new DnnlConvPlan(g, threads));
    try {
      if (!plan->Build(has_bias, act, constant_weights)) return nullptr;
    } catch (const dnnl::error&) {
      return nullptr;
    }
    return plan;
  }

  void Run(const float* x, const float* w, const float* bias, float* y, ThreadPool& pool) const override {
    RunImages(x, w, bias, y, pool, g_.n);
  }

  // Whether RunImages() takes other batch sizes than the plan's: the
  // primitive then reads and writes only scratch copies, so a last chunk
  // short of images can run with the rest of its scratch zeroed.
  bool RunsOtherBatches() const { return src_layout_.kind == Layout::kBlocked && dst_layout_.kind == Layout::kBlocked; }

  // Runs `n` images (the plan's batch, or any where RunsOtherBatches()) in
  // chunks of the primitive's size, the last one possibly short.
  void RunImages(const float* x, const float* w, const float* bias, float* y, ThreadPool& pool, int64_t n) const {
    const int64_t chunks = (n + chunk_ - 1) / chunk_;
    const float* packed = packed_weights_.empty() ? nullptr : packed_weights_.data();
    if (packed == nullptr && !weights_plain_) {
      // Weights computed at run time (e.g. dequantised): re-lay them out once
      // per call for the primitive.
      float* buffer = Scratch(kSlotWeights, weights_desc_.get_size() / sizeof(float));
      memory from(weights_user_desc_, CpuEngine(), const_cast<float*>(w));
      memory to(weights_desc_, CpuEngine(), buffer);
      SetOmpThreads(omp_threads_);
      weights_reorder_.execute(ThreadStream(), from, to);
      ThreadStream().wait();
      packed = buffer;
    }
    const float* weights = packed != nullptr ? packed : w;
    auto run_chunk = [&](int64_t chunk) {
      RunChunk(x + chunk * chunk_ * src_image_, weights, bias, y + chunk * chunk_ * dst_image_,
               std::min(chunk_, n - chunk * chunk_));
    };
    if (pool_parallel_) {
      pool.ParallelFor(chunks, 1, [&](int64_t begin, int64_t end) {
        SetOmpThreads(1);
        for (int64_t chunk = begin; chunk < end; ++chunk) run_chunk(chunk);
      });
    } else {
      SetOmpThreads(omp_threads_);
      for (int64_t chunk = 0; chunk < chunks; ++chunk) run_chunk(chunk);
    }
  }

 private:
  DnnlConvPlan(const ConvGeometry& g, int threads) : g_(g), threads_(threads) {}

  bool Build(bool has_bias, const Activation& act, const float* constant_weights) {
    const ConvGeometry& g = g_;
    src_image_ = g.c * g.in_size();
    dst_image_ = g.m * g.out_size();
    // Images per primitive call: enough to amortise the call, few enough that
    // the blocked copies stay in L2. Must divide N so one primitive serves.
    const int64_t per_image_bytes = (src_image_ + dst_image_) * static_cast<int64_t>(sizeof(float)) * 2;
    const int64_t target = std::max<int64_t>(1, (512 << 10) / std::max<int64_t>(per_image_bytes, 1));
    chunk_ = 1;
    for (int64_t d = std::min(g.n, target); d >= 1; --d) {
      if (g.n % d == 0) {
        chunk_ = d;
        break;
      }
    }
    // Enough chunks for every thread: the pool takes whole chunks and each
    // runs single-threaded. Otherwise oneDNN splits each call with OpenMP.
    // oneDNN fixes a primitive's thread count when it is created, so the
    // OpenMP setting must already be the one it will run under.
    const int threads = UsefulThreads(threads_, g.n * g.m * g.out_size() * g.cg * g.kernel_size());
    pool_parallel_ = threads > 1 && g.n / chunk_ >= threads;
    omp_threads_ = pool_parallel_ ? 1 : threads;
    SetOmpThreads(omp_threads_);
    memory::dims src_dims = {chunk_, g.c}, dst_dims = {chunk_, g.m}, weight_dims;
    const memory::dims in = SpatialDims(g, g.in), out = SpatialDims(g, g.out);
    src_dims.insert(src_dims.end(), in.begin(), in.end());
    dst_dims.insert(dst_dims.end(), out.begin(), out.end());
    const bool grouped = g.group > 1;
    if (grouped) weight_dims = {g.group, g.mg, g.cg};
    else weight_dims = {g.m, g.c};
    const memory::dims kernel = SpatialDims(g, g.kernel);
    weight_dims.insert(weight_dims.end(), kernel.begin(), kernel.end());
    memory::dims strides = SpatialDims(g, g.stride), dilation = SpatialDims(g, g.dilation);
    for (auto& d : dilation) d -= 1;  // oneDNN counts the gap, ONNX the step
    const memory::dims pad_l = SpatialDims(g, g.pad_begin), pad_r = SpatialDims(g, g.pad_end);

    const auto f32 = memory::data_type::f32;
    const memory::desc src_any(src_dims, f32, Tag::any), dst_any(dst_dims, f32, Tag::any);
    const memory::desc weights_any(weight_dims, f32, Tag::any);
    const memory::desc bias_desc = has_bias ? memory::desc({g.m}, f32, Tag::x) : memory::desc();
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::post_ops ops;
    act.AppendTo(ops);
    attr.set_post_ops(ops);
    const dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference,
                                               dnnl::algorithm::convolution_direct, src_any, weights_any, bias_desc,
                                               dst_any, strides, dilation, pad_l, pad_r);
    pd_ = dnnl::convolution_forward::primitive_desc(desc, attr, CpuEngine());
    // The reference implementation is a scalar loop; im2col + SGEMM beats it.
    const std::string impl = pd_.impl_info_str();
    if (impl.find("ref") != std::string::npos) return false;
    primitive_ = dnnl::convolution_forward(pd_);
    src_desc_ = pd_.src_desc();
    dst_desc_ = pd_.dst_desc();
    src_layout_ = Classify(src_desc_, src_dims, g.rank, g.c);
    dst_layout_ = Classify(dst_desc_, dst_dims, g.rank, g.m);
    src_plain_desc_ = memory::desc(src_dims, f32, PlainTag(g.rank));
    dst_plain_desc_ = memory::desc(dst_dims, f32, PlainTag(g.rank));
    if (src_layout_.kind == Layout::kOther) {
      src_reorder_ = dnnl::reorder(dnnl::reorder::primitive_desc(CpuEngine(), src_plain_desc_, CpuEngine(), src_desc_));
    }
    if (dst_layout_.kind == Layout::kOther) {
      dst_reorder_ = dnnl::reorder(dnnl::reorder::primitive_desc(CpuEngine(), dst_desc_, CpuEngine(), dst_plain_desc_));
    }
    scratch_floats_ = pd_.scratchpad_desc().get_size() / sizeof(float) + 1;

    weights_desc_ = pd_.weights_desc();
    weights_user_desc_ = memory::desc(weight_dims, f32, WeightsTag(g.rank, grouped));
    weights_plain_ = weights_desc_ == weights_user_desc_;
    if (!weights_plain_) {
      weights_reorder_ = dnnl::reorder(dnnl::reorder::primitive_desc(CpuEngine(), weights_user_desc_, CpuEngine(),
                                                                     weights_desc_));
      if (constant_weights != nullptr) {
        packed_weights_.resize(weights_desc_.get_size() / sizeof(float) + 1);
        memory from(weights_user_desc_, CpuEngine(), const_cast<float*>(constant_weights));
        memory to(weights_desc_, CpuEngine(), packed_weights_.data());
        weights_reorder_.execute(ThreadStream(), from, to);
        ThreadStream().wait();
      }
    }
    return true;
  }

  // `images` is below chunk_ only for the last chunk of a batch run through
  // RunImages(); then the layouts are blocked (RunsOtherBatches()).
  void RunChunk(const float* x, const float* weights, const float* bias, float* y, int64_t images) const {
    const dnnl::engine& eng = CpuEngine();
    dnnl::stream& stream = ThreadStream();
    const int64_t in_size = g_.in_size(), out_size = g_.out_size();
    const float* src = x;
    if (src_layout_.kind == Layout::kBlocked) {
      float* buffer = Scratch(kSlotSrc, src_desc_.get_size() / sizeof(float));
      const int64_t image = src_desc_.get_size() / sizeof(float) / static_cast<size_t>(chunk_);
      for (int64_t b = 0; b < images; ++b) {
        ConvertLayout<true>(const_cast<float*>(x) + b * src_image_, buffer + b * image, g_.c, in_size,
                            src_layout_.block);
      }
      // The missing images' outputs are dropped; zeros keep stale or
      // uninitialised scratch from feeding the primitive NaNs or denormals.
      std::fill(buffer + images * image, buffer + chunk_ * image, 0.0f);
      src = buffer;
    } else if (src_layout_.kind == Layout::kOther) {
      float* buffer = Scratch(kSlotSrc, src_desc_.get_size() / sizeof(float));
      memory from(src_plain_desc_, eng, const_cast<float*>(x));
      memory to(src_desc_, eng, buffer);
      src_reorder_.execute(stream, from, to);
      src = buffer;
    }
    float* dst = dst_layout_.kind == Layout::kPlain ? y : Scratch(kSlotDst, dst_desc_.get_size() / sizeof(float));
    memory src_mem(src_desc_, eng, const_cast<float*>(src));
    memory weights_mem(weights_desc_, eng, const_cast<float*>(weights));
    memory dst_mem(dst_desc_, eng, dst);
    memory scratch_mem(pd_.scratchpad_desc(), eng, Scratch(kSlotDnnl, scratch_floats_));
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src_mem},
                                            {DNNL_ARG_WEIGHTS, weights_mem},
                                            {DNNL_ARG_DST, dst_mem},
                                            {DNNL_ARG_SCRATCHPAD, scratch_mem}};
    if (bias != nullptr) args.emplace(DNNL_ARG_BIAS, memory(pd_.bias_desc(), eng, const_cast<float*>(bias)));
    primitive_.execute(stream, args);
    if (dst_layout_.kind == Layout::kBlocked) {
      const int64_t image = dst_desc_.get_size() / sizeof(float) / static_cast<size_t>(chunk_);
      for (int64_t b = 0; b < images; ++b) {
        ConvertLayout<false>(y + b * dst_image_, dst + b * image, g_.m, out_size, dst_layout_.block);
      }
    } else if (dst_layout_.kind == Layout::kOther) {
      memory to(dst_plain_desc_, eng, y);
      dst_reorder_.execute(stream, dst_mem, to);
    }
    stream.wait();
  }

  ConvGeometry g_;
  int threads_ = 1;
  bool pool_parallel_ = false;
  int omp_threads_ = 1;
  int64_t chunk_ = 1;
  int64_t src_image_ = 0, dst_image_ = 0;
  dnnl::convolution_forward::primitive_desc pd_;
  dnnl::convolution_forward primitive_;
  memory::desc src_desc_, dst_desc_, src_plain_desc_, dst_plain_desc_, weights_desc_, weights_user_desc_;
  Layout src_layout_, dst_layout_;
  dnnl::reorder src_reorder_, dst_reorder_, weights_reorder_;
  bool weights_plain_ = false;
  std::vector<float> packed_weights_;
  size_t scratch_floats_ = 0;
};

// A oneDNN plan made for a larger batch, run on a smaller one: whole chunks,
// then a short last chunk. Spares creating a primitive (about half a
// millisecond, more than running the layer) for the last, partial batch of
// a data set.
class RebatchedDnnlPlan final : public ConvPlan {
 public:
  RebatchedDnnlPlan(std::shared_ptr<const DnnlConvPlan> base, int64_t n) : base_(std::move(base)), n_(n) {}
  void Run(const float* x, const float* w, const float* bias, float* y, ThreadPool& pool) const override {
    base_->RunImages(x, w, bias, y, pool, n_);
  }

 private:
  std::shared_ptr<const DnnlConvPlan> base_;
  int64_t n_;
};

// Few input channels (first layers: 1 or 3 channels): computes NCHW output
// rows directly, vectorised along the width. A zero-padded copy of the
// image removes all border tests, and 8 output channels are accumulated at
// once so each input vector load feeds 8 FMAs. oneDNN's blocked layouts would
// cost two layout conversions, each dearer than this whole layer.
constexpr int64_t kDirectMaxTaps = 32;

struct DirectConvArgs {
  const float* padded;  // [C][hp][wp]
  const float* weights;  // [M/8][C][KH][KW][8], zero-padded channels
  const float* bias;     // [M/8][8]
  int64_t taps, wp, sh;
  int64_t offsets[kDirectMaxTaps];  // per (c, kh, kw), from the window's top-left
  int64_t out_h, out_w, vectors;  // vectors = ceil(out_w / VL)
  float lo, hi;                   // fused Relu / Clip bounds, else +-inf
};

template <int VL, int NV>
__attribute__((always_inline)) inline void DirectConvTile(const DirectConvArgs& a, int64_t block, int64_t oh,
                                                          int64_t v0, float* y, int64_t valid_oc) {
  typedef float Vec __attribute__((vector_size(VL * sizeof(float))));
  const float* bias = a.bias + block * 8;
  const float* w = a.weights + block * a.taps * 8;
  const float* origin = a.padded + oh * a.sh * a.wp + v0 * VL;
  Vec acc[8][NV];
  for (int o = 0; o < 8; ++o) {
    for (int j = 0; j < NV; ++j) acc[o][j] = Vec{} + bias[o];
  }
  for (int64_t t = 0; t < a.taps; ++t, w += 8) {
    const float* row = origin + a.offsets[t];
    Vec x[NV];
    for (int j = 0; j < NV; ++j) std::memcpy(&x[j], row + j * VL, sizeof(Vec));
    for (int o = 0; o < 8; ++o) {
      const float wv = w[o];
      for (int j = 0; j < NV; ++j) acc[o][j] += x[j] * wv;
    }
  }
  for (int o = 0; o < 8; ++o) {
    for (int j = 0; j < NV; ++j) {
      acc[o][j] = acc[o][j] < a.lo ? Vec{} + a.lo : acc[o][j];
      acc[o][j] = acc[o][j] > a.hi ? Vec{} + a.hi : acc[o][j];
    }
  }
  const int64_t plane = a.out_h * a.out_w;
  // A full-width store of a partial vector spills into the following rows
  // of the same plane, which are computed (and overwritten) later; only the
  // plane's last row must stop at its end.
  bool whole[NV];
  for (int j = 0; j < NV; ++j) {
    const int64_t col = (v0 + j) * VL;
    whole[j] = col + VL <= a.out_w || (oh * a.out_w + col + VL) <= plane;
  }
  auto store_channel = [&](int o) __attribute__((always_inline)) {
    float* out = y + o * plane + oh * a.out_w;
    for (int j = 0; j < NV; ++j) {
      const int64_t col = (v0 + j) * VL;
      if (whole[j]) {
        std::memcpy(out + col, &acc[o][j], sizeof(Vec));
      } else {
        float lanes[VL];
        std::memcpy(lanes, &acc[o][j], sizeof(Vec));
        for (int64_t i = 0; i < std::min<int64_t>(VL, a.out_w - col); ++i) out[col + i] = lanes[i];
      }
    }
  };
  if (valid_oc == 8) {
    // A constant channel count keeps the accumulators in registers; a loop
    // bound known only at run time made GCC store them all to the stack.
#pragma GCC unroll 8
    for (int o = 0; o < 8; ++o) store_channel(o);
  } else {
    for (int o = 0; o < valid_oc; ++o) store_channel(o);
  }
}

template <int VL>
__attribute__((always_inline)) inline void DirectConvBlock(const DirectConvArgs& a, int64_t block, float* y,
                                                           int64_t valid_oc) {
  // 8 x 2 vectors of accumulators fit AVX-512's 32 registers; AVX2 has 16.
  constexpr int kNV = VL == 16 ? 2 : 1;
  for (int64_t oh = 0; oh < a.out_h; ++oh) {
    int64_t v = 0;
    for (; v + kNV <= a.vectors; v += kNV) DirectConvTile<VL, kNV>(a, block, oh, v, y, valid_oc);
    if (v < a.vectors) DirectConvTile<VL, 1>(a, block, oh, v, y, valid_oc);
  }
}

__attribute__((target("avx512f"))) void DirectConvBlock16(const DirectConvArgs& a, int64_t block, float* y,
                                                          int64_t valid_oc) {
  DirectConvBlock<16>(a, block, y, valid_oc);
}
__attribute__((target("avx2,fma"))) void DirectConvBlock8(const DirectConvArgs& a, int64_t block, float* y,
                                                          int64_t valid_oc) {
  DirectConvBlock<8>(a, block, y, valid_oc);
}
void DirectConvBlock4(const DirectConvArgs& a, int64_t block, float* y, int64_t valid_oc) {
  DirectConvBlock<4>(a, block, y, valid_oc);
}

class DirectConvPlan final : public ConvPlan {
 public:
  // Small input depth, one group, unit stride along the width, 1-D or 2-D.
  static bool Suits(const ConvGeometry& g) {
    return g.group == 1 && g.in[0] == 1 && g.kernel[0] == 1 && g.stride[2] == 1 &&
           g.c * g.kernel_size() <= kMaxDepth;
  }

  DirectConvPlan(const ConvGeometry& g, const Activation& act, const float* constant_weights) : g_(g), act_(act) {
    vl_ = VectorWidth();
    block_fn_ = vl_ == 16 ? DirectConvBlock16 : vl_ == 8 ? DirectConvBlock8 : DirectConvBlock4;
    vectors_ = (g.out[2] + vl_ - 1) / vl_;
    hp_ = g.in[1] + g.pad_begin[1] + g.pad_end[1];
    wp_ = std::max(vectors_ * vl_ + (g.kernel[2] - 1) * g.dilation[2], g.pad_begin[2] + g.in[2]);
    blocks_ = (g.m + 7) / 8;
    if (constant_weights != nullptr) {
      packed_weights_.resize(static_cast<size_t>(blocks_ * 8 * g.c * g.kernel_size()));
      PackWeights(constant_weights, packed_weights_.data());
    }
    args_.taps = g.c * g.kernel_size();
    args_.wp = wp_;
    args_.sh = g.stride[1];
    for (int64_t c = 0, t = 0; c < g.c; ++c) {
      for (int64_t r = 0; r < g.kernel[1]; ++r) {
        for (int64_t k = 0; k < g.kernel[2]; ++k, ++t) {
          args_.offsets[t] = (c * hp_ + r * g.dilation[1]) * wp_ + k * g.dilation[2];
        }
      }
    }
    args_.out_h = g.out[1];
    args_.out_w = g.out[2];
    args_.vectors = vectors_;
    ClampBounds(act, &args_.lo, &args_.hi);
  }

  void Run(const float* x, const float* w, const float* bias, float* y, ThreadPool& pool) const override {
    const int64_t taps = g_.c * g_.kernel_size();
    // Bias (and weights computed at run time) in the kernel's [M/8][...][8] order.
    std::vector<float> packed(static_cast<size_t>(blocks_ * 8 * (packed_weights_.empty() ? taps + 1 : 1)));
    float* packed_b = packed.data();
    const float* packed_w = packed_weights_.data();
    if (packed_weights_.empty()) {
      PackWeights(w, packed.data() + blocks_ * 8);
      packed_w = packed.data() + blocks_ * 8;
    }
    for (int64_t oc = 0; oc < blocks_ * 8; ++oc) packed_b[oc] = oc < g_.m && bias != nullptr ? bias[oc] : 0.0f;
    const int64_t in_size = g_.in_size(), out_size = g_.out_size();
    const int64_t image_floats = g_.c * hp_ * wp_;
    // One padded image per job; jobs are (image, group of channel blocks).
    const int threads = UsefulThreads(pool.num_threads(), g_.n * g_.m * g_.out_size() * args_.taps);
    const int64_t block_groups = g_.n >= threads ? 1 : std::min<int64_t>(blocks_, threads);
    auto job = [&](int64_t index) {
      const int64_t n = index / block_groups, part = index % block_groups;
      float* padded = Scratch(kSlotSrc, static_cast<size_t>(image_floats));
      std::fill(padded, padded + image_floats, 0.0f);
      const float* xn = x + n * g_.c * in_size;
      for (int64_t c = 0; c < g_.c; ++c) {
        for (int64_t h = 0; h < g_.in[1]; ++h) {
          std::memcpy(padded + (c * hp_ + h + g_.pad_begin[1]) * wp_ + g_.pad_begin[2], xn + (c * g_.in[1] + h) * g_.in[2],
                      static_cast<size_t>(g_.in[2]) * sizeof(float));
        }
      }
      DirectConvArgs a = args_;
      a.padded = padded;
      a.weights = packed_w;
      a.bias = packed_b;
      const int64_t first = blocks_ * part / block_groups, last = blocks_ * (part + 1) / block_groups;
      for (int64_t block = first; block < last; ++block) {
        float* yb = y + (n * g_.m + block * 8) * out_size;
        const int64_t valid = std::min<int64_t>(8, g_.m - block * 8);
        block_fn_(a, block, yb, valid);
        if (!IsClamp(act_)) act_.Apply(yb, valid * out_size);
      }
    };
    if (UsefulThreads(pool.num_threads(), g_.n * g_.m * g_.out_size() * args_.taps) > 1) {
      pool.ParallelFor(g_.n * block_groups, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) job(i);
      });
    } else {
      for (int64_t i = 0; i < g_.n * block_groups; ++i) job(i);
    }
  }

 private:
  void PackWeights(const float* w, float* packed) const {
    const int64_t taps = g_.c * g_.kernel_size();
    for (int64_t oc = 0; oc < blocks_ * 8; ++oc) {
      const int64_t block = oc / 8, lane = oc % 8;
      for (int64_t t = 0; t < taps; ++t) packed[(block * taps + t) * 8 + lane] = oc < g_.m ? w[oc * taps + t] : 0.0f;
    }
  }

  static constexpr int64_t kMaxDepth = kDirectMaxTaps;
  DirectConvArgs args_{};
  ConvGeometry g_;
  Activation act_;
  std::vector<float> packed_weights_;
  int64_t vl_ = 4, vectors_ = 0, hp_ = 0, wp_ = 0, blocks_ = 0;
  void (*block_fn_)(const DirectConvArgs&, int64_t, float*, int64_t) = nullptr;
};


// Weights [M][taps] as [M/8][taps][8], zero rows past M.
std::vector<float> PackBy8(const float* w, int64_t m, int64_t taps) {
  const int64_t blocks = (m + 7) / 8;
  std::vector<float> packed(static_cast<size_t>(blocks * 8 * taps), 0.0f);
  for (int64_t oc = 0; oc < m; ++oc) {
    for (int64_t t = 0; t < taps; ++t) packed[static_cast<size_t>(((oc / 8) * taps + t) * 8 + oc % 8)] = w[oc * taps + t];
  }
  return packed;
}

// Pointwise (1x1, unit stride, no padding, one group) convolution is a GEMM
// on the NCHW planes as they are: Y[M, HW] = W[M, K] x X[K, HW]. Tiles of 8
// output channels x up to 3 vectors of pixels; pixel tiles outside, channel
// blocks inside, so a stripe of X stays in L1 across the blocks.
struct PointwiseArgs {
  const float* weights;  // [M/8][K][8]
  const float* bias;     // [M/8][8]
  int64_t k, m, hw;
  float lo, hi;  // clamp fused into the store (Relu / Clip), else +-inf
};

// kPartial: only the first valid_px columns are stored (row tails).
// kClamp: the fused Relu / Clip bounds are applied.
template <int VL, int NV, bool kPartial, bool kClamp>
__attribute__((always_inline)) inline void PointwiseTile(const PointwiseArgs& a, const float* x, int64_t x_stride,
                                                         int64_t block, float* y, int64_t valid_px) {
  typedef float Vec __attribute__((vector_size(VL * sizeof(float))));
  const float* bias = a.bias + block * 8;
  const float* w = a.weights + block * a.k * 8;
  Vec acc[8][NV];
  for (int o = 0; o < 8; ++o) {
    for (int j = 0; j < NV; ++j) acc[o][j] = Vec{} + bias[o];
  }
  for (int64_t kk = 0; kk < a.k; ++kk, x += x_stride, w += 8) {
    Vec xv[NV];
    for (int j = 0; j < NV; ++j) std::memcpy(&xv[j], x + j * VL, sizeof(Vec));
    for (int o = 0; o < 8; ++o) {
      const float wv = w[o];
      for (int j = 0; j < NV; ++j) acc[o][j] += xv[j] * wv;
    }
  }
  if constexpr (kClamp) {
    for (int o = 0; o < 8; ++o) {
      for (int j = 0; j < NV; ++j) {
        acc[o][j] = acc[o][j] < a.lo ? Vec{} + a.lo : acc[o][j];
        acc[o][j] = acc[o][j] > a.hi ? Vec{} + a.hi : acc[o][j];
      }
    }
  }
  const int64_t valid_oc = std::min<int64_t>(8, a.m - block * 8);
  for (int64_t o = 0; o < valid_oc; ++o) {
    float* out = y + o * a.hw;
    if constexpr (!kPartial) {
      for (int j = 0; j < NV; ++j) std::memcpy(out + j * VL, &acc[o][j], sizeof(Vec));
    } else {
      float lanes[NV * VL];
      std::memcpy(lanes, acc[o], sizeof(lanes));
      for (int64_t i = 0; i < valid_px; ++i) out[i] = lanes[i];
    }
  }
}

// One image, channel blocks [first, last). `tail` holds K x VL floats.
template <int VL, bool kClamp>
__attribute__((always_inline)) inline void PointwiseImageImpl(const PointwiseArgs& a, const float* x, float* y,
                                                              int64_t first, int64_t last, float* tail) {
  const int64_t full = a.hw / VL, rem = a.hw % VL;
  // 8 x 3 vectors of accumulators fit AVX-512's 32 registers; AVX2 has 16.
  constexpr int kNV = VL == 16 ? 3 : 1;
  int64_t v = 0;
  for (; v + kNV <= full; v += kNV) {
    for (int64_t b = first; b < last; ++b) {
      PointwiseTile<VL, kNV, false, kClamp>(a, x + v * VL, a.hw, b, y + b * 8 * a.hw + v * VL, kNV * VL);
    }
  }
  if (full - v == 2) {
    for (int64_t b = first; b < last; ++b) {
      PointwiseTile<VL, 2, false, kClamp>(a, x + v * VL, a.hw, b, y + b * 8 * a.hw + v * VL, 2 * VL);
    }
  } else if (full - v == 1) {
    for (int64_t b = first; b < last; ++b) {
      PointwiseTile<VL, 1, false, kClamp>(a, x + v * VL, a.hw, b, y + b * 8 * a.hw + v * VL, VL);
    }
  }
  if (rem > 0) {
    // The last partial vector of every row, zero-padded, so no load runs
    // past the end of the input.
    for (int64_t kk = 0; kk < a.k; ++kk) {
      float* t = tail + kk * VL;
      for (int64_t i = 0; i < VL; ++i) t[i] = i < rem ? x[kk * a.hw + full * VL + i] : 0.0f;
    }
    for (int64_t b = first; b < last; ++b) {
      PointwiseTile<VL, 1, true, kClamp>(a, tail, VL, b, y + b * 8 * a.hw + full * VL, rem);
    }
  }
}

template <int VL>
__attribute__((always_inline)) inline void PointwiseImage(const PointwiseArgs& a, const float* x, float* y,
                                                          int64_t first, int64_t last, float* tail) {
  if (a.lo == -std::numeric_limits<float>::infinity() && a.hi == std::numeric_limits<float>::infinity()) {
    PointwiseImageImpl<VL, false>(a, x, y, first, last, tail);
  } else {
    PointwiseImageImpl<VL, true>(a, x, y, first, last, tail);
  }
}

__attribute__((target("avx512f"))) void PointwiseImage16(const PointwiseArgs& a, const float* x, float* y,
                                                         int64_t first, int64_t last, float* tail) {
  PointwiseImage<16>(a, x, y, first, last, tail);
}
__attribute__((target("avx2,fma"))) void PointwiseImage8(const PointwiseArgs& a, const float* x, float* y,
                                                         int64_t first, int64_t last, float* tail) {
  PointwiseImage<8>(a, x, y, first, last, tail);
}
void PointwiseImage4(const PointwiseArgs& a, const float* x, float* y, int64_t first, int64_t last, float* tail) {
  PointwiseImage<4>(a, x, y, first, last, tail);
}

class PointwiseConvPlan final : public ConvPlan {
 public:
  static bool Suits(const ConvGeometry& g) { return g.group == 1 && g.pointwise(); }

  PointwiseConvPlan(const ConvGeometry& g, const Activation& act, const float* constant_weights)
      : g_(g), act_(act) {
    const int width = VectorWidth();
    image_fn_ = width == 16 ? PointwiseImage16 : width == 8 ? PointwiseImage8 : PointwiseImage4;
    if (constant_weights != nullptr) packed_weights_ = PackBy8(constant_weights, g.m, g.c);
  }

  void Run(const float* x, const float* w, const float* bias, float* y, ThreadPool& pool) const override {
    const int64_t blocks = (g_.m + 7) / 8, hw = g_.out_size();
    std::vector<float> runtime_weights;
    const float* weights = packed_weights_.data();
    if (packed_weights_.empty()) {
      runtime_weights = PackBy8(w, g_.m, g_.c);
      weights = runtime_weights.data();
    }
    std::vector<float> packed_bias(static_cast<size_t>(blocks * 8), 0.0f);
    if (bias != nullptr) std::copy(bias, bias + g_.m, packed_bias.begin());
    PointwiseArgs a{weights, packed_bias.data(), g_.c, g_.m, hw, 0.0f, 0.0f};
    ClampBounds(act_, &a.lo, &a.hi);
    // Jobs: (image, range of channel blocks); split channels only when there
    // are fewer images than threads.
    const int threads = UsefulThreads(pool.num_threads(), g_.n * g_.m * g_.c * hw);
    const int64_t parts = g_.n >= threads ? 1 : std::min<int64_t>(blocks, threads);
    auto job = [&](int64_t index) {
      const int64_t n = index / parts, part = index % parts;
      const int64_t first = blocks * part / parts, last = blocks * (part + 1) / parts;
      float* tail = Scratch(kSlotCol, static_cast<size_t>(g_.c * 16));
      float* yn = y + n * g_.m * hw;
      image_fn_(a, x + n * g_.c * hw, yn, first, last, tail);
      if (!IsClamp(act_)) act_.Apply(yn + first * 8 * hw, (std::min(g_.m, last * 8) - first * 8) * hw);
    };
    if (threads > 1 && g_.n * parts > 1) {
      pool.ParallelFor(g_.n * parts, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) job(i);
      });
    } else {
      for (int64_t i = 0; i < g_.n * parts; ++i) job(i);
    }
  }

 private:
  ConvGeometry g_;
  Activation act_;
  std::vector<float> packed_weights_;
  void (*image_fn_)(const PointwiseArgs&, const float*, float*, int64_t, int64_t, float*) = nullptr;
};

// Depthwise (one input and one output channel per group) convolution. Each
// group of VL channels of an image is converted to channel-interleaved form
// (one vector = VL channels of one pixel) with the tiled transposes, copied
// into a zero-bordered staging image, convolved with one vector FMA per tap
// and output pixel, and converted back. Borders, strides and dilations are
// then just address arithmetic, and small planes (7x7) waste no lanes.
constexpr int64_t kMaxDepthwiseTaps = 64;

struct DepthwiseArgs {
  int64_t h, w, pad_top, pad_left, out_h, out_w, sh, sw;
  int64_t stage_width;  // padded pixels per staged row
  int64_t taps;
  int64_t offsets[kMaxDepthwiseTaps];  // per tap, in floats from the window origin
  float lo, hi;
};

// kTaps > 0 fixes the tap count at compile time (3x3 kernels), so the tap
// loop unrolls and the weights stay in registers.
template <int VL, int kTaps>
__attribute__((always_inline)) inline void DepthwiseGroupCompute(const DepthwiseArgs& a, const float* stage,
                                                                 const float* w, const float* bias, float* out) {
  typedef float Vec __attribute__((vector_size(VL * sizeof(float))));
  // Output pixels in flight: enough independent FMA chains to cover the
  // FMA latency.
  constexpr int kGroup = 8;
  const int64_t taps = kTaps > 0 ? kTaps : a.taps;
  Vec b;
  std::memcpy(&b, bias, sizeof(Vec));
  for (int64_t oh = 0; oh < a.out_h; ++oh) {
    const float* row = stage + oh * a.sh * a.stage_width * VL;
    for (int64_t ow0 = 0; ow0 < a.out_w; ow0 += kGroup) {
      const int64_t n = std::min<int64_t>(kGroup, a.out_w - ow0);
      const float* base[kGroup];
      for (int j = 0; j < kGroup; ++j) base[j] = row + (ow0 + std::min<int64_t>(j, n - 1)) * a.sw * VL;
      Vec acc[kGroup];
      for (int j = 0; j < kGroup; ++j) acc[j] = b;
      for (int64_t t = 0; t < taps; ++t) {
        Vec wv;
        std::memcpy(&wv, w + t * VL, sizeof(Vec));
        const int64_t offset = a.offsets[t];
        for (int j = 0; j < kGroup; ++j) {
          Vec xv;
          std::memcpy(&xv, base[j] + offset, sizeof(Vec));
          acc[j] += xv * wv;
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        Vec v = acc[j];
        v = v < a.lo ? Vec{} + a.lo : v;
        v = v > a.hi ? Vec{} + a.hi : v;
        std::memcpy(out + (oh * a.out_w + ow0 + j) * VL, &v, sizeof(Vec));
      }
    }
  }
}

__attribute__((target("avx512f"))) void DepthwiseGroupCompute16(const DepthwiseArgs& a, const float* stage,
                                                                const float* w, const float* bias, float* out) {
  if (a.taps == 9) {
    DepthwiseGroupCompute<16, 9>(a, stage, w, bias, out);
  } else {
    DepthwiseGroupCompute<16, 0>(a, stage, w, bias, out);
  }
}
__attribute__((target("avx2,fma"))) void DepthwiseGroupCompute8(const DepthwiseArgs& a, const float* stage,
                                                                const float* w, const float* bias, float* out) {
  if (a.taps == 9) {
    DepthwiseGroupCompute<8, 9>(a, stage, w, bias, out);
  } else {
    DepthwiseGroupCompute<8, 0>(a, stage, w, bias, out);
  }
}

class DepthwiseConvPlan final : public ConvPlan {
 public:
  static bool Suits(const ConvGeometry& g) {
    return VectorWidth() >= 8 && g.group == g.c && g.m == g.c && g.in[0] == 1 && g.kernel[0] == 1 &&
           g.kernel[1] * g.kernel[2] <= kMaxDepthwiseTaps;
  }

  DepthwiseConvPlan(const ConvGeometry& g, const Activation& act, const float* constant_weights) : g_(g), act_(act) {
    vl_ = VectorWidth() >= 16 ? 16 : 8;
    compute_fn_ = vl_ == 16 ? DepthwiseGroupCompute16 : DepthwiseGroupCompute8;
    a_.h = g.in[1];
    a_.w = g.in[2];
    a_.pad_top = g.pad_begin[1];
    a_.pad_left = g.pad_begin[2];
    a_.out_h = g.out[1];
    a_.out_w = g.out[2];
    a_.sh = g.stride[1];
    a_.sw = g.stride[2];
    stage_rows_ = std::max(g.in[1] + g.pad_begin[1] + g.pad_end[1],
                           (g.out[1] - 1) * g.stride[1] + (g.kernel[1] - 1) * g.dilation[1] + 1);
    a_.stage_width = std::max(g.in[2] + g.pad_begin[2] + g.pad_end[2],
                              (g.out[2] - 1) * g.stride[2] + (g.kernel[2] - 1) * g.dilation[2] + 1);
    a_.taps = g.kernel[1] * g.kernel[2];
    for (int64_t r = 0; r < g.kernel[1]; ++r) {
      for (int64_t t = 0; t < g.kernel[2]; ++t) {
        a_.offsets[r * g.kernel[2] + t] = (r * g.dilation[1] * a_.stage_width + t * g.dilation[2]) * vl_;
      }
    }
    ClampBounds(act, &a_.lo, &a_.hi);
    groups_ = (g.c + vl_ - 1) / vl_;
    if (constant_weights != nullptr) packed_weights_ = PackWeights(constant_weights);
  }

  void Run(const float* x, const float* w, const float* bias, float* y, ThreadPool& pool) const override {
    std::vector<float> runtime_weights;
    const float* weights = packed_weights_.data();
    if (packed_weights_.empty()) {
      runtime_weights = PackWeights(w);
      weights = runtime_weights.data();
    }
    std::vector<float> packed_bias(static_cast<size_t>(groups_ * vl_), 0.0f);
    if (bias != nullptr) std::copy(bias, bias + g_.c, packed_bias.begin());
    const int64_t in_size = g_.in_size(), out_size = g_.out_size();
    const size_t in_floats = static_cast<size_t>(in_size * vl_);
    const size_t stage_floats = static_cast<size_t>(stage_rows_ * a_.stage_width * vl_);
    const size_t out_floats = static_cast<size_t>(out_size * vl_);
    // Jobs are (image, channel group).
    auto jobs = [&](int64_t begin, int64_t end) {
      float* in_buf = Scratch(kSlotSrc, in_floats);
      float* stage = Scratch(kSlotCol, stage_floats);
      float* out_buf = Scratch(kSlotDst, out_floats);
      // The staging image's borders stay zero: only the input's footprint is
      // rewritten per group.
      std::fill(stage, stage + stage_floats, 0.0f);
      for (int64_t job = begin; job < end; ++job) {
        const int64_t n = job / groups_, grp = job % groups_;
        const int64_t c0 = grp * vl_, valid = std::min<int64_t>(vl_, g_.c - c0);
        const float* xg = x + (n * g_.c + c0) * in_size;
        float* yg = y + (n * g_.c + c0) * out_size;
        if (job + 1 < end) {
          // The next group's planes are contiguous but each is only a few
          // cache lines long, too short for the hardware prefetcher.
          const int64_t next_c0 = ((job + 1) % groups_) * vl_;
          const char* next = reinterpret_cast<const char*>(x + ((job + 1) / groups_ * g_.c + next_c0) * in_size);
          const int64_t bytes = std::min<int64_t>(vl_, g_.c - next_c0) * in_size * 4;
          for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(next + off);
        }
        ConvertLayout<true>(const_cast<float*>(xg), in_buf, valid, in_size, vl_);
        for (int64_t h = 0; h < a_.h; ++h) {
          std::memcpy(stage + ((h + a_.pad_top) * a_.stage_width + a_.pad_left) * vl_, in_buf + h * a_.w * vl_,
                      static_cast<size_t>(a_.w * vl_) * sizeof(float));
        }
        compute_fn_(a_, stage, weights + grp * a_.taps * vl_, packed_bias.data() + c0, out_buf);
        ConvertLayout<false>(yg, out_buf, valid, out_size, vl_);
        if (!IsClamp(act_)) act_.Apply(yg, valid * out_size);
      }
    };
    const int64_t count = g_.n * groups_;
    if (UsefulThreads(pool.num_threads(), g_.n * g_.c * out_size * a_.taps) > 1 && count > 1) {
      pool.ParallelFor(count, 1, jobs);
    } else {
      jobs(0, count);
    }
  }

 private:
  // [C][taps] as [C/VL][taps][VL], zero past C.
  std::vector<float> PackWeights(const float* w) const {
    std::vector<float> packed(static_cast<size_t>(groups_ * a_.taps * vl_), 0.0f);
    for (int64_t c = 0; c < g_.c; ++c) {
      for (int64_t t = 0; t < a_.taps; ++t) {
        packed[static_cast<size_t>(((c / vl_) * a_.taps + t) * vl_ + c % vl_)] = w[c * a_.taps + t];
      }
    }
    return packed;
  }

  ConvGeometry g_;
  Activation act_;
  DepthwiseArgs a_{};
  int64_t vl_ = 16, groups_ = 0, stage_rows_ = 0;
  std::vector<float> packed_weights_;
  void (*compute_fn_)(const DepthwiseArgs&, const float*, const float*, const float*, float*) = nullptr;
};

// Copies n floats with whole vectors only (overlapping the last one), so
// short rows cost a few moves instead of a library call.
template <int VL>
__attribute__((always_inline)) inline void CopyFloats(float* dst, const float* src, int64_t n) {
  if constexpr (VL >= 4) {
    typedef float Vec __attribute__((vector_size(VL * sizeof(float))));
    if (n >= VL) {
      int64_t i = 0;
      for (; i + VL < n; i += VL) {
        Vec v;
        std::memcpy(&v, src + i, sizeof(Vec));
        std::memcpy(dst + i, &v, sizeof(Vec));
      }
      Vec v;
      std::memcpy(&v, src + n - VL, sizeof(Vec));
      std::memcpy(dst + n - VL, &v, sizeof(Vec));
      return;
    }
    if constexpr (VL > 4) {
      CopyFloats<VL / 2>(dst, src, n);
      return;
    }
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

// Depthwise with unit stride along the width, straight on NCHW planes: each
// plane is staged zero-padded as one flat array of rows `wp` wide; output
// (oh, ow) is flat position oh * sh * wp + ow and tap (r, t) sits at a fixed
// offset from it, so whole vectors run across row ends (the extra columns are
// dropped when copying out). No layout conversion at all.
struct DepthwiseFlatArgs {
  int64_t h, w, pad_top, pad_left, out_h, out_w, sh, wp;
  int64_t vectors;  // flat output vectors per plane
  int64_t taps;
  int64_t offsets[kMaxDepthwiseTaps];
  float lo, hi;
};

template <int VL, int kTaps>
__attribute__((always_inline)) inline void DepthwiseFlatPlanes(const DepthwiseFlatArgs& a, const float* x,
                                                               const float* w, const float* bias, float* y,
                                                               int64_t channels, int64_t begin, int64_t end,
                                                               float* stage, float* flat_out) {
  typedef float Vec __attribute__((vector_size(VL * sizeof(float))));
  constexpr int kGroup = 8;
  const int64_t taps = kTaps > 0 ? kTaps : a.taps;
  const int64_t in_size = a.h * a.w, out_size = a.out_h * a.out_w;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t c = p % channels;
    const float* xp = x + p * in_size;
    for (int64_t ih = 0; ih < a.h; ++ih) CopyFloats<VL>(stage + (ih + a.pad_top) * a.wp + a.pad_left, xp + ih * a.w, a.w);
    const float* wc = w + c * taps;
    const float b = bias != nullptr ? bias[c] : 0.0f;
    for (int64_t v0 = 0; v0 < a.vectors; v0 += kGroup) {
      Vec acc[kGroup];
      for (int j = 0; j < kGroup; ++j) acc[j] = Vec{} + b;
      for (int64_t t = 0; t < taps; ++t) {
        const float* base = stage + v0 * VL + a.offsets[t];
        const float wv = wc[t];
        for (int j = 0; j < kGroup; ++j) {
          Vec xv;
          std::memcpy(&xv, base + j * VL, sizeof(Vec));
          acc[j] += xv * wv;
        }
      }
      for (int j = 0; j < kGroup; ++j) {
        Vec v = acc[j];
        v = v < a.lo ? Vec{} + a.lo : v;
        v = v > a.hi ? Vec{} + a.hi : v;
        std::memcpy(flat_out + (v0 + j) * VL, &v, sizeof(Vec));
      }
    }
    float* yp = y + p * out_size;
    for (int64_t oh = 0; oh < a.out_h; ++oh) CopyFloats<VL>(yp + oh * a.out_w, flat_out + oh * a.sh * a.wp, a.out_w);
  }
}

__attribute__((target("avx512f"))) void DepthwiseFlatPlanes16(const DepthwiseFlatArgs& a, const float* x,
                                                              const float* w, const float* bias, float* y,
                                                              int64_t channels, int64_t begin, int64_t end,
                                                              float* stage, float* flat_out) {
  if (a.taps == 9) {
    DepthwiseFlatPlanes<16, 9>(a, x, w, bias, y, channels, begin, end, stage, flat_out);
  } else {
    DepthwiseFlatPlanes<16, 0>(a, x, w, bias, y, channels, begin, end, stage, flat_out);
  }
}
__attribute__((target("avx2,fma"))) void DepthwiseFlatPlanes8(const DepthwiseFlatArgs& a, const float* x,
                                                              const float* w, const float* bias, float* y,
                                                              int64_t channels, int64_t begin, int64_t end,
                                                              float* stage, float* flat_out) {
  if (a.taps == 9) {
    DepthwiseFlatPlanes<8, 9>(a, x, w, bias, y, channels, begin, end, stage, flat_out);
  } else {
    DepthwiseFlatPlanes<8, 0>(a, x, w, bias, y, channels, begin, end, stage, flat_out);
  }
}

// Runs `planes` over every (image, channel) plane of a depthwise layer,
// split across threads in chunks of about 16 Ki input floats when the work
// is worth it.
template <typename Planes>
void ForEachPlane(const ConvGeometry& g, int64_t taps, ThreadPool& pool, const Planes& planes) {
  const int64_t count = g.n * g.c;
  const int64_t grain = std::max<int64_t>(1, (16 << 10) / std::max<int64_t>(g.in_size(), 1));
  if (UsefulThreads(pool.num_threads(), count * g.out_size() * taps) > 1 && count > grain) {
    pool.ParallelFor(count, grain, planes);
  } else {
    planes(0, count);
  }
}

class DepthwiseFlatPlan final : public ConvPlan {
 public:
  static bool Suits(const ConvGeometry& g) {
    return VectorWidth() >= 8 && g.group == g.c && g.m == g.c && g.in[0] == 1 && g.kernel[0] == 1 &&
           g.stride[2] == 1 && g.kernel[1] * g.kernel[2] <= kMaxDepthwiseTaps;
  }

  DepthwiseFlatPlan(const ConvGeometry& g, const Activation& act) : g_(g), act_(act) {
    vl_ = VectorWidth() >= 16 ? 16 : 8;
    fn_ = vl_ == 16 ? DepthwiseFlatPlanes16 : DepthwiseFlatPlanes8;
    a_.h = g.in[1];
    a_.w = g.in[2];
    a_.pad_top = g.pad_begin[1];
    a_.pad_left = g.pad_begin[2];
    a_.out_h = g.out[1];
    a_.out_w = g.out[2];
    a_.sh = g.stride[1];
    a_.wp = std::max(g.in[2] + g.pad_begin[2] + g.pad_end[2], g.out[2] + (g.kernel[2] - 1) * g.dilation[2]);
    rows_ = std::max(g.in[1] + g.pad_begin[1] + g.pad_end[1],
                     (g.out[1] - 1) * g.stride[1] + (g.kernel[1] - 1) * g.dilation[1] + 1);
    a_.taps = g.kernel[1] * g.kernel[2];
    for (int64_t r = 0; r < g.kernel[1]; ++r) {
      for (int64_t t = 0; t < g.kernel[2]; ++t) {
        a_.offsets[r * g.kernel[2] + t] = r * g.dilation[1] * a_.wp + t * g.dilation[2];
      }
    }
    // Flat positions up to the last output row's end, in groups of 8 vectors.
    const int64_t positions = (g.out[1] - 1) * g.stride[1] * a_.wp + g.out[2];
    a_.vectors = ((positions + vl_ - 1) / vl_ + 7) / 8 * 8;
    ClampBounds(act, &a_.lo, &a_.hi);
  }

  void Run(const float* x, const float* w, const float* bias, float* y, ThreadPool& pool) const override {
    // Reads reach the last computed vector plus the largest tap offset.
    const size_t stage_floats =
        static_cast<size_t>(std::max(rows_ * a_.wp, a_.vectors * vl_ + a_.offsets[a_.taps - 1]) + vl_);
    const size_t flat_floats = static_cast<size_t>(a_.vectors * vl_);
    const int64_t out_size = g_.out_size();
    auto planes = [&](int64_t begin, int64_t end) {
      float* stage = Scratch(kSlotSrc, stage_floats + flat_floats);
      // Only the input's footprint is rewritten per plane: the rest stays 0.
      std::fill(stage, stage + stage_floats, 0.0f);
      fn_(a_, x, w, bias, y, g_.c, begin, end, stage, stage + stage_floats);
      if (!IsClamp(act_)) act_.Apply(y + begin * out_size, (end - begin) * out_size);
    };
    ForEachPlane(g_, a_.taps, pool, planes);
  }

 private:
  ConvGeometry g_;
  Activation act_;
  DepthwiseFlatArgs a_{};
  int64_t vl_ = 16, rows_ = 0;
  void (*fn_)(const DepthwiseFlatArgs&, const float*, const float*, const float*, float*, int64_t, int64_t, int64_t,
              float*, float*) = nullptr;
};

// Depthwise on NCHW planes with AVX-512 vectors running along the output
// plane as stored (row after row), so the result is written in place with no
// staging or layout conversion. Tap (r, t) of output position p reads source
// position p + di * out_w + dj of one stride-phase plane; the lanes whose
// source pixel is padding, or lies in the neighbouring row, are masked off
// (masked loads do not fault, so reads may run past either end of a plane).
// Unit stride reads the input plane itself when its width is the output
// width; otherwise each plane is first split into stride-phase planes (input
// pixel (i * sh + rp, j * sw + cp) goes to phase plane (rp, cp) at (i, j))
// with rows out_w apart.
struct DepthwiseMaskedArgs {
  int64_t h, w, out_h, out_w, sh, sw;
  int64_t phase_size;  // floats per phase plane; 0 when reading the input directly
  int64_t vectors;     // output vectors per plane
  int64_t taps;
  int64_t offsets[kMaxDepthwiseTaps];
  const uint16_t* masks;  // [vectors][taps]: lanes with a real source pixel
  float lo, hi;
};

constexpr int64_t kMaskedGroup = 4;
constexpr int64_t kMaskedPrefetchPlanes = 2;

// Input column j * 2 + cp goes to phase plane cp at column j: one masked
// load pair and two cross-lane permutes per 32 input columns.
__attribute__((target("avx512f"))) void StagePhasePlanes16(const DepthwiseMaskedArgs& a, const float* x, float* stage) {
  if (a.sw != 2) {
    for (int64_t ih = 0; ih < a.h; ++ih) {
      for (int64_t iw = 0; iw < a.w; ++iw) {
        const int64_t phase = (ih % a.sh) * a.sw + iw % a.sw;
        stage[phase * a.phase_size + (ih / a.sh) * a.out_w + iw / a.sw] = x[ih * a.w + iw];
      }
    }
    return;
  }
  const __m512i even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd_idx = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t ih = 0; ih < a.h; ++ih) {
    float* even = stage + (ih % a.sh) * 2 * a.phase_size + (ih / a.sh) * a.out_w;
    float* odd = even + a.phase_size;
    const float* row = x + ih * a.w;
    for (int64_t c0 = 0; c0 < a.w; c0 += 32) {
      const int64_t n = std::min<int64_t>(32, a.w - c0);
      const __mmask16 lo = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
      const __mmask16 hi = n > 16 ? static_cast<__mmask16>((1u << (n - 16)) - 1) : 0;
      const __m512 first = _mm512_maskz_loadu_ps(lo, row + c0);
      const __m512 second = _mm512_maskz_loadu_ps(hi, row + c0 + 16);
      _mm512_mask_storeu_ps(even + c0 / 2, static_cast<__mmask16>((1u << ((n + 1) / 2)) - 1),
                            _mm512_permutex2var_ps(first, even_idx, second));
      _mm512_mask_storeu_ps(odd + c0 / 2, static_cast<__mmask16>((1u << (n / 2)) - 1),
                            _mm512_permutex2var_ps(first, odd_idx, second));
    }
  }
}

// kGroup output vectors from v0 on, independent accumulators so that the
// tap loop is not one long chain of dependent multiply-adds.
template <int kTaps, int kGroup>
__attribute__((target("avx512f"), always_inline)) inline void DepthwiseMaskedBlock(const DepthwiseMaskedArgs& a,
                                                                                   const float* src, const float* wc,
                                                                                   __m512 b, __m512 lo, __m512 hi,
                                                                                   float* yp, int64_t out_size,
                                                                                   int64_t v0) {
  const int64_t taps = kTaps > 0 ? kTaps : a.taps;
  __m512 acc[kGroup];
  for (int j = 0; j < kGroup; ++j) acc[j] = b;
  const uint16_t* m = a.masks + v0 * taps;
  for (int64_t t = 0; t < taps; ++t) {
    const __m512 wt = _mm512_set1_ps(wc[t]);
    const float* s = src + v0 * 16 + a.offsets[t];
    for (int j = 0; j < kGroup; ++j) {
      acc[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m[j * taps + t], s + j * 16), wt, acc[j]);
    }
  }
  for (int j = 0; j < kGroup; ++j) {
    // maskz forms: the unmasked ones trip GCC 12's maybe-uninitialized.
    const __m512 v = _mm512_maskz_min_ps(0xFFFF, _mm512_maskz_max_ps(0xFFFF, acc[j], lo), hi);
    const int64_t left = out_size - (v0 + j) * 16;
    if (left >= 16) {
      _mm512_storeu_ps(yp + (v0 + j) * 16, v);
    } else {
      _mm512_mask_storeu_ps(yp + (v0 + j) * 16, static_cast<__mmask16>((1u << left) - 1), v);
    }
  }
}

template <int kTaps>
__attribute__((target("avx512f"), always_inline)) inline void DepthwiseMaskedPlanesT(const DepthwiseMaskedArgs& a,
                                                                                     const float* x, const float* w,
                                                                                     const float* bias, float* y,
                                                                                     int64_t channels, int64_t begin,
                                                                                     int64_t end, float* stage) {
  const int64_t taps = kTaps > 0 ? kTaps : a.taps;
  const int64_t in_size = a.h * a.w, out_size = a.out_h * a.out_w;
  const __m512 lo = _mm512_set1_ps(a.lo), hi = _mm512_set1_ps(a.hi);
  for (int64_t p = begin; p < end; ++p) {
    const int64_t c = p % channels;
    const float* src = x + p * in_size;
    if (p + kMaskedPrefetchPlanes < end) {
      // Planes are a few cache lines each, too short for the hardware
      // prefetcher to ramp up on.
      const char* next = reinterpret_cast<const char*>(src + kMaskedPrefetchPlanes * in_size);
      for (int64_t off = 0; off < in_size * 4; off += 64) __builtin_prefetch(next + off);
    }
    if (a.phase_size > 0) {
      StagePhasePlanes16(a, src, stage);
      src = stage;
    }
    const float* wc = w + c * taps;
    const __m512 b = _mm512_set1_ps(bias != nullptr ? bias[c] : 0.0f);
    float* yp = y + p * out_size;
    int64_t v0 = 0;
    for (; v0 + kMaskedGroup <= a.vectors; v0 += kMaskedGroup) {
      DepthwiseMaskedBlock<kTaps, kMaskedGroup>(a, src, wc, b, lo, hi, yp, out_size, v0);
    }
    for (; v0 < a.vectors; ++v0) DepthwiseMaskedBlock<kTaps, 1>(a, src, wc, b, lo, hi, yp, out_size, v0);
  }
}

__attribute__((target("avx512f"))) void DepthwiseMaskedPlanes(const DepthwiseMaskedArgs& a, const float* x,
                                                              const float* w, const float* bias, float* y,
                                                              int64_t channels, int64_t begin, int64_t end,
                                                              float* stage) {
  if (a.taps == 9) {
    DepthwiseMaskedPlanesT<9>(a, x, w, bias, y, channels, begin, end, stage);
  } else {
    DepthwiseMaskedPlanesT<0>(a, x, w, bias, y, channels, begin, end, stage);
  }
}

class DepthwiseMaskedPlan final : public ConvPlan {
 public:
  // Phase planes keep the output's row pitch, so every phase's columns must
  // fit in an output row; unit stride reads the input in place only when its
  // rows are output rows.
  static bool Suits(const ConvGeometry& g) {
    if (VectorWidth() < 16 || g.group != g.c || g.m != g.c || g.in[0] != 1 || g.kernel[0] != 1 ||
        g.kernel[1] * g.kernel[2] > kMaxDepthwiseTaps) {
      return false;
    }
    return (g.in[2] + g.stride[2] - 1) / g.stride[2] <= g.out[2];
  }

  DepthwiseMaskedPlan(const ConvGeometry& g, const Activation& act) : g_(g), act_(act) {
    a_.h = g.in[1];
    a_.w = g.in[2];
    a_.out_h = g.out[1];
    a_.out_w = g.out[2];
    a_.sh = g.stride[1];
    a_.sw = g.stride[2];
    const bool in_place = a_.sh == 1 && a_.sw == 1 && a_.w == a_.out_w;
    a_.phase_size = in_place ? 0 : (a_.h + a_.sh - 1) / a_.sh * a_.out_w;
    a_.taps = g.kernel[1] * g.kernel[2];
    const int64_t out_size = g.out_size();
    a_.vectors = (out_size + 15) / 16;
    masks_.assign(static_cast<size_t>(a_.vectors * a_.taps), 0);
    for (int64_t r = 0; r < g.kernel[1]; ++r) {
      for (int64_t t = 0; t < g.kernel[2]; ++t) {
        const int64_t tap = r * g.kernel[2] + t;
        const int64_t ir = r * g.dilation[1] - g.pad_begin[1], ic = t * g.dilation[2] - g.pad_begin[2];
        const int64_t rp = (ir % a_.sh + a_.sh) % a_.sh, cp = (ic % a_.sw + a_.sw) % a_.sw;
        const int64_t di = (ir - rp) / a_.sh, dj = (ic - cp) / a_.sw;
        // Rows and columns of this phase plane that hold input pixels.
        const int64_t rows = (a_.h - rp + a_.sh - 1) / a_.sh, cols = (a_.w - cp + a_.sw - 1) / a_.sw;
        a_.offsets[tap] = (rp * a_.sw + cp) * a_.phase_size + di * a_.out_w + dj;
        for (int64_t pos = 0; pos < out_size; ++pos) {
          const int64_t i = pos / a_.out_w + di, j = pos % a_.out_w + dj;
          if (i >= 0 && i < rows && j >= 0 && j < cols) {
            masks_[static_cast<size_t>((pos / 16) * a_.taps + tap)] |= static_cast<uint16_t>(1u << (pos % 16));
          }
        }
      }
    }
    a_.masks = masks_.data();
    ClampBounds(act, &a_.lo, &a_.hi);
  }

  void Run(const float* x, const float* w, const float* bias, float* y, ThreadPool& pool) const override {
    const int64_t out_size = g_.out_size();
    auto planes = [&](int64_t begin, int64_t end) {
      float* stage =
          a_.phase_size > 0 ? Scratch(kSlotSrc, static_cast<size_t>(a_.phase_size * a_.sh * a_.sw)) : nullptr;
      DepthwiseMaskedPlanes(a_, x, w, bias, y, g_.c, begin, end, stage);
      if (!IsClamp(act_)) act_.Apply(y + begin * out_size, (end - begin) * out_size);
    };
    ForEachPlane(g_, a_.taps, pool, planes);
  }

 private:
  ConvGeometry g_;
  Activation act_;
  DepthwiseMaskedArgs a_{};
  std::vector<uint16_t> masks_;
};

// Any geometry: per image and group, im2col then W_g [Mg, Cg*K] x col.
class GemmConvPlan final : public ConvPlan {
 public:
  GemmConvPlan(const ConvGeometry& g, const Activation& act) : g_(g), act_(act) {}

  void Run(const float* x, const float* w, const float* bias, float* y, ThreadPool& pool) const override {
    const ConvGeometry& g = g_;
    const int64_t in_size = g.in_size(), out_size = g.out_size(), k = g.kernel_size();
    const bool direct = g.pointwise();
    MaybeParallel(pool, g.n * g.group, g.n * g.m * out_size * g.cg * k, [&](int64_t job) {
      const int64_t b = job / g.group, grp = job % g.group;
      const float* xg = x + (b * g.c + grp * g.cg) * in_size;
      float* yg = y + (b * g.m + grp * g.mg) * out_size;
      const float* col = xg;
      if (!direct) {
        float* buffer = Scratch(kSlotCol, static_cast<size_t>(g.cg * k * out_size));
        Im2Col(xg, g.cg, g, buffer);
        col = buffer;
      }
      float beta = 0.0f;
      if (bias != nullptr) {
        for (int64_t oc = 0; oc < g.mg; ++oc) {
          std::fill(yg + oc * out_size, yg + (oc + 1) * out_size, bias[grp * g.mg + oc]);
        }
        beta = 1.0f;
      }
      dnnl_sgemm('N', 'N', g.mg, out_size, g.cg * k, 1.0f, w + grp * g.mg * g.cg * k, g.cg * k, col, out_size, beta,
                 yg, out_size);
      act_.Apply(yg, g.mg * out_size);
    });
  }

 private:
  ConvGeometry g_;
  Activation act_;
};

// ---------------------------------------------------------------------------
// Conv kernel
// ---------------------------------------------------------------------------

class ConvKernel final : public Kernel {
 public:
  ConvKernel(const KernelInit& init, ConvAttributes attrs) : node_(init.node), attrs_(std::move(attrs)) {
    // QUANTD_CONV_ALGO=gemm|dnnl|masked_depthwise pins one implementation
    // (default: chosen per shape), to compare them and to test the paths the
    // per-shape choice would shadow; masked_depthwise covers the depthwise
    // shapes it suits and leaves the rest to the default choice.
    const char* algo = std::getenv("QUANTD_CONV_ALGO");
    const std::string name = algo != nullptr ? algo : "";
    algo_ = name == "gemm"               ? Algo::kGemm
            : name == "dnnl"             ? Algo::kDnnl
            : name == "masked_depthwise" ? Algo::kMaskedDepthwise
                                         : Algo::kAuto;
    if (auto it = init.constant_inputs.find(1); it != init.constant_inputs.end() && it->second != nullptr &&
                                                it->second->dtype() == DataType::kFloat) {
      weights_ = *it->second;
    }
  }

  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    const Tensor* w = ctx.input(1);
    const Tensor* b = ctx.input(2);
    if (x == nullptr || w == nullptr) return Invalid(node_, "X and W are required");
    if (ctx.input(3) != nullptr) {
      return Status(StatusCode::kUnimplemented, "RUNTIME_INVALID_NODE", "the Z (sum) input is not supported");
    }
    if (x->dtype() != DataType::kFloat || w->dtype() != DataType::kFloat ||
        (b != nullptr && b->dtype() != DataType::kFloat)) {
      return UnsupportedType("only float32 is supported, got X " + ToString(x->dtype()) + ", W " +
                             ToString(w->dtype()));
    }
    QUANTD_ASSIGN_OR_RETURN(ConvGeometry g, ResolveConv(node_, attrs_, x->shape(), w->shape()));
    if (b != nullptr && b->size() != g.m) {
      return Invalid(node_, "B has " + std::to_string(b->size()) + " values, expected " + std::to_string(g.m));
    }
    Tensor& y = ctx.output(0);
    y = Tensor(DataType::kFloat, OutputShape(g));
    if (y.size() == 0) return Status::Ok();
    const bool constant_w = weights_.defined() && w->SharesBufferWith(weights_) && w->raw() == weights_.raw();
    std::shared_ptr<const ConvPlan> plan = GetPlan(g, b != nullptr, constant_w, ctx.threads().num_threads());
    plan->Run(x->data<float>(), w->data<float>(), b != nullptr ? b->data<float>() : nullptr, y.data<float>(),
              ctx.threads());
    return Status::Ok();
  }

  void Prepare(const std::vector<const Shape*>& input_shapes, int num_threads) const override {
    if (input_shapes.size() < 2 || input_shapes[0] == nullptr || input_shapes[1] == nullptr) return;
    auto g = ResolveConv(node_, attrs_, *input_shapes[0], *input_shapes[1]);
    if (!g.ok() || NumElements(OutputShape(*g)) == 0) return;
    const bool has_bias = node_.input_size() > 2 && !node_.input(2).empty();
    // Weights given at load time are the ones every run passes.
    (void)GetPlan(*g, has_bias, weights_.defined(), num_threads);
  }

 private:
  std::shared_ptr<const ConvPlan> GetPlan(const ConvGeometry& g, bool has_bias, bool constant_w, int threads) const {
    Shape key = {g.n, g.c, g.m, has_bias, constant_w, threads};
    key.insert(key.end(), g.in.begin(), g.in.end());
    key.insert(key.end(), g.kernel.begin(), g.kernel.end());
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    std::shared_ptr<const ConvPlan> plan;
    const float* constant = constant_w ? weights_.data<float>() : nullptr;
    if (algo_ == Algo::kMaskedDepthwise && DepthwiseMaskedPlan::Suits(g)) {
      plan = std::make_shared<DepthwiseMaskedPlan>(g, attrs_.activation);
    } else if (algo_ == Algo::kAuto || algo_ == Algo::kMaskedDepthwise) {
      // Small planes (7x7) waste vector lanes along the width in the NCHW
      // kernels; oneDNN's channel-blocked kernels do better there even with
      // the layout conversions (measured on the MobileNet layers).
      const bool small_plane = g.out_size() < 64 || g.out_size() < 4 * VectorWidth();
      if (PointwiseConvPlan::Suits(g) && !small_plane) {
        plan = std::make_shared<PointwiseConvPlan>(g, attrs_.activation, constant);
      } else if (DirectConvPlan::Suits(g)) {
        plan = std::make_shared<DirectConvPlan>(g, attrs_.activation, constant);
      } else if (DepthwiseFlatPlan::Suits(g) && g.out[2] >= VectorWidth() * 3 / 2) {
        // Wide rows vectorise well as they are: no layout conversion.
        plan = std::make_shared<DepthwiseFlatPlan>(g, attrs_.activation);
      } else if (DepthwiseMaskedPlan::Suits(g) && (g.stride[1] * g.stride[2] == 1 || !small_plane)) {
        // Measured on the MobileNet layers (batch 32): ahead of the blocked
        // plan and oneDNN for unit stride at 14x14 and 7x7 and for stride 2
        // at 28x28; oneDNN stays ahead for stride 2 onto 7x7, where staging
        // the phase planes costs more than the converted layout.
        plan = std::make_shared<DepthwiseMaskedPlan>(g, attrs_.activation);
      } else if (DepthwiseConvPlan::Suits(g) && !small_plane) {
        plan = std::make_shared<DepthwiseConvPlan>(g, attrs_.activation, constant);
      }
    }
    if (algo_ != Algo::kGemm && plan == nullptr) {
      if (auto larger = DnnlPlanForLargerBatch(key)) {
        plan = std::make_shared<RebatchedDnnlPlan>(std::move(larger), g.n);
      } else {
        plan = DnnlConvPlan::Create(g, has_bias, attrs_.activation, constant_w ? weights_.data<float>() : nullptr,
                                    threads);
      }
    }
    if (plan == nullptr) plan = std::make_shared<GemmConvPlan>(g, attrs_.activation);
    plans_.emplace(key, plan);
    return plan;
  }

  // A oneDNN plan that differs from `key` only in a larger batch (key[0])
  // and can run smaller ones; nullptr if there is none. Caller holds mutex_.
  std::shared_ptr<const DnnlConvPlan> DnnlPlanForLargerBatch(const Shape& key) const {
    for (const auto& [other, plan] : plans_) {
      if (other[0] <= key[0] || !std::equal(other.begin() + 1, other.end(), key.begin() + 1, key.end())) continue;
      auto dnnl_plan = std::dynamic_pointer_cast<const DnnlConvPlan>(plan);
      if (dnnl_plan != nullptr && dnnl_plan->RunsOtherBatches()) return dnnl_plan;
    }
    return nullptr;
  }

  const onnx::NodeProto node_;  // a copy: the graph may not outlive the kernel
  ConvAttributes attrs_;
  enum class Algo { kAuto, kDnnl, kGemm, kMaskedDepthwise } algo_ = Algo::kAuto;
  Tensor weights_;
  mutable std::mutex mutex_;
  mutable std::map<Shape, std::shared_ptr<const ConvPlan>> plans_;
};

// ---------------------------------------------------------------------------
// ConvTranspose: per image and group, col = W_g^T x X_g, then col2im.
// ---------------------------------------------------------------------------

StatusOr<ConvGeometry> ResolveConvTranspose(const onnx::NodeProto& node, const ConvAttributes& a, const Shape& x,
                                            const Shape& w) {
  ConvGeometry g;
  QUANTD_RETURN_IF_ERROR(FillSpatial(node, a, x, w, &g));
  g.n = x[0];
  g.c = x[1];
  g.group = a.group;
  if (g.group < 1 || g.c % g.group != 0 || w[0] != g.c) {
    return Invalid(node, "X " + ShapeToString(x) + ", W " + ShapeToString(w) + " and group " +
                             std::to_string(g.group) + " do not fit together");
  }
  g.cg = g.c / g.group;
  g.mg = w[1];
  g.m = g.mg * g.group;
  const int k = g.rank;
  const size_t ku = static_cast<size_t>(k);
  std::vector<int64_t> out_pad = a.output_padding.empty() ? std::vector<int64_t>(ku, 0) : a.output_padding;
  if (out_pad.size() != ku) return Invalid(node, "output_padding has the wrong number of values");
  std::vector<int64_t> requested;
  if (!a.output_shape.empty()) {
    if (a.output_shape.size() == ku) requested = a.output_shape;
    else if (a.output_shape.size() == ku + 2) requested.assign(a.output_shape.begin() + 2, a.output_shape.end());
    else return Invalid(node, "output_shape has the wrong number of values");
  }
  const bool same = a.auto_pad == "SAME_UPPER" || a.auto_pad == "SAME_LOWER";
  if (!same && a.auto_pad != "VALID" && a.auto_pad != "NOTSET" && !a.auto_pad.empty()) {
    return Invalid(node, "unknown auto_pad '" + a.auto_pad + "'");
  }
  for (int i = 0; i < k; ++i) {
    const size_t s = static_cast<size_t>(3 - k + i);
    const size_t iu = static_cast<size_t>(i);
    const int64_t eff = (g.kernel[s] - 1) * g.dilation[s] + 1;
    const int64_t natural = g.stride[s] * (g.in[s] - 1) + out_pad[iu] + eff;
    int64_t target = -1;
    if (!requested.empty()) target = requested[iu];
    else if (same) target = g.in[s] * g.stride[s];
    if (target >= 0) {
      // The ONNX definition halves with floor division: an output_shape past
      // the natural size (negative total) grows the end, not the start.
      const int64_t total = natural - target;
      const int64_t half = total >= 0 ? total / 2 : -((1 - total) / 2);
      if (a.auto_pad == "SAME_UPPER") {
        g.pad_begin[s] = half;
        g.pad_end[s] = total - half;
      } else {
        g.pad_begin[s] = total - half;
        g.pad_end[s] = half;
      }
      g.out[s] = target;
    } else {
      if (a.auto_pad == "VALID") g.pad_begin[s] = g.pad_end[s] = 0;
      g.out[s] = natural - g.pad_begin[s] - g.pad_end[s];
    }
    if (g.out[s] < 1) return Invalid(node, "output would be empty");
  }
  return g;
}

class ConvTransposeKernel final : public Kernel {
 public:
  ConvTransposeKernel(const KernelInit& init, ConvAttributes attrs) : node_(init.node), attrs_(std::move(attrs)) {}

  Status Compute(KernelContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    const Tensor* w = ctx.input(1);
    const Tensor* b = ctx.input(2);
    if (x == nullptr || w == nullptr) return Invalid(node_, "X and W are required");
    if (x->dtype() != DataType::kFloat || w->dtype() != DataType::kFloat ||
        (b != nullptr && b->dtype() != DataType::kFloat)) {
      return UnsupportedType("only float32 is supported, got X " + ToString(x->dtype()) + ", W " +
                             ToString(w->dtype()));
    }
    QUANTD_ASSIGN_OR_RETURN(ConvGeometry g, ResolveConvTranspose(node_, attrs_, x->shape(), w->shape()));
    if (b != nullptr && b->size() != g.m) return Invalid(node_, "B does not have one value per output channel");
    Tensor& y = ctx.output(0);
    y = Tensor(DataType::kFloat, OutputShape(g));
    if (y.size() == 0) return Status::Ok();
    const float* xd = x->data<float>();
    const float* wd = w->data<float>();
    const float* bd = b != nullptr ? b->data<float>() : nullptr;
    float* yd = y.data<float>();
    const int64_t in_size = g.in_size(), out_size = g.out_size(), k = g.kernel_size();
    MaybeParallel(ctx.threads(), g.n * g.group, g.n * g.c * in_size * g.mg * k, [&](int64_t job) {
      const int64_t n = job / g.group, grp = job % g.group;
      const float* xg = xd + (n * g.c + grp * g.cg) * in_size;
      float* yg = yd + (n * g.m + grp * g.mg) * out_size;
      float* col = Scratch(kSlotCol, static_cast<size_t>(g.mg * k * in_size));
      // W is [C, Mg, K]; for this group, rows are Cg channels of Mg*K values.
      dnnl_sgemm('T', 'N', g.mg * k, in_size, g.cg, 1.0f, wd + grp * g.cg * g.mg * k, g.mg * k, xg, in_size, 0.0f,
                 col, in_size);
      for (int64_t oc = 0; oc < g.mg; ++oc) {
        float* yc = yg + oc * out_size;
        std::fill(yc, yc + out_size, bd != nullptr ? bd[grp * g.mg + oc] : 0.0f);
        const float* colc = col + oc * k * in_size;
        for (int64_t kd = 0; kd < g.kernel[0]; ++kd) {
          for (int64_t kh = 0; kh < g.kernel[1]; ++kh) {
            for (int64_t kw = 0; kw < g.kernel[2]; ++kw) {
              const float* row = colc + ((kd * g.kernel[1] + kh) * g.kernel[2] + kw) * in_size;
              for (int64_t id = 0; id < g.in[0]; ++id) {
                const int64_t od = id * g.stride[0] - g.pad_begin[0] + kd * g.dilation[0];
                if (od < 0 || od >= g.out[0]) continue;
                for (int64_t ih = 0; ih < g.in[1]; ++ih) {
                  const int64_t oh = ih * g.stride[1] - g.pad_begin[1] + kh * g.dilation[1];
                  if (oh < 0 || oh >= g.out[1]) continue;
                  const float* src = row + (id * g.in[1] + ih) * g.in[2];
                  float* dst = yc + (od * g.out[1] + oh) * g.out[2];
                  const int64_t base = kw * g.dilation[2] - g.pad_begin[2];
                  for (int64_t iw = 0; iw < g.in[2]; ++iw) {
                    const int64_t ow = iw * g.stride[2] + base;
                    if (ow >= 0 && ow < g.out[2]) dst[ow] += src[iw];
                  }
                }
              }
            }
          }
        }
      }
    });
    return Status::Ok();
  }

 private:
  const onnx::NodeProto node_;  // a copy: the graph may not outlive the kernel
  ConvAttributes attrs_;
};

}  // namespace

void WarmUpKernelLibraries() {
  // Creating a first convolution primitive sets up oneDNN's JIT machinery
  // (about 1 ms measured), which every later primitive shares; a small one
  // does it.
  try {
    const auto f32 = memory::data_type::f32;
    const memory::desc src({1, 8, 8, 8}, f32, Tag::any), weights({8, 8, 3, 3}, f32, Tag::any);
    const memory::desc bias({8}, f32, Tag::x), dst({1, 8, 8, 8}, f32, Tag::any);
    const dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                               src, weights, bias, dst, {1, 1}, {0, 0}, {1, 1}, {1, 1});
    dnnl::convolution_forward primitive(dnnl::convolution_forward::primitive_desc(desc, CpuEngine()));
  } catch (const dnnl::error&) {
    // Only a warm-up: real layers report their own errors.
  }
}

void RegisterConvKernels(KernelRegistry& registry) {
  registry.Register("", "Conv", 1, kLatestOpset, [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
    return std::unique_ptr<Kernel>(new ConvKernel(init, ParseConvAttributes(init)));
  });
  registry.Register("com.microsoft", "FusedConv", 1, kLatestOpset,
                    [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
                      ConvAttributes attrs = ParseConvAttributes(init);
                      QUANTD_ASSIGN_OR_RETURN(attrs.activation, ParseActivation(init));
                      return std::unique_ptr<Kernel>(new ConvKernel(init, std::move(attrs)));
                    });
  registry.Register("", "ConvTranspose", 1, kLatestOpset,
                    [](const KernelInit& init) -> StatusOr<std::unique_ptr<Kernel>> {
                      return std::unique_ptr<Kernel>(new ConvTransposeKernel(init, ParseConvAttributes(init)));
                    });
}

}  // namespace quantd::runtime
