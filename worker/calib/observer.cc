#include "worker/calib/observer.h"

#include <algorithm>
#include <cmath>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "worker/runtime/kernels/cpu_features.h"

namespace quantd::calib {
namespace {

#if defined(__x86_64__)
// Every calibration value passes through here. Four independent min/max
// pairs keep the loop from waiting on one compare's latency.
// (maskz forms with a full mask throughout: the plain ones trip GCC 12's
// -Wuninitialized.)
__attribute__((target("avx512f"))) void MinMaxAvx512(const float* data, int64_t count, float& lo, float& hi) {
  constexpr __mmask16 kAll = 0xFFFF;
  __m512 mn[4], mx[4];
  for (int k = 0; k < 4; ++k) {
    mn[k] = _mm512_set1_ps(std::numeric_limits<float>::infinity());
    mx[k] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  }
  int64_t i = 0;
  for (; i + 64 <= count; i += 64) {
    for (int k = 0; k < 4; ++k) {
      const __m512 v = _mm512_loadu_ps(data + i + 16 * k);
      mn[k] = _mm512_maskz_min_ps(kAll, mn[k], v);
      mx[k] = _mm512_maskz_max_ps(kAll, mx[k], v);
    }
  }
  for (; i < count; i += 16) {
    const auto mask = static_cast<__mmask16>(count - i >= 16 ? kAll : (1u << (count - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(mask, data + i);
    mn[0] = _mm512_mask_min_ps(mn[0], mask, mn[0], v);
    mx[0] = _mm512_mask_max_ps(mx[0], mask, mx[0], v);
  }
  alignas(64) float lanes_min[16], lanes_max[16];
  _mm512_store_ps(lanes_min, _mm512_maskz_min_ps(kAll, _mm512_maskz_min_ps(kAll, mn[0], mn[1]),
                                                 _mm512_maskz_min_ps(kAll, mn[2], mn[3])));
  _mm512_store_ps(lanes_max, _mm512_maskz_max_ps(kAll, _mm512_maskz_max_ps(kAll, mx[0], mx[1]),
                                                 _mm512_maskz_max_ps(kAll, mx[2], mx[3])));
  lo = *std::min_element(lanes_min, lanes_min + 16);
  hi = *std::max_element(lanes_max, lanes_max + 16);
}
#endif

void MinMaxPortable(const float* data, int64_t count, float& lo, float& hi) {
  float mn = std::numeric_limits<float>::infinity(), mx = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
#if defined(__x86_64__)
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

// The build targets baseline x86-64; wider paths are chosen at run time
// (and can be turned off with QUANTD_RUNTIME_ISA, as for the kernels).
bool UseAvx512() {
#if defined(__x86_64__)
  return runtime::VectorWidth() >= 16;
#else
  return false;
#endif
}

void MinMax(const float* data, int64_t count, float& lo, float& hi) {
#if defined(__x86_64__)
  if (UseAvx512()) return MinMaxAvx512(data, count, lo, hi);
#endif
  MinMaxPortable(data, count, lo, hi);
}

#if defined(__x86_64__)
// Bin indices of the non-zero |x| in `block` (n <= 16 * k), packed to the
// front of `index`; returns how many. Zeros are dropped in registers
// (compress) rather than counted one by one: they are half of every ReLU
// output.
__attribute__((target("avx512f"))) int64_t NonZeroMagnitudeBinsAvx512(const float* block, int64_t n, float scale,
                                                                      float last, int32_t* index) {
  constexpr __mmask16 kAll = 0xFFFF;
  const __m512 vscale = _mm512_set1_ps(scale), vlast = _mm512_set1_ps(last), zero = _mm512_setzero_ps();
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  int64_t written = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const auto lanes = static_cast<__mmask16>(n - i >= 16 ? kAll : (1u << (n - i)) - 1);
    const __m512 v =
        _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(_mm512_maskz_loadu_ps(lanes, block + i)), abs_mask));
    const __mmask16 nonzero = _mm512_mask_cmp_ps_mask(lanes, v, zero, _CMP_NEQ_OQ);
    const __m512 scaled = _mm512_maskz_min_ps(kAll, _mm512_maskz_max_ps(kAll, _mm512_mul_ps(v, vscale), zero), vlast);
    const __m512i bins = _mm512_maskz_compress_epi32(nonzero, _mm512_maskz_cvttps_epi32(kAll, scaled));
    _mm512_storeu_si512(index + written, bins);
    written += __builtin_popcount(nonzero);
  }
  return written;
}
#endif

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
  // 2048 bins (as TensorRT's entropy calibration uses) keep the counting
  // lanes inside L1 and give 8 bins per level at 255 levels.
  KlObserver() : magnitudes_(2048, /*from_zero=*/true) {}

  void Observe(const float* data, int64_t count) override {
    if (count <= 0) return;
    float lo, hi;
    MinMax(data, count, lo, hi);
    if (!std::isfinite(lo) || !std::isfinite(hi)) {
      // Rare: drop the non-finite values and observe the rest.
      std::vector<float> finite;
      finite.reserve(static_cast<size_t>(count));
      for (int64_t i = 0; i < count; ++i) {
        if (std::isfinite(data[i])) finite.push_back(data[i]);
      }
      if (!finite.empty() && finite.size() < static_cast<size_t>(count)) {
        Observe(finite.data(), static_cast<int64_t>(finite.size()));
      }
      return;
    }
    min_ = seen_any_ ? std::min(min_, lo) : lo;
    max_ = seen_any_ ? std::max(max_, hi) : hi;
    seen_any_ = true;
    magnitudes_.AddMagnitudes(data, count, lo, hi);
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

void StreamingHistogram::Cover(float lo, float hi) {
  if (total_ == 0) {
    seen_min_ = lo;
    seen_max_ = hi;
    float pad = std::max(1e-6f, (hi - lo) * 1e-3f);
    lo_ = from_zero_ ? 0.0f : lo - pad;
    hi_ = hi + pad;
    return;
  }
  seen_min_ = std::min(seen_min_, lo);
  seen_max_ = std::max(seen_max_, hi);
  if (lo < lo_ || hi > hi_) {
    // Widen with headroom so a slowly growing range re-bins rarely.
    float span = std::max(hi, hi_) - std::min(lo, lo_);
    Widen(from_zero_ ? 0.0f : (lo < lo_ ? lo - 0.25f * span : lo_), hi > hi_ ? hi + 0.25f * span : hi_);
  }
}

void StreamingHistogram::Count(const float* data, int64_t count, bool magnitudes) {
  // Bin indices are computed a block at a time in a branch-free loop the
  // compiler vectorises. The increments go to four interleaved integer
  // histograms: runs of one value (ReLU zeros, flat image regions) would
  // otherwise serialise on a single counter's load-add-store latency.
  constexpr int64_t kBlock = 1024;
  constexpr size_t kLanes = 4;
  const size_t bins = counts_.size();
  const size_t stride = bins + 1;  // the extra slot per lane takes zeros
  thread_local std::vector<uint32_t> lanes;
  lanes.assign(kLanes * stride, 0);
  int32_t index[kBlock];
  const float scale = static_cast<float>(bins) / (hi_ - lo_);
  const float offset = magnitudes ? 0.0f : lo_;
  const float last = static_cast<float>(bins - 1);
  const auto zero_slot = static_cast<int32_t>(bins);
  for (int64_t start = 0; start < count; start += kBlock) {
    const int64_t n = std::min(kBlock, count - start);
    const float* block = data + start;
    int64_t binned = n;
#if defined(__x86_64__)
    if (magnitudes && UseAvx512())
      binned = NonZeroMagnitudeBinsAvx512(block, n, scale, last, index);
    else
#endif
      for (int64_t i = 0; i < n; ++i) {
        const float v = magnitudes ? std::fabs(block[i]) : block[i];
        const auto bin = static_cast<int32_t>(std::min(std::max((v - offset) * scale, 0.0f), last));
        index[i] = magnitudes && v == 0.0f ? zero_slot : bin;
      }
    for (int64_t i = 0; i < binned; ++i) {
      ++lanes[static_cast<size_t>(i) % kLanes * stride + static_cast<size_t>(index[i])];
    }
  }
  int64_t counted = 0;
  for (size_t b = 0; b < bins; ++b) {
    uint32_t sum = 0;
    for (size_t lane = 0; lane < kLanes; ++lane) sum += lanes[lane * stride + b];
    counts_[b] += static_cast<double>(sum);
    counted += sum;
  }
  total_ += static_cast<double>(counted);
}

void StreamingHistogram::Add(const float* data, int64_t count) {
  if (count <= 0) return;
  float lo, hi;
  MinMax(data, count, lo, hi);
  if (!std::isfinite(lo) || !std::isfinite(hi)) return;
  Cover(lo, hi);
  Count(data, count, /*magnitudes=*/false);
}

void StreamingHistogram::AddMagnitudes(const float* data, int64_t count) {
  if (count <= 0) return;
  float lo, hi;
  MinMax(data, count, lo, hi);
  AddMagnitudes(data, count, lo, hi);
}

void StreamingHistogram::AddMagnitudes(const float* data, int64_t count, float lo, float hi) {
  if (count <= 0) return;
  if (!std::isfinite(lo) || !std::isfinite(hi)) return;
  const float largest = std::max(std::fabs(lo), std::fabs(hi));
  if (largest == 0.0f) return;  // all zeros: nothing to count
  // seen_min() of a magnitude histogram is therefore 0, not the smallest
  // non-zero magnitude (which would need another pass).
  Cover(0.0f, largest);
  Count(data, count, /*magnitudes=*/true);
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
  // Prefix sums of h, h*log(h) and of the non-empty bin count make the
  // divergence at one threshold cost O(levels) instead of O(bins): within a
  // quantization group every non-empty bin gets the same Q value, so
  //   sum_j p_j log(p_j / q) = (sum h log h - sum h * (log Pt + log q)) / Pt.
  std::vector<double> mass(static_cast<size_t>(bins) + 1, 0.0), mass_log_mass(mass.size(), 0.0);
  std::vector<int> nonzero(mass.size(), 0);
  for (int j = 0; j < bins; ++j) {
    const double h = abs_histogram[static_cast<size_t>(j)];
    const auto k = static_cast<size_t>(j);
    mass[k + 1] = mass[k] + h;
    mass_log_mass[k + 1] = mass_log_mass[k] + (h > 0.0 ? h * std::log(h) : 0.0);
    nonzero[k + 1] = nonzero[k] + (h > 0.0 ? 1 : 0);
  }
  // P is the histogram clipped at i bins with the clipped mass added to the
  // last bin, so its total is always the whole mass.
  const double p_total = mass[static_cast<size_t>(bins)];
  if (p_total <= 0.0) return static_cast<float>(bins) * bin_width;
  const double log_p_total = std::log(p_total);
  constexpr double kFloor = 1e-12;  // Q for bins it leaves empty

  auto divergence_at = [&](int i) {
    // Q: the first i bins quantized to `levels` groups, each group's mass
    // spread evenly over its non-empty bins; its total is mass[i].
    const double q_total = mass[static_cast<size_t>(i)];
    if (q_total <= 0.0) return std::numeric_limits<double>::infinity();
    const double per_level = static_cast<double>(i) / levels;
    double divergence = 0.0;
    double last_bin_q = kFloor;
    for (int level = 0; level < levels; ++level) {
      const int begin = static_cast<int>(level * per_level);
      const int end = level == levels - 1 ? i : static_cast<int>((level + 1) * per_level);
      const auto b = static_cast<size_t>(begin), e = static_cast<size_t>(end);
      const int count = nonzero[e] - nonzero[b];
      if (count == 0) continue;
      const double q = std::max((mass[e] - mass[b]) / count / q_total, kFloor);
      // The last bin (which also carries the clipped mass) is added apart.
      const size_t stop = end == i ? e - 1 : e;
      const double h = mass[stop] - mass[b];
      divergence += mass_log_mass[stop] - mass_log_mass[b] - h * (log_p_total + std::log(q));
      if (end == i && abs_histogram[e - 1] > 0.0) last_bin_q = q;
    }
    const double last = abs_histogram[static_cast<size_t>(i) - 1] + (p_total - q_total);
    if (last > 0.0) divergence += last * (std::log(last / p_total) - std::log(last_bin_q));
    return divergence / p_total;
  };

  double best_divergence = std::numeric_limits<double>::infinity();
  int best = bins;
  auto consider = [&](int i) {
    const double divergence = divergence_at(i);
    if (divergence < best_divergence) {
      best_divergence = divergence;
      best = i;
    }
  };
  // Coarse to fine: ~128 evenly spaced thresholds, then every 16th and
  // finally every threshold around the best so far. The divergence is
  // smooth at the coarse scale; the fine steps keep the histogram's
  // resolution without an exhaustive search.
  int stride = std::max(1, (bins - levels) / 128);
  for (int i = levels; i <= bins; i += stride) consider(i);
  consider(bins);
  while (stride > 1) {
    const int center = best;
    const int finer = std::max(1, stride / 16);
    for (int i = std::max(levels, center - stride); i <= std::min(bins, center + stride); i += finer) consider(i);
    stride = finer;
  }
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
