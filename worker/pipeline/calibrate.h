// Calibration: runs the float model over the calibration set in the
// executor, with an observer on every float tensor, and turns the observers
// into the calibration table. Also measures what bias correction needs.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "common/config/quant_config.h"
#include "common/status.h"
#include "worker/quant/full_quant.h"

namespace quantd::pipeline {

struct CalibrationRequest {
  const onnx::ModelProto* model = nullptr;
  const config::QuantConfig* config = nullptr;
  std::vector<config::CalibrationSource> folders;  // replace calibrate_path when set
  int num_threads = 1;
  int batch_size = 32;
  // Output tensors whose per-channel means are recorded (channel axis by
  // tensor), for bias correction.
  std::map<std::string, int> channel_mean_tensors;
  // (samples done, samples total); returning false cancels.
  std::function<bool(size_t, size_t)> on_progress;
};

struct CalibrationResult {
  CalibrationTable table;
  std::map<std::string, std::vector<double>> channel_means;
  size_t samples = 0;
};

StatusOr<CalibrationResult> Calibrate(const CalibrationRequest& request);

// Per-channel means of the named tensors of any model (e.g. the
// fake-quantized one) over the same calibration set.
StatusOr<std::map<std::string, std::vector<double>>> MeasureChannelMeans(const CalibrationRequest& request);

}  // namespace quantd::pipeline
