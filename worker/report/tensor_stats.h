// Statistics of one tensor for the quantization debug report: the data
// distribution columns of the seed's report (Min, Q1, Median, Q3, Max, Mean,
// Var, Sparsity, Clip, CosineSimilarity) and a fixed-range histogram.
//
// Definitions (the README repeats them for users):
//   quantiles  linear interpolation between closest ranks: with the n
//              values sorted ascending as x[0..n-1], quantile q is
//              x[i] + (x[i+1] - x[i]) * f where q*(n-1) = i + f (NumPy's
//              default); NaNs are left out
//   Var        population variance (divided by n)
//   Sparsity   fraction of elements that are exactly 0
//   Clip       fraction of elements that quantization saturates: x / scale
//              + zp, rounded, falls outside [qmin, qmax], i.e. x lies more
//              than half a step outside [(qmin - zp) * scale, (qmax - zp) *
//              scale]; per channel where the parameters are per channel
//   Cosine     a.b / (|a| |b|); 1 when both are all zeros, 0 when only one is
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace quantd::report {

struct DistributionStats {
  int64_t elements = 0;
  double min = 0, q1 = 0, median = 0, q3 = 0, max = 0;
  double mean = 0, var = 0;
  double sparsity = 0;
};

// Works on a copy for the quantiles (partial selection, O(n) per quantile),
// so `values` is left as it is.
DistributionStats ComputeDistribution(std::span<const float> values);

// Linear-interpolation quantile of `values`, q in [0, 1]; `values` is
// reordered. NaN when it is empty.
double Quantile(std::vector<float>& values, double q);

double CosineSimilarity(std::span<const float> a, std::span<const float> b);

// Sum |quantized - reference| / sum |reference|: the mean absolute error
// relative to the mean magnitude, which stays finite where single reference
// elements are 0. 0 when both are all zeros.
double MeanRelativeError(std::span<const float> quantized, std::span<const float> reference);

// The values a (De)QuantizeLinear pair can represent: integers in
// [qmin, qmax], per channel along `axis` when there are several scales.
struct QuantRange {
  std::vector<float> scales;
  std::vector<int32_t> zero_points;  // same length as scales
  int axis = 1;                      // negative counts from the back
  double qmin = 0, qmax = 255;
};

// Fraction of `values` (laid out with `dims`) that fall outside `range`.
// A per-channel range whose channel count does not match dims[axis] counts
// nothing as clipped.
double ClipFraction(std::span<const float> values, std::span<const int64_t> dims, const QuantRange& range);

// Counts per bin over [lo, hi]; values outside land in the first or last bin
// so later rounds can share the first round's range.
struct Histogram {
  double lo = 0, hi = 0;
  std::vector<int64_t> counts;
  void Add(std::span<const float> values);
};
Histogram MakeHistogram(double lo, double hi, int bins);

}  // namespace quantd::report
