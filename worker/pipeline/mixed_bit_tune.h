// Mixed-bit weight quantization (`bit_num: 0`) as a pipeline step: the
// per-weight bit search of worker/quant/mixed_bit.h at the configured
// init_scale or, with `auto_tune`, at an init_scale chosen by running the
// float and the quantized model on the calibration set.
//
// auto_tune. Only the storage a weight ends up in (INT4 or INT8) changes
// the model, and a weight moves to INT4 exactly when init_scale reaches its
// Int4Threshold. With N weights there are therefore N + 1 distinct models;
// the tuner bisects over them (fewest INT4 weights first), measuring the
// output cosine similarity (CompareOutputs in calibrate.h) against the float
// model, and keeps the smallest model whose cosine is at least
// kAutoTuneTargetCosine. The init_scale it reports lies strictly inside
// that model's interval of init_scale values (a geometric mean of its
// ends), so writing it into a config with auto_tune off reproduces the
// same model.
// If not even the all-INT8 model reaches the target, that one is kept and
// the summary says the target was missed.
#pragma once

#include <onnx/onnx_pb.h>
#include <nlohmann/json.hpp>

#include "common/config/quant_config.h"
#include "common/status.h"
#include "worker/pipeline/pipeline.h"
#include "worker/quant/weight_quant.h"

namespace quantd::pipeline {

inline constexpr double kAutoTuneTargetCosine = 0.995;

struct MixedBitOutcome {
  WeightQuantReport report;
  // The "mixed_bit" part of summary.json: init_scale used, the per-layer
  // search results, a histogram of stored widths and, with auto_tune, every
  // tried init_scale with its output cosine.
  nlohmann::json summary;
};

// Quantizes `model` in place. With auto_tune and no calibration data the
// result is CONFIG_MISSING_KEY naming data_preprocess_param.calibrate_path.
StatusOr<MixedBitOutcome> QuantizeMixedBit(const PipelineRequest& request, const config::QuantConfig& config,
                                           onnx::ModelProto& model, PipelineObserver& observer);

}  // namespace quantd::pipeline
