#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "common/config/quant_config.h"
#include "common/input_limits.h"
#include "common/log.h"
#include "common/status.h"

namespace quantd::pipeline {

struct CalibrationFolder {
  std::string input_name;
  std::filesystem::path dir;
};

struct PipelineRequest {
  std::filesystem::path model_path;
  std::string config_text;
  // Folders that override calibrate_path (the service extracts archives).
  std::vector<CalibrationFolder> calibration;
  std::filesystem::path out_dir;
  // Threads the executor may use while calibrating.
  int num_threads = 1;
  // The service sets this: debug_info_save_path names a folder on the
  // client's machine, so the debug report goes to out_dir/debug_report
  // instead and its files become artifacts.
  bool debug_report_in_out_dir = false;
  // The model and images are untrusted input; the service passes the limits
  // configured in quantd.yaml.
  ModelLimits model_limits;
  ImageLimits image_limits;
};

struct StageTiming {
  std::string stage;
  double seconds = 0;
};

struct PipelineResult {
  std::vector<StageTiming> timings;
  std::vector<std::filesystem::path> artifacts;  // files written in out_dir
};

// What a running pipeline tells the outside world. Implementations forward
// to a terminal, to job events, or to both.
class PipelineObserver {
 public:
  virtual ~PipelineObserver() = default;
  virtual void OnProgress(const std::string& stage, double fraction) = 0;
  virtual void OnLog(LogLevel level, const std::string& text) = 0;
  // Polled between units of work; true stops the pipeline with CANCELLED.
  virtual bool CancelRequested() = 0;
};

// Input problems (bad model, bad config, bad data) come back with codes
// kInvalidArgument / kFailedPrecondition and are never worth retrying.
bool IsInputError(const Status& status);

// The whole quantization pipeline, used by quantd-worker and by
// `quantctl convert`: load and validate the model, quantize per the config,
// write model.onnx and summary.json into out_dir.
StatusOr<PipelineResult> RunPipeline(const PipelineRequest& request, PipelineObserver& observer);

}  // namespace quantd::pipeline
