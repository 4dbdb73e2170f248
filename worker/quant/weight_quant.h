// Weight-only quantization of an ONNX model: float weights of Conv,
// ConvTranspose, Gemm and MatMul become integer initializers followed by a
// per-channel DequantizeLinear, so inference still runs in float while the
// file shrinks.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "common/status.h"

namespace quantd {

struct WeightQuantOptions {
  // 1..16, or 0 to search the width of each weight (mixed_bit.h) against
  // the budget mixed_bit_init_scale.
  int bits = 8;
  double mixed_bit_init_scale = 0.02;
  // A weight is quantized only if it has MORE elements than this ...
  int64_t min_quant_weight_size = 0;
  // ... and MORE output channels (size of the quantization axis) than this.
  int64_t min_quant_weight_channel = 16;
  // Node names whose weights stay float.
  std::set<std::string> skip_quant_node;
  // Called before each weight with (done, total); returning false stops the
  // pass with CANCELLED (the model is then half-rewritten and must be dropped).
  // With mixed bits each weight counts twice: once searched, once written.
  std::function<bool(size_t done, size_t total)> on_progress;
};

enum class WeightStorage { kInt4Packed, kInt8, kInt16, kInt32 };

std::string ToString(WeightStorage storage);  // "INT4", "INT8", "INT16", "INT32"

struct QuantizedWeight {
  // A weight read by several nodes is quantized once and listed once, under
  // the first node (in graph order) that reads it.
  std::string node_name, node_type, tensor_name;
  std::vector<int64_t> dims;
  int bits;
  WeightStorage storage;
  int axis;
  std::vector<float> scales;
  int64_t float_bytes;   // 4 per element
  int64_t stored_bytes;  // integer payload + scales + zero points
  double max_abs_error;
  double cosine_similarity;
  // ||W_q - W||_2 / ||W||_2 at the stored width.
  double relative_error = 0;
  // Mixed-bit search only: e(bits) for bits 2..8 (empty otherwise), the
  // smallest width within the budget (`bits` is then its container's
  // width) and whether any candidate width met the budget.
  std::vector<double> relative_error_by_bits;
  int searched_bits = 0;
  bool budget_met = true;
};

struct SkippedWeight {
  std::string node_name, node_type, tensor_name, reason;
};

struct WeightQuantReport {
  std::vector<QuantizedWeight> quantized;
  std::vector<SkippedWeight> skipped;
  int input_opset = -1, output_opset = -1;
  // Empty unless the storage differs from what `bits` asks for, e.g.
  // "kept opset 13: <why 21 was refused>; 4-bit weights stored in INT8
  // containers".
  std::string storage_note;
};

// Quantizes the main graph's weights in place, per output channel:
//   Conv weight axis 0; ConvTranspose axis 1; Gemm B axis 1 (transB=0) or 0
//   (transB=1); MatMul second input of rank >= 2 along its last axis.
// Storage: bits <= 4 -> INT4 (packed), 5..8 -> INT8, 9..16 -> INT16, per
// weight (with mixed bits one model may hold both INT4 and INT8). INT4
// and INT16 need opset 21; if upgrading there is refused, INT8 (bits <= 8)
// or INT32 (bits > 8) hold the same values instead and storage_note says
// why. Models below opset 13 are upgraded to 13 first (per-axis
// DequantizeLinear); a refusal there is returned as the error. Nothing is
// upgraded when no weight qualifies.
//
// Each weight W becomes W_quantized (integer), W_scale (float, one per
// channel), W_zero_point (zeros; absent for INT32) and a DequantizeLinear
// node W_DequantizeLinear writing W_dequantized, placed before its first
// reader. Only the quantized readers are rewired; W itself is dropped (from
// initializers, graph inputs and value_info) once nothing else reads it.
StatusOr<WeightQuantReport> QuantizeWeights(onnx::ModelProto& model,
                                            const WeightQuantOptions& opts);

}  // namespace quantd
