#include "worker/runtime/kernels/reference_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace quantd::runtime::reference {
namespace {

Status Bad(const std::string& message) { return InvalidArgument("KERNEL_INVALID_INPUT", message); }

std::vector<int64_t> OrDefault(const std::vector<int64_t>& values, size_t size, int64_t fallback) {
  return values.empty() ? std::vector<int64_t>(size, fallback) : values;
}

// Row-major multi-index of `flat` within `dims`.
std::vector<int64_t> Unflatten(int64_t flat, const std::vector<int64_t>& dims) {
  std::vector<int64_t> index(dims.size());
  for (size_t i = dims.size(); i-- > 0;) {
    index[i] = flat % dims[i];
    flat /= dims[i];
  }
  return index;
}

int64_t Flatten(const std::vector<int64_t>& index, const std::vector<int64_t>& dims) {
  int64_t flat = 0;
  for (size_t i = 0; i < dims.size(); ++i) flat = flat * dims[i] + index[i];
  return flat;
}

int64_t Product(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

Status CheckFloat(const Tensor& t, const char* what) {
  if (t.dtype() != DataType::kFloat) return Bad(std::string(what) + " must be float32");
  return Status::Ok();
}

// Window geometry shared by Conv and the pools: output size and begin pads.
struct Window {
  std::vector<int64_t> in, kernel, strides, dilations, pad_begin, pad_end, out;
};

Status ResolveWindow(const std::vector<int64_t>& in, const std::vector<int64_t>& kernel,
                     const std::vector<int64_t>& strides_attr, const std::vector<int64_t>& dilations_attr,
                     const std::vector<int64_t>& pads_attr, const std::string& auto_pad, bool ceil_mode,
                     Window* w) {
  const size_t k = in.size();
  w->in = in;
  w->kernel = kernel;
  w->strides = OrDefault(strides_attr, k, 1);
  w->dilations = OrDefault(dilations_attr, k, 1);
  std::vector<int64_t> pads = OrDefault(pads_attr, 2 * k, 0);
  if (w->kernel.size() != k || w->strides.size() != k || w->dilations.size() != k || pads.size() != 2 * k) {
    return Bad("attribute sizes do not match the spatial rank");
  }
  w->pad_begin.assign(pads.begin(), pads.begin() + static_cast<std::ptrdiff_t>(k));
  w->pad_end.assign(pads.begin() + static_cast<std::ptrdiff_t>(k), pads.end());
  w->out.resize(k);
  for (size_t i = 0; i < k; ++i) {
    const int64_t s = w->strides[i];
    const int64_t eff = (w->kernel[i] - 1) * w->dilations[i] + 1;
    if (s < 1 || w->dilations[i] < 1 || w->kernel[i] < 1) return Bad("non-positive kernel, stride or dilation");
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      const int64_t out = (in[i] + s - 1) / s;
      const int64_t total = std::max<int64_t>(0, (out - 1) * s + eff - in[i]);
      w->pad_begin[i] = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      w->pad_end[i] = total - w->pad_begin[i];
      w->out[i] = out;
    } else if (auto_pad == "VALID") {
      w->pad_begin[i] = w->pad_end[i] = 0;
      w->out[i] = in[i] >= eff ? (in[i] - eff) / s + 1 : 0;
    } else if (auto_pad == "NOTSET" || auto_pad.empty()) {
      const int64_t span = in[i] + w->pad_begin[i] + w->pad_end[i] - eff;
      if (span < 0) {
        w->out[i] = 0;
      } else if (ceil_mode) {
        int64_t out = (span + s - 1) / s + 1;
        // A window may not start inside the end padding.
        if ((out - 1) * s >= in[i] + w->pad_begin[i]) --out;
        w->out[i] = out;
      } else {
        w->out[i] = span / s + 1;
      }
    } else {
      return Bad("unknown auto_pad '" + auto_pad + "'");
    }
    if (w->out[i] < 1) return Bad("output would be empty");
  }
  return Status::Ok();
}

Status CheckNchw(const Tensor& x, const char* op) {
  QUANTD_RETURN_IF_ERROR(CheckFloat(x, "X"));
  if (x.rank() < 3) return Bad(std::string(op) + ": X must have rank >= 3");
  return Status::Ok();
}

}  // namespace

StatusOr<Tensor> Conv(const Tensor& x, const Tensor& w, const Tensor* bias, const ConvParams& params) {
  QUANTD_RETURN_IF_ERROR(CheckNchw(x, "Conv"));
  QUANTD_RETURN_IF_ERROR(CheckFloat(w, "W"));
  if (w.rank() != x.rank()) return Bad("Conv: W rank differs from X rank");
  const int64_t n = x.dim(0), c = x.dim(1), m = w.dim(0), g = params.group;
  if (g < 1 || c % g != 0 || m % g != 0 || w.dim(1) != c / g) return Bad("Conv: channel/group mismatch");
  if (bias != nullptr && (bias->dtype() != DataType::kFloat || bias->size() != m)) return Bad("Conv: bad bias");
  const std::vector<int64_t> in(x.shape().begin() + 2, x.shape().end());
  const std::vector<int64_t> wk(w.shape().begin() + 2, w.shape().end());
  std::vector<int64_t> kernel = params.kernel_shape.empty() ? wk : params.kernel_shape;
  if (kernel != wk) return Bad("Conv: kernel_shape differs from W");
  Window win;
  QUANTD_RETURN_IF_ERROR(ResolveWindow(in, kernel, params.strides, params.dilations, params.pads, params.auto_pad,
                                       false, &win));
  Shape out_shape = {n, m};
  out_shape.insert(out_shape.end(), win.out.begin(), win.out.end());
  Tensor y(DataType::kFloat, out_shape);
  const float* xd = x.data<float>();
  const float* wd = w.data<float>();
  float* yd = y.data<float>();
  const int64_t cg = c / g, mg = m / g;
  const int64_t in_size = Product(in), out_size = Product(win.out), k_size = Product(kernel);
  const size_t k = in.size();
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t oc = 0; oc < m; ++oc) {
      const int64_t group = oc / mg;
      for (int64_t o = 0; o < out_size; ++o) {
        const std::vector<int64_t> opos = Unflatten(o, win.out);
        double acc = bias != nullptr ? bias->data<float>()[oc] : 0.0;
        for (int64_t kk = 0; kk < k_size; ++kk) {
          const std::vector<int64_t> kpos = Unflatten(kk, kernel);
          std::vector<int64_t> ipos(k);
          bool inside = true;
          for (size_t i = 0; i < k; ++i) {
            ipos[i] = opos[i] * win.strides[i] - win.pad_begin[i] + kpos[i] * win.dilations[i];
            inside = inside && ipos[i] >= 0 && ipos[i] < in[i];
          }
          if (!inside) continue;
          const int64_t ioff = Flatten(ipos, in);
          for (int64_t ic = 0; ic < cg; ++ic) {
            const int64_t channel = group * cg + ic;
            const double xv = xd[(b * c + channel) * in_size + ioff];
            const double wv = wd[(oc * cg + ic) * k_size + kk];
            acc += xv * wv;
          }
        }
        yd[(b * m + oc) * out_size + o] = static_cast<float>(acc);
      }
    }
  }
  return y;
}

StatusOr<Tensor> ConvTranspose(const Tensor& x, const Tensor& w, const Tensor* bias, const ConvParams& params) {
  QUANTD_RETURN_IF_ERROR(CheckNchw(x, "ConvTranspose"));
  QUANTD_RETURN_IF_ERROR(CheckFloat(w, "W"));
  if (w.rank() != x.rank()) return Bad("ConvTranspose: W rank differs from X rank");
  const int64_t n = x.dim(0), c = x.dim(1), g = params.group;
  if (g < 1 || c % g != 0 || w.dim(0) != c) return Bad("ConvTranspose: channel/group mismatch");
  const int64_t mg = w.dim(1), m = mg * g, cg = c / g;
  if (bias != nullptr && (bias->dtype() != DataType::kFloat || bias->size() != m)) {
    return Bad("ConvTranspose: bad bias");
  }
  const size_t k = static_cast<size_t>(x.rank() - 2);
  const std::vector<int64_t> in(x.shape().begin() + 2, x.shape().end());
  const std::vector<int64_t> wk(w.shape().begin() + 2, w.shape().end());
  const std::vector<int64_t> kernel = params.kernel_shape.empty() ? wk : params.kernel_shape;
  if (kernel != wk) return Bad("ConvTranspose: kernel_shape differs from W");
  const std::vector<int64_t> strides = OrDefault(params.strides, k, 1);
  const std::vector<int64_t> dilations = OrDefault(params.dilations, k, 1);
  const std::vector<int64_t> out_pad = OrDefault(params.output_padding, k, 0);
  std::vector<int64_t> pads = OrDefault(params.pads, 2 * k, 0);
  if (strides.size() != k || dilations.size() != k || out_pad.size() != k || pads.size() != 2 * k) {
    return Bad("ConvTranspose: attribute sizes do not match the spatial rank");
  }
  std::vector<int64_t> requested;
  if (!params.output_shape.empty()) {
    if (params.output_shape.size() == k) {
      requested = params.output_shape;
    } else if (params.output_shape.size() == k + 2) {
      requested.assign(params.output_shape.begin() + 2, params.output_shape.end());
    } else {
      return Bad("ConvTranspose: output_shape has the wrong size");
    }
  }
  const bool same = params.auto_pad == "SAME_UPPER" || params.auto_pad == "SAME_LOWER";
  if (requested.empty() && same) {
    requested.resize(k);
    for (size_t i = 0; i < k; ++i) requested[i] = in[i] * strides[i];
  }
  std::vector<int64_t> out(k);
  for (size_t i = 0; i < k; ++i) {
    const int64_t eff = (kernel[i] - 1) * dilations[i] + 1;
    const int64_t natural = strides[i] * (in[i] - 1) + out_pad[i] + eff;
    if (!requested.empty()) {
      // total_padding / 2 in the ONNX definition is floor division.
      const int64_t total = natural - requested[i];
      const int64_t half = static_cast<int64_t>(std::floor(static_cast<double>(total) / 2.0));
      if (params.auto_pad == "SAME_UPPER") {
        pads[i] = half;
        pads[i + k] = total - half;
      } else {
        pads[i] = total - half;
        pads[i + k] = half;
      }
      out[i] = requested[i];
    } else {
      if (params.auto_pad == "VALID") pads[i] = pads[i + k] = 0;
      out[i] = natural - pads[i] - pads[i + k];
    }
    if (out[i] < 1) return Bad("ConvTranspose: output would be empty");
  }
  Shape out_shape = {n, m};
  out_shape.insert(out_shape.end(), out.begin(), out.end());
  Tensor y(DataType::kFloat, out_shape);
  const float* xd = x.data<float>();
  const float* wd = w.data<float>();
  float* yd = y.data<float>();
  const int64_t in_size = Product(in), out_size = Product(out), k_size = Product(kernel);
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t oc = 0; oc < m; ++oc) {
      const int64_t group = oc / mg, local = oc % mg;
      for (int64_t o = 0; o < out_size; ++o) {
        const std::vector<int64_t> opos = Unflatten(o, out);
        double acc = bias != nullptr ? bias->data<float>()[oc] : 0.0;
        for (int64_t kk = 0; kk < k_size; ++kk) {
          const std::vector<int64_t> kpos = Unflatten(kk, kernel);
          // Output o receives input i when o = i * stride - pad_begin + kpos * dilation.
          std::vector<int64_t> ipos(k);
          bool hit = true;
          for (size_t i = 0; i < k && hit; ++i) {
            const int64_t t = opos[i] + pads[i] - kpos[i] * dilations[i];
            hit = t >= 0 && t % strides[i] == 0 && t / strides[i] < in[i];
            ipos[i] = hit ? t / strides[i] : 0;
          }
          if (!hit) continue;
          const int64_t ioff = Flatten(ipos, in);
          for (int64_t ic = 0; ic < cg; ++ic) {
            const int64_t channel = group * cg + ic;
            acc += static_cast<double>(xd[(b * c + channel) * in_size + ioff]) *
                   static_cast<double>(wd[(channel * mg + local) * k_size + kk]);
          }
        }
        yd[(b * m + oc) * out_size + o] = static_cast<float>(acc);
      }
    }
  }
  return y;
}

StatusOr<Tensor> Gemm(const Tensor& a, const Tensor& b, const Tensor* c, bool trans_a, bool trans_b, float alpha,
                      float beta) {
  QUANTD_RETURN_IF_ERROR(CheckFloat(a, "A"));
  QUANTD_RETURN_IF_ERROR(CheckFloat(b, "B"));
  if (a.rank() != 2 || b.rank() != 2) return Bad("Gemm: A and B must be 2-D");
  const int64_t m = trans_a ? a.dim(1) : a.dim(0), k = trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0), n = trans_b ? b.dim(0) : b.dim(1);
  if (k != kb) return Bad("Gemm: inner dimensions differ");
  if (c != nullptr) {
    QUANTD_RETURN_IF_ERROR(CheckFloat(*c, "C"));
    if (c->rank() > 2) return Bad("Gemm: C has rank > 2");
    const int64_t cr = c->rank() == 2 ? c->dim(0) : 1;
    const int64_t cc = c->rank() >= 1 ? c->dim(c->rank() - 1) : 1;
    if ((cr != 1 && cr != m) || (cc != 1 && cc != n)) return Bad("Gemm: C cannot broadcast to [M, N]");
  }
  Tensor y(DataType::kFloat, {m, n});
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double av = a.data<float>()[trans_a ? p * m + i : i * k + p];
        const double bv = b.data<float>()[trans_b ? j * k + p : p * n + j];
        acc += av * bv;
      }
      double value = alpha * acc;
      if (c != nullptr) {
        const int64_t cr = c->rank() == 2 ? c->dim(0) : 1;
        const int64_t cc = c->rank() >= 1 ? c->dim(c->rank() - 1) : 1;
        value += static_cast<double>(beta) * c->data<float>()[(cr == 1 ? 0 : i) * cc + (cc == 1 ? 0 : j)];
      }
      y.data<float>()[i * n + j] = static_cast<float>(value);
    }
  }
  return y;
}

StatusOr<Tensor> MatMul(const Tensor& a, const Tensor& b) {
  QUANTD_RETURN_IF_ERROR(CheckFloat(a, "A"));
  QUANTD_RETURN_IF_ERROR(CheckFloat(b, "B"));
  if (a.rank() < 1 || b.rank() < 1) return Bad("MatMul: operands must have rank >= 1");
  Shape as = a.shape(), bs = b.shape();
  const bool a_vec = as.size() == 1, b_vec = bs.size() == 1;
  if (a_vec) as.insert(as.begin(), 1);
  if (b_vec) bs.push_back(1);
  const int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
  if (bs[bs.size() - 2] != k) return Bad("MatMul: inner dimensions differ");
  const size_t batch_rank = std::max(as.size(), bs.size()) - 2;
  std::vector<int64_t> a_batch(batch_rank, 1), b_batch(batch_rank, 1), batch(batch_rank);
  std::copy(as.begin(), as.end() - 2, a_batch.end() - static_cast<std::ptrdiff_t>(as.size() - 2));
  std::copy(bs.begin(), bs.end() - 2, b_batch.end() - static_cast<std::ptrdiff_t>(bs.size() - 2));
  for (size_t i = 0; i < batch_rank; ++i) {
    if (a_batch[i] != b_batch[i] && a_batch[i] != 1 && b_batch[i] != 1) return Bad("MatMul: batch dims differ");
    batch[i] = std::max(a_batch[i], b_batch[i]);
  }
  Shape out = batch;
  if (!a_vec) out.push_back(m);
  if (!b_vec) out.push_back(n);
  Tensor y(DataType::kFloat, out);
  const int64_t batches = Product(batch);
  for (int64_t t = 0; t < batches; ++t) {
    const std::vector<int64_t> idx = Unflatten(t, batch);
    std::vector<int64_t> ai(batch_rank), bi(batch_rank);
    for (size_t i = 0; i < batch_rank; ++i) {
      ai[i] = a_batch[i] == 1 ? 0 : idx[i];
      bi[i] = b_batch[i] == 1 ? 0 : idx[i];
    }
    const float* ap = a.data<float>() + Flatten(ai, a_batch) * m * k;
    const float* bp = b.data<float>() + Flatten(bi, b_batch) * k * n;
    float* yp = y.data<float>() + t * m * n;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t p = 0; p < k; ++p) acc += static_cast<double>(ap[i * k + p]) * bp[p * n + j];
        yp[i * n + j] = static_cast<float>(acc);
      }
    }
  }
  return y;
}

namespace {

enum class PoolKind { kMax, kAverage };

StatusOr<Tensor> Pool(const Tensor& x, const PoolParams& params, PoolKind kind, Tensor* indices) {
  QUANTD_RETURN_IF_ERROR(CheckNchw(x, "Pool"));
  const size_t k = static_cast<size_t>(x.rank() - 2);
  const std::vector<int64_t> in(x.shape().begin() + 2, x.shape().end());
  if (params.kernel_shape.size() != k) return Bad("Pool: kernel_shape must match the spatial rank");
  Window win;
  QUANTD_RETURN_IF_ERROR(ResolveWindow(in, params.kernel_shape, params.strides, params.dilations, params.pads,
                                       params.auto_pad, params.ceil_mode, &win));
  const int64_t n = x.dim(0), c = x.dim(1);
  Shape out_shape = {n, c};
  out_shape.insert(out_shape.end(), win.out.begin(), win.out.end());
  Tensor y(DataType::kFloat, out_shape);
  if (indices != nullptr) *indices = Tensor(DataType::kInt64, out_shape);
  const int64_t in_size = Product(in), out_size = Product(win.out), k_size = Product(params.kernel_shape);
  for (int64_t plane = 0; plane < n * c; ++plane) {
    const float* xp = x.data<float>() + plane * in_size;
    for (int64_t o = 0; o < out_size; ++o) {
      const std::vector<int64_t> opos = Unflatten(o, win.out);
      double acc = kind == PoolKind::kMax ? -std::numeric_limits<double>::infinity() : 0.0;
      int64_t best = -1;
      int64_t counted = 0;
      for (int64_t kk = 0; kk < k_size; ++kk) {
        const std::vector<int64_t> kpos = Unflatten(kk, params.kernel_shape);
        std::vector<int64_t> ipos(k);
        bool inside = true, in_padded = true;
        for (size_t i = 0; i < k; ++i) {
          ipos[i] = opos[i] * win.strides[i] - win.pad_begin[i] + kpos[i] * win.dilations[i];
          inside = inside && ipos[i] >= 0 && ipos[i] < in[i];
          in_padded = in_padded && ipos[i] >= -win.pad_begin[i] && ipos[i] < in[i] + win.pad_end[i];
        }
        if (kind == PoolKind::kAverage && params.count_include_pad ? in_padded : inside) ++counted;
        if (!inside) continue;
        const int64_t flat = Flatten(ipos, in);
        const double v = xp[flat];
        if (kind == PoolKind::kMax) {
          if (v > acc || best < 0) {
            acc = v;
            if (params.storage_order == 0) {
              best = flat;
            } else {
              // Column-major: the first spatial axis varies fastest.
              best = 0;
              for (size_t i = k; i-- > 0;) best = best * in[i] + ipos[i];
            }
          }
        } else {
          acc += v;
        }
      }
      float value;
      if (kind == PoolKind::kMax) {
        value = best < 0 ? -std::numeric_limits<float>::infinity() : static_cast<float>(acc);
      } else {
        value = counted > 0 ? static_cast<float>(acc / static_cast<double>(counted)) : 0.0f;
      }
      y.data<float>()[plane * out_size + o] = value;
      if (indices != nullptr) indices->data<int64_t>()[plane * out_size + o] = plane * in_size + std::max<int64_t>(best, 0);
    }
  }
  return y;
}

StatusOr<Tensor> GlobalPool(const Tensor& x, PoolKind kind) {
  QUANTD_RETURN_IF_ERROR(CheckNchw(x, "GlobalPool"));
  const int64_t planes = x.dim(0) * x.dim(1);
  const int64_t size = x.size() / std::max<int64_t>(planes, 1);
  Shape out_shape = {x.dim(0), x.dim(1)};
  out_shape.resize(static_cast<size_t>(x.rank()), 1);
  Tensor y(DataType::kFloat, out_shape);
  for (int64_t p = 0; p < planes; ++p) {
    const float* xp = x.data<float>() + p * size;
    double acc = kind == PoolKind::kMax ? -std::numeric_limits<double>::infinity() : 0.0;
    for (int64_t i = 0; i < size; ++i) acc = kind == PoolKind::kMax ? std::max<double>(acc, xp[i]) : acc + xp[i];
    y.data<float>()[p] = static_cast<float>(kind == PoolKind::kMax ? acc : acc / static_cast<double>(size));
  }
  return y;
}

}  // namespace

StatusOr<Tensor> MaxPool(const Tensor& x, const PoolParams& params, Tensor* indices) {
  return Pool(x, params, PoolKind::kMax, indices);
}
StatusOr<Tensor> AveragePool(const Tensor& x, const PoolParams& params) {
  return Pool(x, params, PoolKind::kAverage, nullptr);
}
StatusOr<Tensor> GlobalAveragePool(const Tensor& x) { return GlobalPool(x, PoolKind::kAverage); }
StatusOr<Tensor> GlobalMaxPool(const Tensor& x) { return GlobalPool(x, PoolKind::kMax); }

}  // namespace quantd::runtime::reference
