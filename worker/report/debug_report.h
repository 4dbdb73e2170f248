// The quantization debug report (common_quant_param.debug_info_save_path):
// the float model and the quantized model run side by side in quantd's
// executor on the calibration samples, and every tensor's distribution is
// written as the seed's data distribution CSVs, next to quant_param.csv, an
// output summary, report.json and a self-contained report.html.
//
// Rows: an Origin row for every float input and output of every node of the
// original model; a Dequant row for every input of a quantized node that it
// reads through a DequantizeLinear, and for every float output of a
// quantized node, as the quantized model's consumers see it (the
// dequantized value where the output has a QuantizeLinear/DequantizeLinear
// pair, otherwise the output itself). Dequant rows carry the original node
// and tensor names, so they line up with their Origin rows.
//
// Memory: one round (one calibration sample, batch 1) is held at a time:
// the float model's tensors that Dequant rows compare against, until the
// quantized model has run on the same sample. Weights are read once.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "common/config/quant_config.h"
#include "common/input_limits.h"
#include "common/status.h"
#include "worker/quant/full_quant.h"
#include "worker/quant/weight_quant.h"

namespace quantd::report {

inline constexpr const char* kReportSchema = "quantd.debug_report/v1";
// Layers with the lowest mean output cosine similarity (over rounds) that
// report.json and report.html single out. Without calibration data a
// layer's weight cosine stands in (report.json says which:
// layer_cosine_basis "output" or "weight").
inline constexpr int kWorstLayerCount = 3;
inline constexpr int kHistogramBins = 64;

enum class RoundFiles {
  kOnePerSample,  // FULL_QUANT: round_0000.csv, round_0001.csv, ...
  kSingle,        // WEIGHT_QUANT: data_distribution.csv (weights, and the first sample's activations)
};

struct DebugReportRequest {
  const onnx::ModelProto* original = nullptr;
  const onnx::ModelProto* quantized = nullptr;
  std::string quant_type;  // as in the config, e.g. FULL_QUANT
  // Nodes of `quantized` that compute on dequantized values.
  std::set<std::string> quantized_nodes;
  std::vector<TensorQuantParam> params;      // one per quantized tensor, original names
  std::vector<std::string> skip_quant_node;  // already in the config
  RoundFiles round_files = RoundFiles::kOnePerSample;
  // Calibration samples; no folders (and no calibrate_path) means weights only.
  const config::DataPreprocessParam* preprocess = nullptr;
  std::vector<config::CalibrationSource> folders;
  ImageLimits image_limits;
  int num_threads = 1;
  std::filesystem::path out_dir;
  // Also packs every file of out_dir into this tar (the service ships it).
  std::filesystem::path tar_path;
  // (rounds done, rounds total); returning false cancels.
  std::function<bool(size_t, size_t)> on_progress;
};

struct DebugReportResult {
  std::vector<std::filesystem::path> files;  // written, in out_dir (and the tar)
  size_t rounds = 0;
  nlohmann::json worst_layers = nlohmann::json::array();
  std::string skip_line;  // e.g. "skip_quant_node=a,b"
};

// The quant_param.csv rows of a weight-quantization report.
std::vector<TensorQuantParam> WeightQuantParams(const WeightQuantReport& report);

// Nodes (other than Q/DQ) that read a DequantizeLinear output.
std::set<std::string> NodesReadingDequantized(const onnx::ModelProto& model);

// Failure reasons: DEBUG_REPORT_IO (kInternal) when a file cannot be
// written; executor and dataset errors as they come (e.g. a sample that
// fails to decode).
StatusOr<DebugReportResult> WriteDebugReport(const DebugReportRequest& request);

}  // namespace quantd::report
