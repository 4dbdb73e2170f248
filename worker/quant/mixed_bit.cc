#include "worker/quant/mixed_bit.h"

#include <algorithm>

#include "worker/quant/quant_math.h"

namespace quantd {

StatusOr<BitErrorCurve> MeasureBitErrors(std::span<const float> weights, std::span<const int64_t> dims, int axis) {
  QUANTD_ASSIGN_OR_RETURN(const ChannelLayout layout, MakeChannelLayout(dims, axis));
  BitErrorCurve curve;
  for (int bits = kMixedBitMinBits; bits <= kMixedBitMaxBits; ++bits) {
    QUANTD_ASSIGN_OR_RETURN(auto q, QuantizePerChannel(weights, dims, axis, bits));
    curve.relative_error.push_back(MeasureQuantError(weights, q.values, q.scales, layout).relative_error);
  }
  return curve;
}

BitChoice ChooseBits(const BitErrorCurve& curve, double init_scale) {
  for (int bits = kMixedBitMinBits; bits <= kMixedBitMaxBits; ++bits) {
    if (curve.At(bits) <= init_scale) return {bits, true};
  }
  return {kMixedBitMaxBits, false};
}

int ContainerBits(int bits) {
  return bits <= 4 ? 4 : 8;
}

int StoredBits(const BitErrorCurve& curve, const BitChoice& choice, int container_bits) {
  const int top = std::max(choice.searched_bits, std::min(container_bits, kMixedBitMaxBits));
  int best = choice.searched_bits;
  for (int bits = choice.searched_bits + 1; bits <= top; ++bits) {
    // Ties go to the wider width: same bytes, and the values use the range.
    if (curve.At(bits) <= curve.At(best)) best = bits;
  }
  return best;
}

double Int4Threshold(const BitErrorCurve& curve) {
  double threshold = curve.At(kMixedBitMinBits);
  for (int bits = kMixedBitMinBits + 1; bits <= 4; ++bits) threshold = std::min(threshold, curve.At(bits));
  return threshold;
}

}  // namespace quantd
