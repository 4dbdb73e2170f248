#include "worker/calib/observer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace quantd::calib {
namespace {

// Every calibration value passes through here, so it runs four SSE lanes
// (baseline x86-64) and stays scalar elsewhere.
void MinMax(const float* data, int64_t count, float& lo, float& hi) {
  float mn = std::numeric_limits<float>::infinity(), mx = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
#if defined(__SSE2__)
  __m128 vmin = _mm_set1_ps(mn), vmax = _mm_set1_ps(mx);
  for (; i + 4 <= count; i += 4) {
    __m128 v = _mm_loadu_ps(data + i);
    vmin = _mm_min_ps(vmin, v);
    vmax = _mm_max_ps(vmax, v);
  }
  alignas(16) float lanes_min[4], lanes_max[4];
  _mm_store_ps(lanes_min, vmin);
  _mm_store_ps(lanes_max, vmax);
  for (int k = 0; k < 4; ++k) {
    mn = std::min(mn, lanes_min[k]);
    mx = std::max(mx, lanes_max[k]);
  }
#endif
  for (; i < count; ++i) {
    float v = data[i];
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
  }
  lo = mn;
  hi = mx;
}

class MaxMinObserver final : public Observer {
 public:
  void Observe(const float* data, int64_t count) override {
    if (count <= 0) return;
    float lo, hi;
    MinMax(data, count, lo, hi);
    if (!std::isfinite(lo) || !std::isfinite(hi)) return;
    if (!seen_) {
      range_ = {lo, hi};
      seen_ = true;
    } else {
      range_.min = std::min(range_.min, lo);
      range_.max = std::max(range_.max, hi);
    }
  }
  TensorRange Range() const override { return range_; }
  TensorRange Seen() const override { return range_; }

 private:
  TensorRange range_;
  bool seen_ = false;
};

class HistogramObserver : public Observer {
 public:
  void Observe(const float* data, int64_t count) override { histogram_.Add(data, count); }
  TensorRange Seen() const override { return {histogram_.seen_min(), histogram_.seen_max()}; }

 protected:
  StreamingHistogram histogram_;
};

class RemovalOutlierObserver final : public HistogramObserver {
 public:
  TensorRange Range() const override {
    if (histogram_.empty()) return {};
    return {histogram_.Quantile(kOutlierFraction), histogram_.Quantile(1.0 - kOutlierFraction)};
  }
};

// KL keeps its own histogram of |x| over [0, max|x|]. Exact zeros (half of
// every ReLU output) are counted apart: any zero point represents them
// exactly, and as a spike in the first bin they would drag the search
// towards uselessly small thresholds.
class KlObserver final : public Observer {
 public:
  KlObserver() : magnitudes_(8192, /*from_zero=*/true) {}

  void Observe(const float* data, int64_t count) override {
    float buffer[4096];
    int64_t i = 0;
    while (i < count) {
      int filled = 0;
      for (; i < count && filled < 4096; ++i) {
        float v = data[i];
        if (!std::isfinite(v)) continue;
        if (!seen_any_) {
          min_ = max_ = v;
          seen_any_ = true;
        }
        min_ = std::min(min_, v);
        max_ = std::max(max_, v);
        if (v != 0.0f) buffer[filled++] = std::fabs(v);
      }
      magnitudes_.Add(buffer, filled);
    }
  }

  TensorRange Seen() const override { return {min_, max_}; }

  TensorRange Range() const override {
    if (!seen_any_ || magnitudes_.empty()) return Seen();
    const auto& counts = magnitudes_.counts();
    const float width = magnitudes_.hi() / static_cast<float>(counts.size());
    const bool non_negative = min_ >= 0.0f;
    // Non-negative data uses all 256 uint8 levels on one side; signed data
    // has about 128 per side.
    float threshold = KlThreshold(counts, width, non_negative ? 255 : 127);
    // A few dominant spikes (constant background regions) can pull the KL
    // optimum below real signal; never clip more than a tiny share of the
    // non-zero values.
    threshold = std::max(threshold, magnitudes_.Quantile(1.0 - kKlMaxClippedFraction));
    threshold = std::min(threshold, std::max(std::fabs(min_), std::fabs(max_)));
    return {non_negative ? 0.0f : std::max(min_, -threshold), std::min(max_, threshold)};
  }

 private:
  StreamingHistogram magnitudes_;
  float min_ = 0.0f, max_ = 0.0f;
  bool seen_any_ = false;
};

}  // namespace

void StreamingHistogram::Widen(float lo, float hi) {
  std::vector<double> old = counts_;
  const float old_lo = lo_, old_width = (hi_ - lo_) / static_cast<float>(old.size());
  lo_ = lo;
  hi_ = hi;
  std::fill(counts_.begin(), counts_.end(), 0.0);
  const float scale = static_cast<float>(counts_.size()) / (hi_ - lo_);
  for (size_t i = 0; i < old.size(); ++i) {
    if (old[i] == 0.0) continue;
    float center = old_lo + (static_cast<float>(i) + 0.5f) * old_width;
    auto bin = static_cast<int64_t>((center - lo_) * scale);
    bin = std::clamp<int64_t>(bin, 0, static_cast<int64_t>(counts_.size()) - 1);
    counts_[static_cast<size_t>(bin)] += old[i];
  }
}

void StreamingHistogram::Add(const float* data, int64_t count) {
  if (count <= 0) return;
  float lo, hi;
  MinMax(data, count, lo, hi);
  if (!std::isfinite(lo) || !std::isfinite(hi)) return;
  if (total_ == 0) {
    seen_min_ = lo;
    seen_max_ = hi;
    float pad = std::max(1e-6f, (hi - lo) * 1e-3f);
    lo_ = from_zero_ ? 0.0f : lo - pad;
    hi_ = hi + pad;
  } else {
    seen_min_ = std::min(seen_min_, lo);
    seen_max_ = std::max(seen_max_, hi);
    if (lo < lo_ || hi > hi_) {
      // Widen with headroom so a slowly growing range re-bins rarely.
      float span = std::max(hi, hi_) - std::min(lo, lo_);
      Widen(from_zero_ ? 0.0f : (lo < lo_ ? lo - 0.25f * span : lo_), hi > hi_ ? hi + 0.25f * span : hi_);
    }
  }
  const float scale = static_cast<float>(counts_.size()) / (hi_ - lo_);
  const int64_t last = static_cast<int64_t>(counts_.size()) - 1;
  for (int64_t i = 0; i < count; ++i) {
    auto bin = static_cast<int64_t>((data[i] - lo_) * scale);
    bin = bin < 0 ? 0 : (bin > last ? last : bin);
    counts_[static_cast<size_t>(bin)] += 1.0;
  }
  total_ += static_cast<double>(count);
}

float StreamingHistogram::Quantile(double fraction) const {
  if (total_ == 0) return 0.0f;
  const double target = fraction * total_;
  const float width = (hi_ - lo_) / static_cast<float>(counts_.size());
  double cumulative = 0.0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    if (cumulative + counts_[i] >= target && counts_[i] > 0) {
      double within = (target - cumulative) / counts_[i];
      float value = lo_ + (static_cast<float>(i) + static_cast<float>(within)) * width;
      return std::clamp(value, seen_min_, seen_max_);
    }
    cumulative += counts_[i];
  }
  return seen_max_;
}

float KlThreshold(const std::vector<double>& abs_histogram, float bin_width, int levels) {
  const int bins = static_cast<int>(abs_histogram.size());
  if (bins <= levels) return static_cast<float>(bins) * bin_width;
  double best_divergence = std::numeric_limits<double>::infinity();
  int best = bins;
  std::vector<double> reference, expanded;
  // Sum of counts beyond each candidate threshold, built from the top.
  std::vector<double> beyond(static_cast<size_t>(bins) + 1, 0.0);
  for (int i = bins - 1; i >= 0; --i)
    beyond[static_cast<size_t>(i)] = beyond[static_cast<size_t>(i) + 1] + abs_histogram[static_cast<size_t>(i)];
  auto divergence_at = [&](int i) {
    // P: the histogram clipped at i bins, the clipped mass in the last bin.
    reference.assign(abs_histogram.begin(), abs_histogram.begin() + i);
    reference.back() += beyond[static_cast<size_t>(i)];
    // Q: the first i bins quantized to `levels` groups, each group's mass
    // spread evenly over its non-empty bins.
    expanded.assign(static_cast<size_t>(i), 0.0);
    const double per_level = static_cast<double>(i) / levels;
    for (int level = 0; level < levels; ++level) {
      int begin = static_cast<int>(level * per_level);
      int end = level == levels - 1 ? i : static_cast<int>((level + 1) * per_level);
      double mass = 0.0;
      int nonzero = 0;
      for (int j = begin; j < end; ++j) {
        mass += abs_histogram[static_cast<size_t>(j)];
        nonzero += abs_histogram[static_cast<size_t>(j)] > 0 ? 1 : 0;
      }
      if (nonzero == 0) continue;
      for (int j = begin; j < end; ++j) {
        if (abs_histogram[static_cast<size_t>(j)] > 0) expanded[static_cast<size_t>(j)] = mass / nonzero;
      }
    }
    double p_total = 0.0, q_total = 0.0;
    for (int j = 0; j < i; ++j) {
      p_total += reference[static_cast<size_t>(j)];
      q_total += expanded[static_cast<size_t>(j)];
    }
    if (p_total <= 0.0 || q_total <= 0.0) return std::numeric_limits<double>::infinity();
    double divergence = 0.0;
    for (int j = 0; j < i; ++j) {
      double p = reference[static_cast<size_t>(j)] / p_total;
      if (p <= 0.0) continue;
      // Bins Q left empty (only possible for the clipped last bin) get a
      // small floor instead of an infinite penalty.
      double q = std::max(expanded[static_cast<size_t>(j)] / q_total, 1e-12);
      divergence += p * std::log(p / q);
    }
    return divergence;
  };
  // Coarse pass over at most ~512 candidates, then every threshold around
  // the best one: the fine histogram keeps resolution without paying for
  // an exhaustive quadratic search.
  const int stride = std::max(1, (bins - levels) / 512);
  auto consider = [&](int i) {
    double divergence = divergence_at(i);
    if (divergence < best_divergence) {
      best_divergence = divergence;
      best = i;
    }
  };
  for (int i = levels; i <= bins; i += stride) consider(i);
  consider(bins);
  const int center = best;
  for (int i = std::max(levels, center - stride); i <= std::min(bins, center + stride); ++i) consider(i);
  return static_cast<float>(best) * bin_width;
}

std::unique_ptr<Observer> MakeObserver(config::ActivationQuantMethod method) {
  switch (method) {
    case config::ActivationQuantMethod::kMaxMin: return std::make_unique<MaxMinObserver>();
    case config::ActivationQuantMethod::kKl: return std::make_unique<KlObserver>();
    case config::ActivationQuantMethod::kRemovalOutlier: return std::make_unique<RemovalOutlierObserver>();
  }
  return std::make_unique<MaxMinObserver>();
}

}  // namespace quantd::calib
