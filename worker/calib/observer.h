// Activation observers: fed every value a tensor takes over the calibration
// set, they propose the range to quantize over. Memory is fixed (a running
// min/max or a fixed-size histogram), whatever the number of samples.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/config/quant_config.h"

namespace quantd::calib {

struct TensorRange {
  float min = 0.0f;
  float max = 0.0f;
};

class Observer {
 public:
  virtual ~Observer() = default;
  virtual void Observe(const float* data, int64_t count) = 0;
  // The range to quantize over; the data's own min/max for MAX_MIN, a
  // clipped range for the others. Empty observers return {0, 0}.
  virtual TensorRange Range() const = 0;
  // The raw min and max seen, whatever the method.
  virtual TensorRange Seen() const = 0;
};

// Histogram over a range that widens as data arrives: existing counts are
// re-binned into the wider range, so one pass suffices and the bin count
// (memory) never changes.
class StreamingHistogram {
 public:
  // `from_zero`: the range always starts at 0 (for histograms of |x|).
  explicit StreamingHistogram(int bins = 8192, bool from_zero = false)
      : counts_(static_cast<size_t>(bins), 0.0), from_zero_(from_zero) {}
  void Add(const float* data, int64_t count);
  // Adds |x| of every non-zero x (for `from_zero` histograms): the KL
  // observer's input, binned in the same pass that takes the magnitudes.
  void AddMagnitudes(const float* data, int64_t count);
  // The same, for a caller that already knows the data's min and max.
  void AddMagnitudes(const float* data, int64_t count, float min, float max);
  bool empty() const { return total_ == 0; }
  float lo() const { return lo_; }
  float hi() const { return hi_; }
  float seen_min() const { return seen_min_; }
  float seen_max() const { return seen_max_; }
  double total() const { return total_; }
  const std::vector<double>& counts() const { return counts_; }
  // Value below which `fraction` of the observed values lie.
  float Quantile(double fraction) const;

 private:
  void Widen(float lo, float hi);
  // Makes [lo, hi] fit, widening with headroom; false if nothing was added
  // yet and the range was set instead (seen_* are updated either way).
  void Cover(float lo, float hi);
  // Counts each value's bin; values must be finite and inside the range
  // (clamped to the end bins otherwise).
  void Count(const float* data, int64_t count, bool magnitudes);

  std::vector<double> counts_;
  float lo_ = 0.0f, hi_ = 0.0f;
  float seen_min_ = 0.0f, seen_max_ = 0.0f;
  double total_ = 0.0;
  bool from_zero_ = false;
};

// KL (entropy) threshold search on a histogram of |x|: the clipping
// threshold whose quantized distribution loses the least information.
// `levels` is the number of quantization levels on the searched side.
float KlThreshold(const std::vector<double>& abs_histogram, float bin_width, int levels);

// The largest share of non-zero values KL may clip.
inline constexpr double kKlMaxClippedFraction = 1e-3;

// The fraction of values cut on each side by REMOVAL_OUTLIER.
inline constexpr double kOutlierFraction = 1e-4;

std::unique_ptr<Observer> MakeObserver(config::ActivationQuantMethod method);

}  // namespace quantd::calib
