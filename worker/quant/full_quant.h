// Static (full) quantization: rewrites a float model into the QDQ form
// that ONNX Runtime and TensorRT fuse into integer kernels, using the
// activation ranges that calibration measured.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "common/status.h"

namespace quantd {

struct ActivationRange {
  float min = 0.0f;
  float max = 0.0f;
};

// The only contract between calibration and rewriting: the range of every
// float activation tensor, by name.
using CalibrationTable = std::map<std::string, ActivationRange>;

enum class ActivationScheme {
  kUint8Asymmetric,  // ONNX Runtime CPU default
  kInt8Symmetric,    // TensorRT (target_device: NVGPU)
};

struct FullQuantOptions {
  ActivationScheme activations = ActivationScheme::kUint8Asymmetric;
  std::set<std::string> skip_quant_node;
  // Bias correction: the mean of each weighted node's input per input
  // channel over the calibration data, keyed by node name. For each such
  // Conv/Gemm the output shift the weight rounding causes, (W_q - W).E[x],
  // is subtracted through its bias (one is added if it has none).
  std::map<std::string, std::vector<double>> input_channel_means;
};

// One quantized tensor, as the debug report's quant_param.csv lists it.
struct TensorQuantParam {
  std::string node_name, node_type, tensor_name;
  std::vector<int64_t> dims;  // empty for activations of unknown shape
  int64_t elements = 0;
  std::vector<float> scales;
  std::vector<int32_t> zero_points;
  int bits = 8;
  std::vector<float> correction;  // bias correction applied (per channel), if any
};

struct SkippedNode {
  std::string node_name, node_type, reason;
};

struct FullQuantReport {
  std::vector<std::string> quantized_nodes;
  std::vector<SkippedNode> skipped;
  std::vector<TensorQuantParam> params;
  int bias_corrected_nodes = 0;
  int output_opset = 0;
};

// Quantization parameters of one activation range: the range always
// includes 0 so zero pads and ReLU outputs are exact.
struct QuantParams {
  float scale = 1.0f;
  int32_t zero_point = 0;
};
QuantParams ActivationParams(ActivationRange range, ActivationScheme scheme);

// Node types quantized when they appear (and are not skipped).
bool IsQuantizableOp(const std::string& op_type);

StatusOr<FullQuantReport> QuantizeStatic(onnx::ModelProto& model, const CalibrationTable& table,
                                         const FullQuantOptions& options);

// ONNX Runtime's CPU int8 convolution takes its fast (indirect) path only
// when the input channel count is a multiple of 4; other counts, such as
// the grayscale or RGB image a first layer reads, go through im2col and a
// generic integer GEMM, several times slower than the float layer. For
// each Conv (group 1, int8 weights) that reads a graph input through its
// own QuantizeLinear/DequantizeLinear pair, PadConvInputChannels appends
// zero channels to that input (a Pad ahead of the QuantizeLinear) and zero
// filter taps to the weights, which changes no output, and returns how many
// Conv nodes it padded. It runs on QuantizeStatic's output, for models
// meant for ONNX Runtime's CPU provider; ConvInputsToPad counts without
// changing anything.
int ConvInputsToPad(const onnx::ModelProto& model);
int PadConvInputChannels(onnx::ModelProto& model);

}  // namespace quantd
