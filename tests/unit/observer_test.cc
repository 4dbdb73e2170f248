#include "worker/calib/observer.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace quantd::calib
