// Typed post-training quantization configuration, in the vocabulary of
// MindSpore Lite's converter_lite config file: sections [common_quant_param],
// [mixed_bit_weight_quant_param], [full_quant_param] and
// [data_preprocess_param], plus [dynamic_quant_param] for the operator form
// dynamic quantization writes. The same content is accepted in two
// spellings, the converter's INI-style .cfg and YAML, and both go through one
// typed reader so that they cannot drift apart in meaning.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace quantd::config {

enum class QuantType { kWeightQuant, kFullQuant, kDynamicQuant };
enum class ActivationQuantMethod { kMaxMin, kKl, kRemovalOutlier };
enum class TargetDevice { kDefault, kNvGpu };
enum class DynamicOperatorForm { kOrtFused, kStandard };
enum class InputType { kImage, kBin, kNpy };
enum class ImageFormat { kUnchanged, kRgb, kGray, kBgr };
enum class ResizeMethod { kLinear, kNearest, kCubic };

struct CommonQuantParam {
  QuantType quant_type = QuantType::kWeightQuant;
  // 0 selects mixed-bit weight quantization (WEIGHT_QUANT only).
  int bit_num = 8;
  int64_t min_quant_weight_size = 0;
  int64_t min_quant_weight_channel = 16;
  std::vector<std::string> skip_quant_node;
  // Empty means no debug report is written.
  std::string debug_info_save_path;

  bool operator==(const CommonQuantParam&) const = default;
};

// Only consulted when quant_type is WEIGHT_QUANT and bit_num is 0; otherwise
// the values are still checked but have no effect.
struct MixedBitWeightQuantParam {
  double init_scale = 0.02;
  bool auto_tune = false;

  bool operator==(const MixedBitWeightQuantParam&) const = default;
};

// Only consulted for FULL_QUANT.
struct FullQuantParam {
  ActivationQuantMethod activation_quant_method = ActivationQuantMethod::kMaxMin;
  bool bias_correction = true;
  TargetDevice target_device = TargetDevice::kDefault;

  bool operator==(const FullQuantParam&) const = default;
};

// Only consulted for DYNAMIC_QUANT.
struct DynamicQuantParam {
  // ORT_FUSED writes ONNX Runtime's com.microsoft DynamicQuantizeMatMul, one
  // node per MatMul with its bias; STANDARD keeps to standard ONNX operators
  // (DynamicQuantizeLinear, MatMulInteger, ...) for other runtimes, at about
  // 650 more bytes of graph per MatMul.
  DynamicOperatorForm operator_form = DynamicOperatorForm::kOrtFused;

  bool operator==(const DynamicQuantParam&) const = default;
};

// One model input and the folder holding its calibration samples. The folder
// is kept exactly as written; resolving it is up to the caller.
struct CalibrationSource {
  std::string input_name;
  std::string dir;

  bool operator==(const CalibrationSource&) const = default;
};

struct DataPreprocessParam {
  // True when the [data_preprocess_param] section appeared at all.
  bool present = false;
  std::vector<CalibrationSource> calibrate_path;
  // 0 means "every calibration file available"; a config text can only
  // produce it by leaving calibrate_size out, because the written range is
  // 1..65535.
  int calibrate_size = 0;
  InputType input_type = InputType::kImage;
  ImageFormat image_to_format = ImageFormat::kUnchanged;
  // Empty means no normalization; otherwise both have the same length, 1 or 3.
  std::vector<double> normalize_mean, normalize_std;
  std::optional<int> resize_width, resize_height;
  ResizeMethod resize_method = ResizeMethod::kLinear;
  std::optional<int> center_crop_width, center_crop_height;

  bool operator==(const DataPreprocessParam&) const = default;
};

struct QuantConfig {
  CommonQuantParam common;
  MixedBitWeightQuantParam mixed_bit;
  FullQuantParam full;
  DynamicQuantParam dynamic;
  DataPreprocessParam preprocess;

  bool operator==(const QuantConfig&) const = default;
};

struct ValidationContext {
  // True when the service receives the calibration set as an uploaded
  // archive: FULL_QUANT may then leave out calibrate_path, calibrate_size
  // (0 = use every file) and input_type (IMAGE), or the whole
  // [data_preprocess_param] section.
  bool calibration_supplied_separately = false;
};

// Largest configuration text accepted; anything bigger is CONFIG_TOO_LARGE.
inline constexpr size_t kMaxConfigBytes = 1 << 20;

// Parses either form and validates the result. The INI form is recognised by
// its first line that is neither blank nor a '#'/';' comment being a
// "[section]" header; everything else is read as YAML.
//
// Every failure is kInvalidArgument with one of these reasons:
//   CONFIG_SYNTAX, CONFIG_TOO_LARGE, CONFIG_UNKNOWN_SECTION,
//   CONFIG_UNKNOWN_KEY, CONFIG_WRONG_TYPE, CONFIG_VALUE_OUT_OF_RANGE,
//   CONFIG_MISSING_KEY, CONFIG_DUPLICATE_KEY, CONFIG_INCONSISTENT
// and a message that starts with the offending "section.key" where there is
// one and says what would be accepted.
StatusOr<QuantConfig> ParseQuantConfig(std::string_view text, const ValidationContext& ctx = {});

// The checks that can be made on the typed value alone (ranges and
// cross-field consistency). ParseQuantConfig runs it; callers that build a
// QuantConfig by other means should run it too.
Status ValidateQuantConfig(const QuantConfig& cfg, const ValidationContext& ctx);

// Spelled as in the converter_lite documentation.
std::string ToString(QuantType v);              // WEIGHT_QUANT, FULL_QUANT, DYNAMIC_QUANT
std::string ToString(ActivationQuantMethod v);  // MAX_MIN, KL, REMOVAL_OUTLIER
std::string ToString(TargetDevice v);           // DEFAULT, NVGPU
std::string ToString(DynamicOperatorForm v);    // ORT_FUSED, STANDARD
std::string ToString(InputType v);              // IMAGE, BIN, NPY
std::string ToString(ImageFormat v);            // UNCHANGED, RGB, GRAY, BGR
std::string ToString(ResizeMethod v);           // LINEAR, NEAREST, CUBIC

// Every field, defaults included, keyed by section and the documented key
// names; absent optionals are null. Two configs are equal exactly when their
// JSON is equal.
nlohmann::json ToJson(const QuantConfig& cfg);

}  // namespace quantd::config
