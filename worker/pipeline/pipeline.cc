#include "worker/pipeline/pipeline.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "common/files.h"
#include "common/sha256.h"
#include "worker/calib/dataset.h"
#include "worker/onnx/graph_view.h"
#include "worker/onnx/model_io.h"
#include "worker/pipeline/calibrate.h"
#include "worker/pipeline/mixed_bit_tune.h"
#include "worker/quant/dynamic_quant.h"
#include "worker/quant/full_quant.h"
#include "worker/quant/weight_quant.h"
#include "worker/report/debug_report.h"
#include "worker/runtime/executor.h"

#ifndef QUANTD_VERSION
#define QUANTD_VERSION "0.0.0"
#endif

namespace quantd::pipeline {
namespace {

using Clock = std::chrono::steady_clock;

// Times one stage, reports its progress, and checks for cancellation at
// its boundary.
class StageRunner {
 public:
  StageRunner(PipelineObserver& observer, PipelineResult& result) : observer_(observer), result_(result) {}

  template <typename Fn>
  Status Run(const std::string& stage, Fn&& body) {
    if (observer_.CancelRequested()) return Cancelled("cancelled before stage " + stage);
    observer_.OnProgress(stage, 0.0);
    auto start = Clock::now();
    Status status = body();
    double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    result_.timings.push_back({stage, seconds});
    if (!status.ok()) return status;
    observer_.OnProgress(stage, 1.0);
    return Status::Ok();
  }

 private:
  PipelineObserver& observer_;
  PipelineResult& result_;
};

std::string HumanBytes(int64_t bytes) {
  char text[32];
  if (bytes >= (1 << 20)) {
    std::snprintf(text, sizeof(text), "%.2f MiB", static_cast<double>(bytes) / (1 << 20));
  } else {
    std::snprintf(text, sizeof(text), "%.1f KiB", static_cast<double>(bytes) / 1024.0);
  }
  return text;
}

// One digest for the whole calibration set: every folder's input name and
// every file's relative path and content digest, in sorted order.
StatusOr<std::string> CalibrationDigest(const std::vector<CalibrationFolder>& folders) {
  std::vector<CalibrationFolder> sorted = folders;
  std::sort(sorted.begin(), sorted.end(),
            [](const CalibrationFolder& a, const CalibrationFolder& b) { return a.input_name < b.input_name; });
  Sha256 hasher;
  for (const auto& folder : sorted) {
    hasher.Update(folder.input_name + "\n");
    std::vector<std::filesystem::path> files;
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(folder.dir, ec);
         it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      if (it->is_regular_file(ec)) files.push_back(it->path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      QUANTD_ASSIGN_OR_RETURN(auto digest, Sha256OfFile(file));
      hasher.Update(std::filesystem::relative(file, folder.dir, ec).generic_string() + "\n" + digest + "\n");
    }
  }
  return hasher.HexDigest();
}

void AddProvenance(onnx::ModelProto& model, const std::string& model_sha256, const std::string& config_sha256,
                   const std::string& calibration_sha256) {
  auto set = [&model](const std::string& key, const std::string& value) {
    for (auto& prop : *model.mutable_metadata_props()) {
      if (prop.key() == key) {
        prop.set_value(value);
        return;
      }
    }
    auto* prop = model.add_metadata_props();
    prop->set_key(key);
    prop->set_value(value);
  };
  set("quantd.version", QUANTD_VERSION);
  set("quantd.input_model_sha256", model_sha256);
  set("quantd.config_sha256", config_sha256);
  if (!calibration_sha256.empty()) set("quantd.calibration_sha256", calibration_sha256);
  model.set_producer_name("quantd");
  model.set_producer_version(QUANTD_VERSION);
}

nlohmann::json WeightReportJson(const WeightQuantReport& report) {
  nlohmann::json quantized = nlohmann::json::array();
  for (const auto& weight : report.quantized) {
    quantized.push_back({{"node", weight.node_name},
                         {"node_type", weight.node_type},
                         {"tensor", weight.tensor_name},
                         {"dims", weight.dims},
                         {"bits", weight.bits},
                         {"storage", ToString(weight.storage)},
                         {"axis", weight.axis},
                         {"float_bytes", weight.float_bytes},
                         {"stored_bytes", weight.stored_bytes},
                         {"max_abs_error", weight.max_abs_error},
                         {"cosine_similarity", weight.cosine_similarity}});
  }
  nlohmann::json skipped = nlohmann::json::array();
  for (const auto& weight : report.skipped) {
    skipped.push_back({{"node", weight.node_name},
                       {"node_type", weight.node_type},
                       {"tensor", weight.tensor_name},
                       {"reason", weight.reason}});
  }
  return {{"quantized", quantized}, {"skipped", skipped}};
}

bool IsWeighted(const std::string& op) {
  return op == "Conv" || op == "ConvTranspose" || op == "Gemm" || op == "MatMul";
}

// What the debug report needs to know about the quantization that ran.
struct QuantizationRecord {
  std::set<std::string> quantized_nodes;
  std::vector<TensorQuantParam> params;
};

// Runs the float and the quantized model side by side and writes the debug
// report; in the service into out_dir, shipped as artifacts.
StatusOr<nlohmann::json> RunDebugReport(const PipelineRequest& request, const config::QuantConfig& config,
                                        const onnx::ModelProto& original, const onnx::ModelProto& quantized,
                                        const std::optional<QuantizationRecord>& record, StageRunner& stages,
                                        PipelineObserver& observer, PipelineResult& result) {
  if (!record) {
    observer.OnLog(LogLevel::kWarning,
                   "debug_info_save_path: the debug report covers FULL_QUANT and WEIGHT_QUANT; "
                   "none written");
    return nlohmann::json{{"written", false}};
  }
  report::DebugReportRequest debug;
  debug.original = &original;
  debug.quantized = &quantized;
  debug.quant_type = config::ToString(config.common.quant_type);
  debug.quantized_nodes = record->quantized_nodes;
  debug.params = record->params;
  debug.skip_quant_node = config.common.skip_quant_node;
  debug.round_files = config.common.quant_type == config::QuantType::kFullQuant ? report::RoundFiles::kOnePerSample
                                                                                : report::RoundFiles::kSingle;
  debug.preprocess = &config.preprocess;
  for (const auto& folder : request.calibration) debug.folders.push_back({folder.input_name, folder.dir.string()});
  debug.image_limits = request.image_limits;
  debug.num_threads = request.num_threads;
  debug.out_dir = request.debug_report_in_out_dir ? request.out_dir / "debug_report"
                                                  : std::filesystem::path(config.common.debug_info_save_path);
  if (request.debug_report_in_out_dir) debug.tar_path = request.out_dir / "debug_report.tar";
  debug.on_progress = [&](size_t done, size_t total) {
    observer.OnProgress("debug_report", total ? static_cast<double>(done) / static_cast<double>(total) : 1.0);
    return !observer.CancelRequested();
  };
  report::DebugReportResult written;
  QUANTD_RETURN_IF_ERROR(stages.Run("debug_report", [&]() -> Status {
    QUANTD_ASSIGN_OR_RETURN(written, report::WriteDebugReport(debug));
    return Status::Ok();
  }));
  nlohmann::json files = nlohmann::json::array();
  for (const auto& file : written.files) files.push_back(file.filename().string());
  nlohmann::json summary = {
      {"written", true}, {"schema", report::kReportSchema},      {"rounds", written.rounds},
      {"files", files},  {"worst_layers", written.worst_layers}, {"suggested_skip_quant_node", written.skip_line}};
  if (request.debug_report_in_out_dir) {
    // Artifacts are flat names; the CSVs of every round travel in one tar.
    nlohmann::json artifacts = nlohmann::json::array();
    for (const char* name : {"report.html", "report.json", "quant_param.csv", "output_summary.csv"}) {
      result.artifacts.push_back(debug.out_dir / name);
      artifacts.push_back(name);
    }
    result.artifacts.push_back(debug.tar_path);
    artifacts.push_back(debug.tar_path.filename().string());
    summary["artifacts"] = artifacts;
  } else {
    summary["dir"] = debug.out_dir.string();
  }
  const std::string where = request.debug_report_in_out_dir
                                ? "shipped with the job's artifacts (debug_info_save_path is not used in the service)"
                                : "in " + debug.out_dir.string();
  observer.OnLog(LogLevel::kInfo, "debug report: " + std::to_string(written.rounds) + " rounds, " + where +
                                      (written.skip_line.empty() ? "" : "; suggestion: " + written.skip_line));
  return summary;
}

// Calibrates, quantizes, and (with bias_correction) measures the mean shift
// each quantized layer's output suffers and folds it into that layer's bias.
StatusOr<nlohmann::json> RunFullQuant(const PipelineRequest& request, const config::QuantConfig& config,
                                      onnx::ModelProto& model, StageRunner& stages, PipelineObserver& observer,
                                      std::optional<QuantizationRecord>& record) {
  std::set<std::string> skip(config.common.skip_quant_node.begin(), config.common.skip_quant_node.end());
  // Bias correction needs each weighted node's mean input per channel.
  std::map<std::string, int> mean_tensors;
  std::map<std::string, std::vector<std::string>> nodes_reading;
  if (config.full.bias_correction) {
    for (const auto& node : model.graph().node()) {
      if (!IsWeighted(node.op_type()) || skip.count(node.name()) || node.input_size() == 0) continue;
      if (node.op_type() == "ConvTranspose") continue;
      mean_tensors[node.input(0)] = node.op_type() == "MatMul" ? -1 : 1;
      nodes_reading[node.input(0)].push_back(node.name());
    }
  }
  CalibrationRequest calibration_request;
  calibration_request.model = &model;
  calibration_request.config = &config;
  for (const auto& folder : request.calibration) {
    calibration_request.folders.push_back({folder.input_name, folder.dir.string()});
  }
  calibration_request.image_limits = request.image_limits;
  calibration_request.num_threads = request.num_threads;
  calibration_request.channel_mean_tensors = mean_tensors;
  CalibrationResult calibration;
  QUANTD_RETURN_IF_ERROR(stages.Run("calibrate", [&]() -> Status {
    calibration_request.on_progress = [&](size_t done, size_t total) {
      observer.OnProgress("calibrate", total ? static_cast<double>(done) / static_cast<double>(total) : 1.0);
      return !observer.CancelRequested();
    };
    QUANTD_ASSIGN_OR_RETURN(calibration, Calibrate(calibration_request));
    observer.OnLog(LogLevel::kInfo, "calibrated " + std::to_string(calibration.table.size()) + " tensors on " +
                                        std::to_string(calibration.samples) + " samples with " +
                                        config::ToString(config.full.activation_quant_method));
    return Status::Ok();
  }));

  FullQuantOptions options;
  options.activations = config.full.target_device == config::TargetDevice::kNvGpu ? ActivationScheme::kInt8Symmetric
                                                                                  : ActivationScheme::kUint8Asymmetric;
  options.skip_quant_node = skip;
  for (const auto& [tensor, means] : calibration.channel_means) {
    for (const auto& node : nodes_reading[tensor]) options.input_channel_means[node] = means;
  }
  onnx::ModelProto quantized;
  FullQuantReport report;
  QUANTD_RETURN_IF_ERROR(stages.Run("quantize", [&]() -> Status {
    quantized = model;
    QUANTD_ASSIGN_OR_RETURN(report, QuantizeStatic(quantized, calibration.table, options));
    if (config.full.bias_correction) {
      observer.OnLog(LogLevel::kInfo,
                     "bias correction applied to " + std::to_string(report.bias_corrected_nodes) + " layers");
    }
    return Status::Ok();
  }));
  model = std::move(quantized);
  record = QuantizationRecord{{report.quantized_nodes.begin(), report.quantized_nodes.end()}, report.params};
  observer.OnLog(LogLevel::kInfo, "quantized " + std::to_string(report.quantized_nodes.size()) + " nodes, kept " +
                                      std::to_string(report.skipped.size()) + " in float");
  nlohmann::json skipped = nlohmann::json::array();
  for (const auto& node : report.skipped) {
    skipped.push_back({{"node", node.node_name}, {"node_type", node.node_type}, {"reason", node.reason}});
  }
  nlohmann::json ranges = nlohmann::json::object();
  for (const auto& [tensor, range] : calibration.table) ranges[tensor] = {range.min, range.max};
  return nlohmann::json{
      {"activation_quant_method", config::ToString(config.full.activation_quant_method)},
      {"activation_ranges", ranges},
      {"activation_type",
       options.activations == ActivationScheme::kInt8Symmetric ? "INT8_SYMMETRIC" : "UINT8_ASYMMETRIC"},
      {"calibration_samples", calibration.samples},
      {"calibrated_tensors", calibration.table.size()},
      {"quantized_nodes", report.quantized_nodes},
      {"skipped", skipped},
      {"bias_corrected_nodes", report.bias_corrected_nodes},
  };
}

}  // namespace

bool IsInputError(const Status& status) {
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kUnimplemented:
    case StatusCode::kOutOfRange:
    case StatusCode::kNotFound:
    case StatusCode::kPermissionDenied:
    case StatusCode::kResourceExhausted:
    case StatusCode::kCancelled: return true;
    default: return false;
  }
}

StatusOr<PipelineResult> RunPipeline(const PipelineRequest& request, PipelineObserver& observer) {
  PipelineResult result;
  StageRunner stages(observer, result);
  std::error_code ec;
  std::filesystem::create_directories(request.out_dir, ec);
  if (ec) return Internal("IO_ERROR", "cannot create output folder " + request.out_dir.string() + ": " + ec.message());

  config::QuantConfig config;
  QUANTD_RETURN_IF_ERROR(stages.Run("config", [&]() -> Status {
    config::ValidationContext validation;
    validation.calibration_supplied_separately = !request.calibration.empty();
    QUANTD_ASSIGN_OR_RETURN(config, config::ParseQuantConfig(request.config_text, validation));
    return Status::Ok();
  }));

  // Runs over the calibration set decode images and run the model later;
  // the libraries' one-time set-up for that (OpenCV's codec registry,
  // oneDNN's JIT) happens on a thread while the model loads. The future's
  // destructor waits for it on every way out.
  std::future<void> warm_up;
  const bool runs_calibration = config.common.quant_type == config::QuantType::kFullQuant ||
                                !config.common.debug_info_save_path.empty() || config.mixed_bit.auto_tune;
  if (runs_calibration) {
    const bool images = config.preprocess.input_type == config::InputType::kImage;
    warm_up = std::async(std::launch::async, [images] {
      if (images) calib::WarmUpImageCodecs();
      runtime::WarmUpKernelLibraries();
    });
  }

  onnx::ModelProto model;
  std::string model_sha256;
  int64_t input_bytes = 0;
  int input_opset = 0;
  QUANTD_RETURN_IF_ERROR(stages.Run("load", [&]() -> Status {
    QUANTD_ASSIGN_OR_RETURN(model, LoadModel(request.model_path, request.model_limits));
    QUANTD_ASSIGN_OR_RETURN(model_sha256, Sha256OfFile(request.model_path));
    input_bytes = static_cast<int64_t>(std::filesystem::file_size(request.model_path, ec));
    input_opset = DefaultOpset(model);
    observer.OnLog(LogLevel::kInfo, "loaded model: " + std::to_string(model.graph().node_size()) + " nodes, opset " +
                                        std::to_string(input_opset) + ", " + HumanBytes(input_bytes));
    return Status::Ok();
  }));

  const bool debug_report = !config.common.debug_info_save_path.empty();
  onnx::ModelProto original;
  if (debug_report) original = model;
  std::optional<QuantizationRecord> record;

  nlohmann::json mode_report;
  std::string storage_note;
  if (config.common.quant_type == config::QuantType::kFullQuant) {
    QUANTD_ASSIGN_OR_RETURN(mode_report, RunFullQuant(request, config, model, stages, observer, record));
  } else {
    QUANTD_RETURN_IF_ERROR(stages.Run("quantize", [&]() -> Status {
      switch (config.common.quant_type) {
        case config::QuantType::kWeightQuant: {
          if (config.common.bit_num == 0) {
            QUANTD_ASSIGN_OR_RETURN(auto mixed, QuantizeMixedBit(request, config, model, observer));
            observer.OnLog(LogLevel::kInfo, "mixed bits: quantized " + std::to_string(mixed.report.quantized.size()) +
                                                " weights, skipped " + std::to_string(mixed.report.skipped.size()));
            mode_report = WeightReportJson(mixed.report);
            mode_report["mixed_bit"] = std::move(mixed.summary);
            record =
                QuantizationRecord{report::NodesReadingDequantized(model), report::WeightQuantParams(mixed.report)};
            storage_note = mixed.report.storage_note;
            return Status::Ok();
          }
          WeightQuantOptions options;
          options.bits = config.common.bit_num;
          options.min_quant_weight_size = config.common.min_quant_weight_size;
          options.min_quant_weight_channel = config.common.min_quant_weight_channel;
          options.skip_quant_node.insert(config.common.skip_quant_node.begin(), config.common.skip_quant_node.end());
          options.on_progress = [&observer](size_t done, size_t total) {
            observer.OnProgress("quantize", total == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total));
            return !observer.CancelRequested();
          };
          QUANTD_ASSIGN_OR_RETURN(auto report, QuantizeWeights(model, options));
          observer.OnLog(LogLevel::kInfo, "quantized " + std::to_string(report.quantized.size()) + " weights to " +
                                              std::to_string(options.bits) + " bits, skipped " +
                                              std::to_string(report.skipped.size()));
          for (const auto& skipped : report.skipped) {
            observer.OnLog(LogLevel::kInfo,
                           "skipped " + skipped.node_name + " (" + skipped.node_type + "): " + skipped.reason);
          }
          if (!report.storage_note.empty()) observer.OnLog(LogLevel::kInfo, report.storage_note);
          mode_report = WeightReportJson(report);
          record = QuantizationRecord{report::NodesReadingDequantized(model), report::WeightQuantParams(report)};
          storage_note = report.storage_note;
          return Status::Ok();
        }
        case config::QuantType::kFullQuant: return Status::Ok();  // runs in its own stages below
        case config::QuantType::kDynamicQuant: {
          DynamicQuantOptions options;
          options.skip_quant_node.insert(config.common.skip_quant_node.begin(), config.common.skip_quant_node.end());
          options.min_quant_weight_size = config.common.min_quant_weight_size;
          options.form = config.dynamic.operator_form == config::DynamicOperatorForm::kStandard
                             ? DynamicQuantForm::kStandardOnnx
                             : DynamicQuantForm::kOnnxRuntimeFused;
          QUANTD_ASSIGN_OR_RETURN(auto report, QuantizeDynamic(model, options));
          observer.OnLog(LogLevel::kInfo, "dynamic quantization: " + std::to_string(report.quantized_nodes.size()) +
                                              " MatMul/Gemm/Gather nodes quantized, " +
                                              std::to_string(report.skipped.size()) + " kept in float, " +
                                              std::to_string(report.fused_bias_adds) + " bias Adds folded in");
          nlohmann::json skipped = nlohmann::json::array();
          for (const auto& node : report.skipped) {
            skipped.push_back({{"node", node.node_name}, {"node_type", node.node_type}, {"reason", node.reason}});
          }
          mode_report = {{"quantized_nodes", report.quantized_nodes},
                         {"skipped", skipped},
                         {"operator_form", config::ToString(config.dynamic.operator_form)},
                         {"fused_bias_adds", report.fused_bias_adds},
                         {"float_weight_bytes", report.float_weight_bytes},
                         {"quantized_weight_bytes", report.quantized_weight_bytes}};
          return Status::Ok();
        }
      }
      return Internal("UNREACHABLE", "unknown quant_type");
    }));
  }

  auto output_path = request.out_dir / "model.onnx";
  QUANTD_RETURN_IF_ERROR(stages.Run("write", [&]() -> Status {
    std::string calibration_sha256;
    const bool mixed_bit_auto_tune = config.common.quant_type == config::QuantType::kWeightQuant &&
                                     config.common.bit_num == 0 && config.mixed_bit.auto_tune;
    if (config.common.quant_type == config::QuantType::kFullQuant || mixed_bit_auto_tune) {
      std::vector<CalibrationFolder> folders = request.calibration;
      if (folders.empty()) {
        for (const auto& source : config.preprocess.calibrate_path) folders.push_back({source.input_name, source.dir});
      }
      QUANTD_ASSIGN_OR_RETURN(calibration_sha256, CalibrationDigest(folders));
    }
    AddProvenance(model, model_sha256, Sha256Hex(request.config_text), calibration_sha256);
    const bool for_cpu_runtime = config.common.quant_type == config::QuantType::kFullQuant &&
                                 config.full.target_device != config::TargetDevice::kNvGpu;
    if (for_cpu_runtime && ConvInputsToPad(model) > 0) {
      // The file gets the padding; the debug report, which pairs layers with
      // the original model's by name and shape, keeps the model as it was.
      onnx::ModelProto padded = model;
      const int convs = PadConvInputChannels(padded);
      observer.OnLog(LogLevel::kInfo, "padded the input channels of " + std::to_string(convs) +
                                          " Conv layer(s) to a multiple of 4 for ONNX Runtime's int8 kernels");
      QUANTD_RETURN_IF_ERROR(SaveModel(padded, output_path));
    } else {
      QUANTD_RETURN_IF_ERROR(SaveModel(model, output_path));
    }
    result.artifacts.push_back(output_path);
    return Status::Ok();
  }));

  nlohmann::json debug_summary;
  if (debug_report) {
    QUANTD_ASSIGN_OR_RETURN(debug_summary,
                            RunDebugReport(request, config, original, model, record, stages, observer, result));
  }

  int64_t output_bytes = static_cast<int64_t>(std::filesystem::file_size(output_path, ec));
  QUANTD_ASSIGN_OR_RETURN(auto output_sha256, Sha256OfFile(output_path));
  nlohmann::json timings = nlohmann::json::array();
  for (const auto& timing : result.timings) timings.push_back({{"stage", timing.stage}, {"seconds", timing.seconds}});
  nlohmann::json summary = {
      {"quantd_version", QUANTD_VERSION},
      {"quant_type", config::ToString(config.common.quant_type)},
      {"config", config::ToJson(config)},
      {"input_model",
       {{"file", request.model_path.filename().string()},
        {"bytes", input_bytes},
        {"sha256", model_sha256},
        {"opset", input_opset}}},
      {"output_model",
       {{"file", "model.onnx"}, {"bytes", output_bytes}, {"sha256", output_sha256}, {"opset", DefaultOpset(model)}}},
      {"compression_ratio",
       output_bytes > 0 ? static_cast<double>(input_bytes) / static_cast<double>(output_bytes) : 0.0},
      {"timings", timings},
      {config.common.quant_type == config::QuantType::kFullQuant      ? "full_quant"
       : config.common.quant_type == config::QuantType::kDynamicQuant ? "dynamic_quant"
                                                                      : "weights",
       mode_report},
      {"storage_note", storage_note},
  };
  if (debug_report) summary["debug_report"] = debug_summary;
  auto summary_path = request.out_dir / "summary.json";
  QUANTD_RETURN_IF_ERROR(WriteFileAtomic(summary_path, summary.dump(2) + "\n"));
  result.artifacts.push_back(summary_path);
  observer.OnLog(
      LogLevel::kInfo,
      "wrote model.onnx (" + HumanBytes(output_bytes) + ", " +
          std::to_string(static_cast<double>(input_bytes) / std::max<int64_t>(output_bytes, 1)).substr(0, 4) +
          "x smaller)");
  return result;
}

}  // namespace quantd::pipeline
