// Per-layer bit width search for mixed-bit weight quantization
// (`bit_num: 0`).
//
// Budget. Each weight W is quantized exactly as the fixed-bit path does it
// (symmetric, per output channel, scale_c = max|W_c| / qmax). Its error at
// `bits` is the relative L2 error over the whole tensor
//
//     e(bits) = ||W_q(bits) - W||_2 / ||W||_2        (0 for an all-zero W)
//
// where W_q is the dequantized weight. The search picks the smallest width
// b in [kMixedBitMinBits, kMixedBitMaxBits] with e(b) <= init_scale, so a
// larger init_scale gives fewer bits. A weight that misses the budget even
// at kMixedBitMaxBits keeps kMixedBitMaxBits and is reported as such. As a
// rule of thumb e(b) roughly halves per extra bit; e(8) is about 0.01 and
// e(4) about 0.1-0.2 for trained convolution and dense weights.
//
// Storage. ONNX stores integers in whole containers: 2..4 bits go into
// packed INT4, 5..8 bits into INT8. Bits below the container's width save
// nothing on disk, so the stored width is the container's (4 or 8): the
// searched width decides the container, the container width gives the
// values, and the stored error is never above the searched one's.
#pragma once

#include <span>
#include <vector>

#include "common/status.h"

namespace quantd {

inline constexpr int kMixedBitMinBits = 2;
inline constexpr int kMixedBitMaxBits = 8;

// e(bits) for every candidate width, indexed by bits - kMixedBitMinBits.
struct BitErrorCurve {
  std::vector<double> relative_error;

  double At(int bits) const { return relative_error[static_cast<size_t>(bits - kMixedBitMinBits)]; }
};

// Quantizes `weights` (laid out as `dims`, channels along `axis`) at every
// candidate width and measures e(bits). Fails like QuantizePerChannel
// (QUANT_AXIS_OUT_OF_RANGE, QUANT_SIZE_MISMATCH, WEIGHT_NOT_FINITE).
StatusOr<BitErrorCurve> MeasureBitErrors(std::span<const float> weights, std::span<const int64_t> dims, int axis);

struct BitChoice {
  // Smallest candidate width within the budget, or kMixedBitMaxBits.
  int searched_bits = kMixedBitMaxBits;
  bool budget_met = false;
};

BitChoice ChooseBits(const BitErrorCurve& curve, double init_scale);

// Width of the integer container holding `bits`-bit values: 4 or 8.
int ContainerBits(int bits);

// The width actually stored for a choice when its container holds
// `container_bits` (4, or 8 when 4-bit storage is not available): the most
// accurate width from searched_bits up to the container's.
int StoredBits(const BitErrorCurve& curve, const BitChoice& choice, int container_bits);

// The smallest init_scale at which the weight moves from INT8 into INT4
// storage: min over b in 2..4 of e(b). Below it the weight is stored in
// INT8 whatever init_scale is; at or above it, in INT4.
double Int4Threshold(const BitErrorCurve& curve);

}  // namespace quantd
