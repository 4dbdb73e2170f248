#include "worker/quant/quant_math.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>

namespace quantd {

int QuantMax(int bits) {
  if (bits <= 1) return 1;
  return (1 << (bits - 1)) - 1;
}

double RoundHalfToEven(double x) {
  const double f = std::floor(x);
  const double diff = x - f;
  if (diff < 0.5) return f;
  if (diff > 0.5) return f + 1;
  return std::fmod(f, 2.0) == 0 ? f : f + 1;
}

StatusOr<ChannelLayout> MakeChannelLayout(std::span<const int64_t> dims, int axis) {
  const int rank = static_cast<int>(dims.size());
  if (axis < 0 || axis >= rank) {
    return InvalidArgument("QUANT_AXIS_OUT_OF_RANGE",
                           "axis " + std::to_string(axis) + " is outside a rank-" +
                               std::to_string(rank) + " tensor");
  }
  ChannelLayout l;
  for (int i = 0; i < rank; ++i) {
    if (dims[i] < 0) return InvalidArgument("QUANT_AXIS_OUT_OF_RANGE", "negative dimension");
    if (i < axis) l.outer *= dims[i];
    if (i > axis) l.inner *= dims[i];
  }
  l.channels = dims[axis];
  return l;
}

StatusOr<PerChannelQuantized> QuantizePerChannel(std::span<const float> w,
                                                 std::span<const int64_t> dims, int axis,
                                                 int bits) {
  if (bits < 1 || bits > 16) {
    return InvalidArgument("QUANT_BITS_OUT_OF_RANGE",
                           "bits must be 1..16, not " + std::to_string(bits));
  }
  QUANTD_ASSIGN_OR_RETURN(const ChannelLayout l, MakeChannelLayout(dims, axis));
  if (l.size() != static_cast<int64_t>(w.size())) {
    return InvalidArgument("QUANT_SIZE_MISMATCH",
                           std::to_string(w.size()) + " values for a tensor of " +
                               std::to_string(l.size()) + " elements");
  }
  const int64_t C = l.channels;
  std::vector<float> max_abs(C, 0.0f);
  std::vector<double> sum_abs(C, 0.0);
  for (int64_t o = 0; o < l.outer; ++o) {
    for (int64_t c = 0; c < C; ++c) {
      const float* p = w.data() + (o * C + c) * l.inner;
      for (int64_t k = 0; k < l.inner; ++k) {
        if (!std::isfinite(p[k])) {
          return InvalidArgument("WEIGHT_NOT_FINITE", "the weights contain NaN or infinity");
        }
        const float a = std::fabs(p[k]);
        max_abs[c] = std::max(max_abs[c], a);
        sum_abs[c] += a;
      }
    }
  }

  const int qmax = QuantMax(bits);
  PerChannelQuantized out;
  out.scales.resize(C);
  for (int64_t c = 0; c < C; ++c) {
    float s;
    if (bits == 1) {
      const double per_channel = static_cast<double>(l.outer * l.inner);
      s = per_channel > 0 ? static_cast<float>(sum_abs[c] / per_channel) : 0.0f;
      // An all-zero channel cannot be represented by ±1 at all; the smallest
      // normal scale keeps its error negligible.
      s = std::max(s, FLT_MIN);
    } else if (max_abs[c] == 0.0f) {
      s = 1.0f;
    } else {
      s = std::max(max_abs[c] / static_cast<float>(qmax), FLT_MIN);
    }
    out.scales[c] = s;
  }

  out.values.resize(w.size());
  for (int64_t o = 0; o < l.outer; ++o) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t base = (o * C + c) * l.inner;
      const double s = out.scales[c];
      for (int64_t k = 0; k < l.inner; ++k) {
        const float v = w[base + k];
        int q;
        if (bits == 1) {
          q = v >= 0.0f ? 1 : -1;
        } else {
          const double r = RoundHalfToEven(static_cast<double>(v) / s);
          q = static_cast<int>(std::clamp(r, -static_cast<double>(qmax),
                                          static_cast<double>(qmax)));
        }
        out.values[base + k] = static_cast<int16_t>(q);
      }
    }
  }
  return out;
}

std::vector<float> DequantizePerChannel(std::span<const int16_t> values,
                                        std::span<const float> scales,
                                        const ChannelLayout& l) {
  std::vector<float> out(values.size());
  for (int64_t o = 0; o < l.outer; ++o) {
    for (int64_t c = 0; c < l.channels; ++c) {
      const int64_t base = (o * l.channels + c) * l.inner;
      for (int64_t k = 0; k < l.inner; ++k) {
        out[base + k] = static_cast<float>(values[base + k]) * scales[c];
      }
    }
  }
  return out;
}

QuantError MeasureQuantError(std::span<const float> w, std::span<const int16_t> values,
                             std::span<const float> scales, const ChannelLayout& l) {
  double dot = 0, norm_w = 0, norm_d = 0, max_err = 0, sq_err = 0;
  for (int64_t o = 0; o < l.outer; ++o) {
    for (int64_t c = 0; c < l.channels; ++c) {
      const int64_t base = (o * l.channels + c) * l.inner;
      for (int64_t k = 0; k < l.inner; ++k) {
        const double a = w[base + k];
        // Same float product a runtime computes in DequantizeLinear.
        const double d = static_cast<float>(values[base + k]) * scales[c];
        dot += a * d;
        norm_w += a * a;
        norm_d += d * d;
        max_err = std::max(max_err, std::fabs(a - d));
        sq_err += (a - d) * (a - d);
      }
    }
  }
  QuantError e;
  e.max_abs_error = max_err;
  e.relative_error = norm_w > 0 ? std::sqrt(sq_err / norm_w) : 0.0;
  if (norm_w == 0 && norm_d == 0) {
    e.cosine_similarity = 1;
  } else if (norm_w == 0 || norm_d == 0) {
    e.cosine_similarity = 0;
  } else {
    e.cosine_similarity = dot / (std::sqrt(norm_w) * std::sqrt(norm_d));
  }
  return e;
}

std::vector<uint8_t> PackInt4(std::span<const int16_t> values) {
  std::vector<uint8_t> out((values.size() + 1) / 2, 0);
  for (size_t i = 0; i < values.size(); ++i) {
    const uint8_t nibble = static_cast<uint8_t>(values[i]) & 0x0F;
    out[i / 2] |= (i % 2 == 0) ? nibble : static_cast<uint8_t>(nibble << 4);
  }
  return out;
}

std::vector<int16_t> UnpackInt4(std::span<const uint8_t> packed, size_t count) {
  std::vector<int16_t> out(count);
  for (size_t i = 0; i < count && i / 2 < packed.size(); ++i) {
    int v = (i % 2 == 0) ? (packed[i / 2] & 0x0F) : (packed[i / 2] >> 4);
    out[i] = static_cast<int16_t>(v >= 8 ? v - 16 : v);
  }
  return out;
}

}  // namespace quantd
