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
#include "common/input_limits.h"
#include "common/status.h"
#include "worker/quant/full_quant.h"

namespace quantd::pipeline {

struct CalibrationRequest {
  const onnx::ModelProto* model = nullptr;
  const config::QuantConfig* config = nullptr;
  std::vector<config::CalibrationSource> folders;  // replace calibrate_path when set
  ImageLimits image_limits;
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

// How closely a candidate model's float outputs follow the reference's.
struct OutputAgreement {
  // Mean and minimum over samples (and float outputs) of the cosine
  // similarity of one sample's output: a per-sample mean keeps a few
  // large-magnitude outputs from hiding the others.
  double mean_cosine = 1;
  double min_cosine = 1;
  size_t samples = 0;
};

// Runs request.model (the reference) and `candidate`, which must have the
// same inputs and outputs, over the calibration set side by side.
StatusOr<OutputAgreement> CompareOutputs(const CalibrationRequest& request, const onnx::ModelProto& candidate);

}  // namespace quantd::pipeline
