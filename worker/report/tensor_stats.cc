#include "worker/report/tensor_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace quantd::report {

double Quantile(std::vector<float>& values, double q) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  const double position = std::clamp(q, 0.0, 1.0) * static_cast<double>(values.size() - 1);
  const auto below = static_cast<size_t>(std::floor(position));
  const double fraction = position - static_cast<double>(below);
  auto nth = values.begin() + static_cast<std::ptrdiff_t>(below);
  std::nth_element(values.begin(), nth, values.end());
  const double lower = *nth;
  if (fraction == 0.0 || below + 1 >= values.size()) return lower;
  // After the selection everything past `nth` is >= it, so the next rank
  // is the smallest of those.
  const double upper = *std::min_element(nth + 1, values.end());
  return lower + (upper - lower) * fraction;
}

DistributionStats ComputeDistribution(std::span<const float> values) {
  DistributionStats stats;
  stats.elements = static_cast<int64_t>(values.size());
  if (values.empty()) return stats;
  std::vector<float> sorted;
  sorted.reserve(values.size());
  double sum = 0;
  int64_t zeros = 0;
  for (float v : values) {
    if (v == 0.0f) ++zeros;
    if (std::isnan(v)) continue;
    sorted.push_back(v);
    sum += v;
  }
  stats.sparsity = static_cast<double>(zeros) / static_cast<double>(values.size());
  if (sorted.empty()) {
    stats.min = stats.q1 = stats.median = stats.q3 = stats.max = stats.mean = stats.var =
        std::numeric_limits<double>::quiet_NaN();
    return stats;
  }
  const auto n = static_cast<double>(sorted.size());
  stats.mean = sum / n;
  double squares = 0;
  for (float v : sorted) squares += (v - stats.mean) * (v - stats.mean);
  stats.var = squares / n;
  auto [lo, hi] = std::minmax_element(sorted.begin(), sorted.end());
  stats.min = *lo;
  stats.max = *hi;
  stats.q1 = Quantile(sorted, 0.25);
  stats.median = Quantile(sorted, 0.5);
  stats.q3 = Quantile(sorted, 0.75);
  return stats;
}

double CosineSimilarity(std::span<const float> a, std::span<const float> b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::quiet_NaN();
  double dot = 0, norm_a = 0, norm_b = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += static_cast<double>(a[i]) * b[i];
    norm_a += static_cast<double>(a[i]) * a[i];
    norm_b += static_cast<double>(b[i]) * b[i];
  }
  if (norm_a == 0 && norm_b == 0) return 1.0;
  if (norm_a == 0 || norm_b == 0) return 0.0;
  return dot / (std::sqrt(norm_a) * std::sqrt(norm_b));
}

double MeanRelativeError(std::span<const float> quantized, std::span<const float> reference) {
  if (quantized.size() != reference.size()) return std::numeric_limits<double>::quiet_NaN();
  double error = 0, magnitude = 0;
  for (size_t i = 0; i < reference.size(); ++i) {
    error += std::fabs(static_cast<double>(quantized[i]) - reference[i]);
    magnitude += std::fabs(static_cast<double>(reference[i]));
  }
  if (magnitude == 0) return error == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return error / magnitude;
}

double ClipFraction(std::span<const float> values, std::span<const int64_t> dims, const QuantRange& range) {
  if (values.empty() || range.scales.empty() || range.scales.size() != range.zero_points.size()) return 0.0;
  // Quantization rounds v / scale + zero_point to the nearest integer and
  // then saturates, so a value saturates only once it is more than half a
  // step beyond the last integer; this also keeps a per-channel max-abs
  // weight, whose scale float rounding may shrink a hair, unclipped.
  auto clipped_in = [&](float value, size_t channel) {
    const double scale = range.scales[channel];
    if (!(scale > 0)) return false;
    const double q = static_cast<double>(value) / scale + range.zero_points[channel];
    return q < range.qmin - 0.5 || q > range.qmax + 0.5;
  };
  int64_t clipped = 0;
  if (range.scales.size() == 1) {
    for (float v : values) clipped += clipped_in(v, 0) ? 1 : 0;
  } else {
    const int rank = static_cast<int>(dims.size());
    const int axis = range.axis < 0 ? range.axis + rank : range.axis;
    if (axis < 0 || axis >= rank || dims[static_cast<size_t>(axis)] != static_cast<int64_t>(range.scales.size())) {
      return 0.0;
    }
    int64_t inner = 1;
    for (int i = axis + 1; i < rank; ++i) inner *= dims[static_cast<size_t>(i)];
    const auto channels = static_cast<int64_t>(range.scales.size());
    for (size_t i = 0; i < values.size(); ++i) {
      clipped += clipped_in(values[i], static_cast<size_t>((static_cast<int64_t>(i) / inner) % channels)) ? 1 : 0;
    }
  }
  return static_cast<double>(clipped) / static_cast<double>(values.size());
}

Histogram MakeHistogram(double lo, double hi, int bins) {
  Histogram histogram;
  histogram.lo = lo;
  histogram.hi = hi > lo ? hi : lo + 1.0;
  histogram.counts.assign(static_cast<size_t>(std::max(bins, 1)), 0);
  return histogram;
}

void Histogram::Add(std::span<const float> values) {
  const auto bins = static_cast<double>(counts.size());
  const double width = (hi - lo) / bins;
  for (float v : values) {
    if (std::isnan(v)) continue;
    double bin = std::floor((v - lo) / width);
    ++counts[static_cast<size_t>(std::clamp(bin, 0.0, bins - 1))];
  }
}

}  // namespace quantd::report
