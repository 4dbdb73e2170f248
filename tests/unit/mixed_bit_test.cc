// The per-weight bit search of mixed-bit quantization on weights whose
// errors are worked out by hand.
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "worker/quant/mixed_bit.h"

namespace quantd {
namespace {

BitErrorCurve MustMeasure(const std::vector<float>& w, const std::vector<int64_t>& dims, int axis) {
  auto curve = MeasureBitErrors(w, dims, axis);
  EXPECT_TRUE(curve.ok()) << curve.status().message();
  return curve.ok() ? *curve : BitErrorCurve{std::vector<double>(kMixedBitMaxBits - kMixedBitMinBits + 1, 1.0)};
}

// One channel [7, 1]: at 4 bits (qmax 7, scale 1) both values are exact; at
// 2 and 3 bits (scale 7 and 7/3) the 1 rounds to 0, an error of 1 against
// ||W|| = sqrt(50).
TEST(MixedBitSearch, FourBitsExactThreeBitsNot) {
  const auto curve = MustMeasure({7, 1}, {1, 2}, 0);
  const double miss = 1 / std::sqrt(50.0);
  EXPECT_NEAR(curve.At(2), miss, 1e-6);
  EXPECT_NEAR(curve.At(3), miss, 1e-6);
  EXPECT_NEAR(curve.At(4), 0.0, 1e-6);
  // qmax 63 is a multiple of 7 as well; 15, 31 and 127 are not (scale 7/15
  // puts 1 at 2.14 steps, an error of 0.14 * 7/15 = 0.0667 of sqrt(50)).
  EXPECT_NEAR(curve.At(7), 0.0, 1e-6);
  EXPECT_NEAR(curve.At(5), (15.0 / 7 - 2) * 7 / 15 / std::sqrt(50.0), 1e-6);

  // Budget below sqrt(1/50) = 0.1414: 4 bits is the smallest width within it.
  EXPECT_EQ(ChooseBits(curve, 0.1).searched_bits, 4);
  EXPECT_TRUE(ChooseBits(curve, 0.1).budget_met);
  // Above it, 2 bits already suffice.
  EXPECT_EQ(ChooseBits(curve, 0.15).searched_bits, 2);
  EXPECT_NEAR(Int4Threshold(curve), 0.0, 1e-6);
  // In an INT8 container the most accurate width is 7, not 8.
  EXPECT_EQ(StoredBits(curve, ChooseBits(curve, 0.15), 8), 7);
  EXPECT_EQ(StoredBits(curve, ChooseBits(curve, 0.15), 4), 4);
}

// One channel [127, 1]: only 8 bits (scale 1) keep the 1; every narrower
// width rounds it to 0, so e(2..7) = 1 / sqrt(127^2 + 1) = 0.007874.
TEST(MixedBitSearch, OnlyEightBitsMeetATightBudget) {
  const auto curve = MustMeasure({127, 1}, {2, 1}, 1);
  const double miss = 1 / std::sqrt(127.0 * 127.0 + 1);
  for (int bits = 2; bits <= 7; ++bits) EXPECT_NEAR(curve.At(bits), miss, 1e-6) << bits << " bits";
  EXPECT_NEAR(curve.At(8), 0.0, 1e-6);
  EXPECT_EQ(ChooseBits(curve, 0.005).searched_bits, 8);
  EXPECT_EQ(ChooseBits(curve, 0.008).searched_bits, 2);
  EXPECT_NEAR(Int4Threshold(curve), miss, 1e-6);
}

// One channel [127, 0.5]: at 8 bits 0.5 rounds (to even) to 0; nothing
// reaches a budget below 0.5 / sqrt(127^2 + 0.25) = 0.003937.
TEST(MixedBitSearch, BudgetBelowEightBitErrorIsReportedAsMissed) {
  const auto curve = MustMeasure({127, 0.5f}, {1, 2}, 0);
  EXPECT_NEAR(curve.At(8), 0.5 / std::sqrt(127.0 * 127.0 + 0.25), 1e-6);
  const BitChoice choice = ChooseBits(curve, 0.001);
  EXPECT_EQ(choice.searched_bits, kMixedBitMaxBits);
  EXPECT_FALSE(choice.budget_met);
}

TEST(MixedBitSearch, AllZeroWeightNeedsTheFewestBits) {
  const auto curve = MustMeasure({0, 0, 0, 0}, {2, 2}, 0);
  EXPECT_EQ(ChooseBits(curve, 1e-9).searched_bits, kMixedBitMinBits);
}

TEST(MixedBitSearch, NonFiniteWeightFails) {
  EXPECT_EQ(MeasureBitErrors(std::vector<float>{1, NAN}, std::vector<int64_t>{1, 2}, 0).status().reason(),
            "WEIGHT_NOT_FINITE");
}

// Storage widths: the container's width is stored unless a narrower one is
// strictly more accurate, so the stored error never exceeds the searched.
TEST(MixedBitSearch, StoredWidthFillsTheContainer) {
  EXPECT_EQ(ContainerBits(2), 4);
  EXPECT_EQ(ContainerBits(4), 4);
  EXPECT_EQ(ContainerBits(5), 8);
  EXPECT_EQ(ContainerBits(8), 8);
  const auto curve = MustMeasure({127, 1}, {2, 1}, 1);
  const BitChoice two = ChooseBits(curve, 0.008);
  EXPECT_EQ(StoredBits(curve, two, 4), 4);
  EXPECT_EQ(StoredBits(curve, two, 8), 8);  // INT4 unavailable: all 8 bits
  EXPECT_LE(curve.At(StoredBits(curve, two, 4)), curve.At(two.searched_bits));
}

// On random Gaussian weights the error falls with every bit, and a larger
// budget never asks for more bits.
TEST(MixedBitSearch, LargerInitScaleNeverNeedsMoreBits) {
  std::mt19937 gen(11);
  std::normal_distribution<float> dist(0, 0.05f);
  std::vector<float> w(64 * 72);
  for (auto& x : w) x = dist(gen);
  const auto curve = MustMeasure(w, {64, 72}, 0);
  for (int bits = 3; bits <= 8; ++bits) {
    EXPECT_LT(curve.At(bits), curve.At(bits - 1) * 0.75) << bits << " bits";
  }
  int previous = kMixedBitMaxBits + 1;
  for (double scale : {0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.9}) {
    const int bits = ChooseBits(curve, scale).searched_bits;
    EXPECT_LE(bits, previous) << "init_scale " << scale;
    EXPECT_TRUE(curve.At(bits) <= scale || bits == kMixedBitMaxBits);
    if (bits > kMixedBitMinBits) {
      EXPECT_GT(curve.At(bits - 1), scale) << "a narrower width met the budget";
    }
    previous = bits;
  }
  // Rule of thumb in mixed_bit.h: e(8) about 0.01 for a bell-shaped weight.
  EXPECT_LT(curve.At(8), 0.02);
  EXPECT_GT(curve.At(4), 0.05);
}

}  // namespace
}  // namespace quantd
