// The debug report's per-tensor statistics against values worked out by
// hand and against a plain full-sort reference on random data.
#include "worker/report/tensor_stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace quantd::report {
namespace {

// Quantile by the textbook recipe: sort everything, interpolate between the
// two ranks around q*(n-1).
double ReferenceQuantile(std::vector<float> values, double q) {
  std::sort(values.begin(), values.end());
  double position = q * static_cast<double>(values.size() - 1);
  size_t lower = static_cast<size_t>(position);
  size_t upper = std::min(lower + 1, values.size() - 1);
  return values[lower] + (values[upper] - values[lower]) * (position - static_cast<double>(lower));
}

TEST(TensorStatsTest, SmallTensorMatchesHandComputedValues) {
  // Sorted: -1 0 0 2 3 5 7 8. Q1 at rank 1.75 -> 0, median at 3.5 -> 2.5,
  // Q3 at 5.25 -> 5 + 0.25 * 2 = 5.5 (numpy.percentile gives the same).
  // Mean 24 / 8 = 3; squared deviations 0 16 9 16 9 4 1 25 -> var 80 / 8.
  const std::vector<float> values = {3, -1, 0, 7, 0, 5, 2, 8};
  auto stats = ComputeDistribution(values);
  EXPECT_EQ(stats.elements, 8);
  EXPECT_DOUBLE_EQ(stats.min, -1);
  EXPECT_DOUBLE_EQ(stats.q1, 0);
  EXPECT_DOUBLE_EQ(stats.median, 2.5);
  EXPECT_DOUBLE_EQ(stats.q3, 5.5);
  EXPECT_DOUBLE_EQ(stats.max, 8);
  EXPECT_DOUBLE_EQ(stats.mean, 3);
  EXPECT_DOUBLE_EQ(stats.var, 10);
  EXPECT_DOUBLE_EQ(stats.sparsity, 0.25);
  EXPECT_EQ(values[0], 3) << "the input must not be reordered";
}

TEST(TensorStatsTest, RandomTensorsAgreeWithAFullSortReference) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.5f, 2.0f);
  for (size_t n : {1u, 2u, 3u, 10u, 101u, 4096u, 10007u}) {
    std::vector<float> values(n);
    for (auto& v : values) v = rng() % 5 == 0 ? 0.0f : normal(rng);
    auto stats = ComputeDistribution(values);
    double sum = 0, zeros = 0;
    for (float v : values) {
      sum += v;
      zeros += v == 0.0f;
    }
    double mean = sum / static_cast<double>(n), squares = 0;
    for (float v : values) squares += (v - mean) * (v - mean);
    EXPECT_NEAR(stats.mean, mean, 1e-9) << n;
    EXPECT_NEAR(stats.var, squares / static_cast<double>(n), 1e-6) << n;
    EXPECT_DOUBLE_EQ(stats.sparsity, zeros / static_cast<double>(n)) << n;
    EXPECT_DOUBLE_EQ(stats.min, *std::min_element(values.begin(), values.end())) << n;
    EXPECT_DOUBLE_EQ(stats.max, *std::max_element(values.begin(), values.end())) << n;
    EXPECT_NEAR(stats.q1, ReferenceQuantile(values, 0.25), 1e-6) << n;
    EXPECT_NEAR(stats.median, ReferenceQuantile(values, 0.5), 1e-6) << n;
    EXPECT_NEAR(stats.q3, ReferenceQuantile(values, 0.75), 1e-6) << n;
  }
}

TEST(TensorStatsTest, NansAreLeftOutOfTheQuantilesAndAnEmptyTensorIsAllZero) {
  std::vector<float> values = {NAN, 1, 2, NAN, 3};
  auto stats = ComputeDistribution(values);
  EXPECT_DOUBLE_EQ(stats.median, 2);
  EXPECT_DOUBLE_EQ(stats.mean, 2);
  EXPECT_EQ(ComputeDistribution({}).elements, 0);
}

TEST(TensorStatsTest, CosineSimilarityOfKnownAngles) {
  const std::vector<float> x = {1, 0}, y = {0, 1}, sixty = {0.5f, std::sqrt(3.0f) / 2}, zero = {0, 0};
  EXPECT_NEAR(CosineSimilarity(x, x), 1.0, 1e-12);
  EXPECT_NEAR(CosineSimilarity(x, y), 0.0, 1e-12);
  EXPECT_NEAR(CosineSimilarity(x, sixty), 0.5, 1e-7);
  EXPECT_DOUBLE_EQ(CosineSimilarity(zero, zero), 1.0);
  EXPECT_DOUBLE_EQ(CosineSimilarity(zero, x), 0.0);
  EXPECT_TRUE(std::isnan(CosineSimilarity(x, std::vector<float>{1})));
}

TEST(TensorStatsTest, MeanRelativeErrorIsTheL1ErrorOverTheL1Magnitude) {
  const std::vector<float> reference = {1, -2, 0, 4}, quantized = {1.5f, -2, 0.5f, 3};
  // |errors| 0.5 0 0.5 1 = 2 over magnitudes 1 2 0 4 = 7.
  EXPECT_NEAR(MeanRelativeError(quantized, reference), 2.0 / 7.0, 1e-12);
  EXPECT_DOUBLE_EQ(MeanRelativeError(reference, reference), 0.0);
}

TEST(TensorStatsTest, ClipCountsValuesOutsideThePerTensorRange) {
  // uint8, scale 0.1, zero point 10: representable [-1, 24.5], and values
  // within half a step (0.05) of it round onto its ends.
  QuantRange range{{0.1f}, {10}, 1, 0, 255};
  const std::vector<float> values = {-1.5f, 0, 24.6f, 3, -1.04f, 24.54f};
  const std::vector<int64_t> dims = {6};
  EXPECT_DOUBLE_EQ(ClipFraction(values, dims, range), 2.0 / 6.0);
}

TEST(TensorStatsTest, ClipUsesEachChannelsOwnRange) {
  // [2, 3] along axis 0, integers [-2, 1]: channel 0 (scale 1) keeps
  // [-2.5, 1.5], channel 1 (scale 0.5) keeps [-1.25, 0.75] once rounding
  // is counted; -3 and 0.8 fall out, 1.4 and 0.7 do not.
  QuantRange range{{1.0f, 0.5f}, {0, 0}, 0, -2, 1};
  const std::vector<float> values = {-3, 0, 1.4f, 0.8f, -1, 0.7f};
  const std::vector<int64_t> dims = {2, 3};
  EXPECT_DOUBLE_EQ(ClipFraction(values, dims, range), 2.0 / 6.0);
  // The same along the last axis: channels alternate.
  QuantRange last{{1.0f, 0.5f}, {0, 0}, -1, -2, 1};
  const std::vector<float> interleaved = {-3, 0.8f, 0, -1, 1.4f, 0.7f};
  const std::vector<int64_t> transposed = {3, 2};
  EXPECT_DOUBLE_EQ(ClipFraction(interleaved, transposed, last), 2.0 / 6.0);
}

TEST(TensorStatsTest, HistogramPutsOutliersInTheEdgeBins) {
  auto histogram = MakeHistogram(0, 4, 4);
  const std::vector<float> values = {-10, 0, 0.5f, 1, 2.5f, 3.99f, 4, 100};
  histogram.Add(values);
  EXPECT_EQ(histogram.counts, (std::vector<int64_t>{3, 1, 1, 3}));
}

}  // namespace
}  // namespace quantd::report
