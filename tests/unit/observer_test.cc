#include "worker/calib/observer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

namespace quantd::calib {
namespace {

using config::ActivationQuantMethod;

std::vector<float> Uniform(int64_t n, float lo, float hi, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> values(static_cast<size_t>(n));
  for (auto& v : values) v = dist(rng);
  return values;
}

// Feeds data in batches, as calibration does.
void Feed(Observer& observer, const std::vector<float>& values, int64_t batch = 4096) {
  for (int64_t i = 0; i < static_cast<int64_t>(values.size()); i += batch) {
    observer.Observe(values.data() + i, std::min<int64_t>(batch, static_cast<int64_t>(values.size()) - i));
  }
}

TEST(ObserverTest, MaxMinIsTheExactRangeAcrossBatches) {
  auto observer = MakeObserver(ActivationQuantMethod::kMaxMin);
  std::vector<float> a = {0.5f, -2.0f, 3.0f}, b = {7.25f, -1.0f}, c = {-9.5f};
  observer->Observe(a.data(), 3);
  observer->Observe(b.data(), 2);
  observer->Observe(c.data(), 1);
  EXPECT_FLOAT_EQ(observer->Range().min, -9.5f);
  EXPECT_FLOAT_EQ(observer->Range().max, 7.25f);
}

TEST(ObserverTest, RemovalOutlierDropsRareExtremes) {
  auto values = Uniform(1'000'000, -1.0f, 1.0f, 1);
  for (int i = 0; i < 20; ++i) values[static_cast<size_t>(i) * 997] = (i % 2 ? 50.0f : -40.0f);
  auto observer = MakeObserver(ActivationQuantMethod::kRemovalOutlier);
  Feed(*observer, values);
  auto range = observer->Range();
  EXPECT_NEAR(range.min, -1.0f, 0.02f);
  EXPECT_NEAR(range.max, 1.0f, 0.02f);
  EXPECT_FLOAT_EQ(observer->Seen().max, 50.0f);
  EXPECT_FLOAT_EQ(observer->Seen().min, -40.0f);
}

TEST(ObserverTest, KlClipsFarOutliersOfAUniformDistribution) {
  auto values = Uniform(1'000'000, -1.0f, 1.0f, 2);
  for (int i = 0; i < 10; ++i) values[static_cast<size_t>(i) * 7919] = (i % 2 ? 20.0f : -20.0f);
  auto observer = MakeObserver(ActivationQuantMethod::kKl);
  Feed(*observer, values);
  auto range = observer->Range();
  // Clipping near the uniform edge loses almost nothing; keeping ±20 would
  // waste 95% of the levels on ten values.
  EXPECT_GT(range.max, 0.9f);
  EXPECT_LT(range.max, 1.5f);
  EXPECT_NEAR(range.min, -range.max, 0.05f);
}

TEST(ObserverTest, KlThresholdOfAGaussianIsAFewSigmas) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(1'000'000);
  for (auto& v : values) v = normal(rng);
  auto observer = MakeObserver(ActivationQuantMethod::kKl);
  Feed(*observer, values);
  auto range = observer->Range();
  // 8 bits resolve a Gaussian finely enough that KL keeps nearly all of
  // it: the threshold lies in the far tail, never inside the bulk.
  EXPECT_GT(range.max, 3.0f);
  EXPECT_LE(range.max, observer->Seen().max);
  EXPECT_LT(range.min, -3.0f);
  EXPECT_GE(range.min, observer->Seen().min);
}

TEST(ObserverTest, KlOnNonNegativeDataStartsAtZero) {
  auto values = Uniform(200'000, 0.0f, 6.0f, 4);
  auto observer = MakeObserver(ActivationQuantMethod::kKl);
  Feed(*observer, values);
  EXPECT_EQ(observer->Range().min, 0.0f);
  EXPECT_NEAR(observer->Range().max, 6.0f, 0.2f);
}

TEST(StreamingHistogramTest, WideningKeepsEveryCountAndQuantilesStayAccurate) {
  StreamingHistogram histogram(2048);
  // Growing ranges force several re-binnings.
  for (int step = 1; step <= 8; ++step) {
    auto values =
        Uniform(100'000, -static_cast<float>(step), static_cast<float>(step), 10 + static_cast<unsigned>(step));
    histogram.Add(values.data(), static_cast<int64_t>(values.size()));
  }
  double total = 0;
  for (double c : histogram.counts()) total += c;
  EXPECT_DOUBLE_EQ(total, 800'000.0);
  EXPECT_EQ(histogram.counts().size(), 2048u) << "memory must not grow";
  // The median of symmetric data is ~0.
  EXPECT_NEAR(histogram.Quantile(0.5), 0.0f, 0.05f);
  EXPECT_NEAR(histogram.seen_max(), 8.0f, 0.01f);
}

// KL divergence of the clipped-and-quantized histogram at threshold `i`,
// computed bin by bin straight from its definition.
double NaiveDivergence(const std::vector<double>& h, int i, int levels) {
  std::vector<double> p(h.begin(), h.begin() + i), q(static_cast<size_t>(i), 0.0);
  for (size_t j = static_cast<size_t>(i); j < h.size(); ++j) p.back() += h[j];
  const double per_level = static_cast<double>(i) / levels;
  for (int level = 0; level < levels; ++level) {
    const int begin = static_cast<int>(level * per_level);
    const int end = level == levels - 1 ? i : static_cast<int>((level + 1) * per_level);
    double mass = 0.0;
    int used = 0;
    for (int j = begin; j < end; ++j) {
      mass += h[static_cast<size_t>(j)];
      used += h[static_cast<size_t>(j)] > 0 ? 1 : 0;
    }
    for (int j = begin; j < end; ++j) {
      if (used > 0 && h[static_cast<size_t>(j)] > 0) q[static_cast<size_t>(j)] = mass / used;
    }
  }
  double p_total = 0.0, q_total = 0.0;
  for (int j = 0; j < i; ++j) {
    p_total += p[static_cast<size_t>(j)];
    q_total += q[static_cast<size_t>(j)];
  }
  double divergence = 0.0;
  for (int j = 0; j < i; ++j) {
    const double pj = p[static_cast<size_t>(j)] / p_total;
    if (pj > 0) divergence += pj * std::log(pj / std::max(q[static_cast<size_t>(j)] / q_total, 1e-12));
  }
  return divergence;
}

TEST(ObserverTest, KlThresholdFindsTheMinimumOfTheDivergence) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 3; ++trial) {
    SCOPED_TRACE(trial);
    // Exponential-ish magnitudes with gaps and a sparse far tail, like ReLU
    // outputs: empty bins, clipped mass and uneven groups all occur.
    std::vector<double> histogram(1024, 0.0);
    std::exponential_distribution<double> decay(6.0 + trial);
    for (int n = 0; n < 200'000; ++n) {
      auto bin = static_cast<size_t>(decay(rng) * 1024.0);
      if (bin < histogram.size() && bin % 7 != 3) histogram[bin] += 1.0;
    }
    for (size_t j = 900; j < 1024; j += 41) histogram[j] += 2.0;
    const int levels = 127;
    const float threshold = KlThreshold(histogram, 1.0f, levels);
    const int chosen = static_cast<int>(std::lround(threshold));
    ASSERT_GE(chosen, levels);
    ASSERT_LE(chosen, 1024);
    double best = std::numeric_limits<double>::infinity();
    for (int i = levels; i <= 1024; ++i) best = std::min(best, NaiveDivergence(histogram, i, levels));
    // The coarse-to-fine search may stop in a near-tie, never far above the
    // exhaustive minimum.
    EXPECT_LE(NaiveDivergence(histogram, chosen, levels), best * 1.02 + 1e-9);
  }
}

TEST(StreamingHistogramTest, MagnitudesSkipZerosAndFoldSigns) {
  StreamingHistogram histogram(100, /*from_zero=*/true);
  std::vector<float> values = {0.0f, -0.0f, 1.0f, -1.0f, 2.5f, -9.9f, 0.0f, 4.0f};
  histogram.AddMagnitudes(values.data(), static_cast<int64_t>(values.size()));
  EXPECT_DOUBLE_EQ(histogram.total(), 5.0);
  double counted = 0.0;
  for (double c : histogram.counts()) counted += c;
  EXPECT_DOUBLE_EQ(counted, 5.0);
  EXPECT_EQ(histogram.lo(), 0.0f);
  EXPECT_GE(histogram.hi(), 9.9f);
  // 1 and -1 share a bin; the bin of 0 holds nothing.
  const float width = histogram.hi() / 100.0f;
  EXPECT_DOUBLE_EQ(histogram.counts()[static_cast<size_t>(1.0f / width)], 2.0);
  EXPECT_DOUBLE_EQ(histogram.counts()[0], 0.0);
  // A second batch with a larger magnitude widens without losing counts.
  std::vector<float> more = {-30.0f, 0.5f, 0.0f};
  histogram.AddMagnitudes(more.data(), static_cast<int64_t>(more.size()));
  counted = 0.0;
  for (double c : histogram.counts()) counted += c;
  EXPECT_DOUBLE_EQ(counted, 7.0);
  EXPECT_GE(histogram.hi(), 30.0f);
}

// Every length around the vector widths (16 lanes, 4 accumulators of 16),
// with the extremes at every position: the masked tails and the unrolled
// loop must see each value exactly once. (CTest also runs this file under
// QUANTD_RUNTIME_ISA=sse for the portable path.)
TEST(ObserverTest, MaxMinSeesEveryPositionOfEveryLength) {
  for (int64_t n = 1; n <= 140; ++n) {
    for (int64_t at : {int64_t{0}, n / 2, n - 1}) {
      auto values = Uniform(n, -1.0f, 1.0f, static_cast<unsigned>(n));
      values[static_cast<size_t>(at)] = -5.0f - static_cast<float>(n);
      values[static_cast<size_t>((at + 1) % n)] = n == 1 ? values[0] : 3.0f + static_cast<float>(n);
      const float expected_min = *std::min_element(values.begin(), values.end());
      const float expected_max = *std::max_element(values.begin(), values.end());
      auto observer = MakeObserver(ActivationQuantMethod::kMaxMin);
      observer->Observe(values.data(), n);
      ASSERT_EQ(observer->Range().min, expected_min) << "n=" << n << " at=" << at;
      ASSERT_EQ(observer->Range().max, expected_max) << "n=" << n << " at=" << at;
    }
  }
}

// The magnitude histogram against bins computed here one value at a time,
// on ReLU-like data (runs of zeros, both signs) of lengths that leave every
// possible tail, across the 1024-value blocks.
TEST(StreamingHistogramTest, MagnitudeCountsMatchAPlainBinning) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> magnitude(0.0f, 3.0f);
  for (int64_t n : {int64_t{1}, int64_t{15}, int64_t{17}, int64_t{1023}, int64_t{1024}, int64_t{1041}, int64_t{5000}}) {
    std::vector<float> values(static_cast<size_t>(n));
    for (size_t i = 0; i < values.size(); ++i) {
      const bool zero = (i / 5) % 3 == 0;  // runs of five zeros
      values[i] = zero ? 0.0f : (i % 2 ? -magnitude(rng) : magnitude(rng));
    }
    values[0] = 3.0f;  // fixes the range: [0, 3 + pad]
    StreamingHistogram histogram(64, /*from_zero=*/true);
    histogram.AddMagnitudes(values.data(), n);
    std::vector<double> expected(64, 0.0);
    const float scale = 64.0f / histogram.hi();
    for (float v : values) {
      if (v == 0.0f) continue;
      const auto bin = static_cast<int64_t>(std::min(std::fabs(v) * scale, 63.0f));
      expected[static_cast<size_t>(bin)] += 1.0;
    }
    SCOPED_TRACE(n);
    EXPECT_EQ(histogram.counts(), expected);
  }
}

}  // namespace
}  // namespace quantd::calib
