// Symmetric per-channel weight quantization and 4-bit packing.
//
// For bits in 2..16: qmax = 2^(bits-1) - 1, and per channel c
//   scale_c = max|w_c| / qmax          (1 for an all-zero channel)
//   q       = clamp(round_half_to_even(w / scale_c), -qmax, qmax)
// so the range is symmetric and -2^(bits-1) is never produced.
// For bits == 1 the weights are binarised: q = +1 for w >= 0, else -1, with
//   scale_c = mean|w_c|, which minimises the squared error of q * scale_c.
// Scales are never zero or subnormal (at least FLT_MIN), since runtimes
// divide by them when quantizing activations against the same parameters.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"

namespace quantd {

// Largest quantized magnitude for `bits` (1 for binary).
int QuantMax(int bits);

// Round to nearest, ties to the even neighbour (as ONNX QuantizeLinear).
double RoundHalfToEven(double x);

// A tensor seen as [outer, channels, inner] around the quantization axis.
struct ChannelLayout {
  int64_t outer = 1;
  int64_t channels = 1;
  int64_t inner = 1;
  int64_t size() const { return outer * channels * inner; }
};

// INVALID_ARGUMENT (QUANT_AXIS_OUT_OF_RANGE) if axis is not within dims.
StatusOr<ChannelLayout> MakeChannelLayout(std::span<const int64_t> dims, int axis);

struct PerChannelQuantized {
  std::vector<int16_t> values;  // same layout as the input
  std::vector<float> scales;    // one per channel
};

// Fails with QUANT_BITS_OUT_OF_RANGE, QUANT_AXIS_OUT_OF_RANGE,
// QUANT_SIZE_MISMATCH or WEIGHT_NOT_FINITE (NaN/inf in the weights).
StatusOr<PerChannelQuantized> QuantizePerChannel(std::span<const float> weights,
                                                 std::span<const int64_t> dims, int axis,
                                                 int bits);

// q * scale_c for every element.
std::vector<float> DequantizePerChannel(std::span<const int16_t> values,
                                        std::span<const float> scales,
                                        const ChannelLayout& layout);

struct QuantError {
  double max_abs_error = 0;
  double cosine_similarity = 1;  // 1 when both tensors are all zero
  double relative_error = 0;     // ||dequantized - w||_2 / ||w||_2; 0 when w is all zero
};

// Compares the weights with their dequantized form without materialising it.
QuantError MeasureQuantError(std::span<const float> weights, std::span<const int16_t> values,
                             std::span<const float> scales, const ChannelLayout& layout);

// Two signed 4-bit values per byte, the first in the low nibble; an odd
// count leaves the last high nibble zero. Values must lie in [-8, 7]; only
// their low four bits are kept.
std::vector<uint8_t> PackInt4(std::span<const int16_t> values);

// Inverse of PackInt4 for `count` values, sign-extending each nibble.
std::vector<int16_t> UnpackInt4(std::span<const uint8_t> packed, size_t count);

}  // namespace quantd
