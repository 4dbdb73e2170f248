#include "worker/pipeline/mixed_bit_tune.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "worker/pipeline/calibrate.h"
#include "worker/quant/mixed_bit.h"

namespace quantd::pipeline {
namespace {

WeightQuantOptions MixedBitOptions(const config::QuantConfig& config, double init_scale) {
  WeightQuantOptions options;
  options.bits = 0;
  options.mixed_bit_init_scale = init_scale;
  options.min_quant_weight_size = config.common.min_quant_weight_size;
  options.min_quant_weight_channel = config.common.min_quant_weight_channel;
  options.skip_quant_node.insert(config.common.skip_quant_node.begin(), config.common.skip_quant_node.end());
  return options;
}

int Int4Layers(const WeightQuantReport& report) {
  return static_cast<int>(std::count_if(report.quantized.begin(), report.quantized.end(), [](const auto& weight) {
    return weight.storage == WeightStorage::kInt4Packed;
  }));
}

int64_t StoredBytes(const WeightQuantReport& report) {
  int64_t bytes = 0;
  for (const auto& weight : report.quantized) bytes += weight.stored_bytes;
  return bytes;
}

struct Trial {
  double init_scale = 0;
  OutputAgreement agreement;
  int int4_layers = 0;
  int64_t stored_bytes = 0;
};

struct Tuning {
  std::vector<Trial> trials;
  double output_cosine = 0;
  double min_output_cosine = 0;
  bool target_met = false;
  size_t samples = 0;
};

// One init_scale per distinct model, in increasing order: candidates[k]
// moves exactly the k weights with the lowest thresholds into INT4.
std::vector<double> CandidateScales(const WeightQuantReport& probe) {
  std::vector<double> thresholds;
  double widest_error = 0;  // the largest e(8): below it some weight misses the budget
  for (const auto& weight : probe.quantized) {
    if (weight.relative_error_by_bits.empty()) continue;
    BitErrorCurve curve{weight.relative_error_by_bits};
    widest_error = std::max(widest_error, curve.At(kMixedBitMaxBits));
    const double threshold = Int4Threshold(curve);
    if (threshold > 0 && threshold < 1) thresholds.push_back(threshold);
  }
  std::sort(thresholds.begin(), thresholds.end());
  thresholds.erase(std::unique(thresholds.begin(), thresholds.end()), thresholds.end());
  if (thresholds.empty()) return {};
  std::vector<double> candidates;
  // All in INT8: prefer a scale every weight meets at 8 bits.
  const double lowest = widest_error > 0 && widest_error < thresholds.front() ? widest_error : thresholds.front() / 4;
  candidates.push_back(std::sqrt(lowest * thresholds.front()));
  for (size_t k = 0; k + 1 < thresholds.size(); ++k) candidates.push_back(std::sqrt(thresholds[k] * thresholds[k + 1]));
  // All in INT4: any scale from the last threshold up gives this model; a
  // little above it keeps the searched widths near 4.
  candidates.push_back(std::min(thresholds.back() * 1.1, std::sqrt(thresholds.back())));
  return candidates;
}

nlohmann::json SummaryJson(const WeightQuantReport& report, double init_scale, const std::optional<Tuning>& tuning) {
  struct Bucket {
    int layers = 0;
    int64_t elements = 0, stored_bytes = 0;
  };
  std::map<int, Bucket> stored, searched;
  nlohmann::json layers = nlohmann::json::array();
  int missing_budget = 0;
  for (const auto& weight : report.quantized) {
    int64_t elements = 1;
    for (int64_t d : weight.dims) elements *= d;
    Bucket& bucket = stored[weight.bits];
    ++bucket.layers;
    bucket.elements += elements;
    bucket.stored_bytes += weight.stored_bytes;
    Bucket& found = searched[weight.searched_bits];
    ++found.layers;
    found.elements += elements;
    found.stored_bytes += weight.stored_bytes;
    if (!weight.budget_met) ++missing_budget;
    nlohmann::json by_bits = nlohmann::json::object();
    for (size_t i = 0; i < weight.relative_error_by_bits.size(); ++i) {
      by_bits[std::to_string(kMixedBitMinBits + static_cast<int>(i))] = weight.relative_error_by_bits[i];
    }
    layers.push_back({{"node", weight.node_name},
                      {"tensor", weight.tensor_name},
                      {"searched_bits", weight.searched_bits},
                      {"bits", weight.bits},
                      {"storage", ToString(weight.storage)},
                      {"relative_error", weight.relative_error},
                      {"budget_met", weight.budget_met},
                      {"relative_error_by_bits", by_bits}});
  }
  auto histogram = [](const std::map<int, Bucket>& buckets) {
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& [bits, bucket] : buckets) {
      rows.push_back({{"bits", bits},
                      {"layers", bucket.layers},
                      {"elements", bucket.elements},
                      {"stored_bytes", bucket.stored_bytes}});
    }
    return rows;
  };
  std::vector<int> candidate_bits;
  for (int bits = kMixedBitMinBits; bits <= kMixedBitMaxBits; ++bits) candidate_bits.push_back(bits);
  nlohmann::json tuning_json = nullptr;
  if (tuning) {
    nlohmann::json trials = nlohmann::json::array();
    for (const auto& trial : tuning->trials) {
      trials.push_back({{"init_scale", trial.init_scale},
                        {"output_cosine", trial.agreement.mean_cosine},
                        {"min_output_cosine", trial.agreement.min_cosine},
                        {"int4_layers", trial.int4_layers},
                        {"stored_weight_bytes", trial.stored_bytes}});
    }
    tuning_json = {{"target_cosine", kAutoTuneTargetCosine},         {"output_cosine", tuning->output_cosine},
                   {"min_output_cosine", tuning->min_output_cosine}, {"target_met", tuning->target_met},
                   {"calibration_samples", tuning->samples},         {"trials", trials}};
  }
  return {{"init_scale", init_scale},
          {"auto_tune", tuning.has_value()},
          {"budget", "per weight: ||W_q - W||_2 / ||W||_2 <= init_scale, symmetric per output channel"},
          {"candidate_bits", candidate_bits},
          {"bits_histogram", histogram(stored)},
          {"searched_bits_histogram", histogram(searched)},
          {"layers_missing_budget", missing_budget},
          {"layers", layers},
          {"tuning", tuning_json}};
}

std::string Fixed(double value, int digits) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.*f", digits, value);
  return text;
}

}  // namespace

StatusOr<MixedBitOutcome> QuantizeMixedBit(const PipelineRequest& request, const config::QuantConfig& config,
                                           onnx::ModelProto& model, PipelineObserver& observer) {
  auto keep_going = [&observer](size_t, size_t) { return !observer.CancelRequested(); };
  MixedBitOutcome outcome;
  if (!config.mixed_bit.auto_tune) {
    WeightQuantOptions options = MixedBitOptions(config, config.mixed_bit.init_scale);
    options.on_progress = [&observer](size_t done, size_t total) {
      observer.OnProgress("quantize", total == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total));
      return !observer.CancelRequested();
    };
    QUANTD_ASSIGN_OR_RETURN(outcome.report, QuantizeWeights(model, options));
    outcome.summary = SummaryJson(outcome.report, config.mixed_bit.init_scale, std::nullopt);
    return outcome;
  }

  CalibrationRequest calibration;
  for (const auto& folder : request.calibration)
    calibration.folders.push_back({folder.input_name, folder.dir.string()});
  calibration.image_limits = request.image_limits;
  if (calibration.folders.empty() && config.preprocess.calibrate_path.empty()) {
    return InvalidArgument("CONFIG_MISSING_KEY",
                           "data_preprocess_param.calibrate_path: missing; mixed_bit_weight_quant_param.auto_tune "
                           "compares the model outputs on calibration data, so give calibrate_path (or upload a "
                           "calibration set)");
  }
  const onnx::ModelProto float_model = model;
  calibration.model = &float_model;
  calibration.config = &config;
  calibration.num_threads = request.num_threads;

  // Each weight's error curve does not depend on init_scale: one pass gives
  // every threshold.
  onnx::ModelProto probe_model = float_model;
  WeightQuantOptions probe_options = MixedBitOptions(config, config.mixed_bit.init_scale);
  probe_options.on_progress = keep_going;
  QUANTD_ASSIGN_OR_RETURN(auto probe, QuantizeWeights(probe_model, probe_options));
  probe_model.Clear();
  std::vector<double> candidates = probe.storage_note.empty() ? CandidateScales(probe) : std::vector<double>{};
  if (candidates.empty()) candidates.push_back(config.mixed_bit.init_scale);
  const int expected_trials = static_cast<int>(std::ceil(std::log2(static_cast<double>(candidates.size()) + 1))) + 1;

  Tuning tuning;
  std::optional<onnx::ModelProto> best_model;
  WeightQuantReport best_report;
  int best_index = -1;
  auto try_candidate = [&](int index) -> StatusOr<bool> {
    const double scale = candidates[static_cast<size_t>(index)];
    onnx::ModelProto candidate_model = float_model;
    WeightQuantOptions options = MixedBitOptions(config, scale);
    options.on_progress = keep_going;
    QUANTD_ASSIGN_OR_RETURN(auto report, QuantizeWeights(candidate_model, options));
    const double done_before = static_cast<double>(tuning.trials.size());
    calibration.on_progress = [&observer, done_before, expected_trials](size_t done, size_t total) {
      const double within = total == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total);
      observer.OnProgress("quantize", std::min(1.0, (done_before + within) / expected_trials));
      return !observer.CancelRequested();
    };
    QUANTD_ASSIGN_OR_RETURN(auto agreement, CompareOutputs(calibration, candidate_model));
    Trial trial{scale, agreement, Int4Layers(report), StoredBytes(report)};
    tuning.trials.push_back(trial);
    tuning.samples = agreement.samples;
    observer.OnLog(LogLevel::kInfo, "auto_tune: init_scale " + Fixed(scale, 5) + " -> output cosine " +
                                        Fixed(agreement.mean_cosine, 5) + " (" + std::to_string(trial.int4_layers) +
                                        " of " + std::to_string(report.quantized.size()) + " weights in INT4)");
    const bool passes = agreement.mean_cosine >= kAutoTuneTargetCosine;
    // Keep the passing model with the most INT4 weights or, while none
    // passes, the most accurate model tried.
    const bool keep = passes ? (!tuning.target_met || index > best_index)
                             : (!tuning.target_met && (best_index < 0 || index < best_index));
    if (keep) {
      tuning.target_met = tuning.target_met || passes;
      best_model = std::move(candidate_model);
      best_report = std::move(report);
      best_index = index;
      tuning.output_cosine = agreement.mean_cosine;
      tuning.min_output_cosine = agreement.min_cosine;
    }
    return passes;
  };

  // Bisection for the largest index that passes, assuming the cosine falls
  // as more weights move to INT4; when none passes it ends having tried 0.
  int passing = -1, failing = static_cast<int>(candidates.size());
  while (failing - passing > 1) {
    const int middle = passing + (failing - passing) / 2;
    QUANTD_ASSIGN_OR_RETURN(bool passes, try_candidate(middle));
    (passes ? passing : failing) = middle;
  }
  if (!best_model) return Internal("MIXED_BIT_TUNE", "auto_tune tried no init_scale");
  if (!tuning.target_met) {
    observer.OnLog(LogLevel::kWarning, "auto_tune: no init_scale reaches output cosine " +
                                           Fixed(kAutoTuneTargetCosine, 3) + "; keeping the most accurate model (" +
                                           Fixed(tuning.output_cosine, 5) + ")");
  }
  const double chosen = candidates[static_cast<size_t>(best_index)];
  observer.OnLog(LogLevel::kInfo, "auto_tune: chose init_scale " + Fixed(chosen, 5) + ", output cosine " +
                                      Fixed(tuning.output_cosine, 5) + " on " + std::to_string(tuning.samples) +
                                      " calibration samples");
  model = std::move(*best_model);
  outcome.report = std::move(best_report);
  outcome.summary = SummaryJson(outcome.report, chosen, tuning);
  return outcome;
}

}  // namespace quantd::pipeline
