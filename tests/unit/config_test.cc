#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/config/quant_config.h"

#ifndef QUANTD_SOURCE_DIR
#error "QUANTD_SOURCE_DIR must point at the source tree so the shipped configs can be checked"
#endif

namespace quantd::config {
namespace {

// The example config files from the converter_lite post-training
// quantization documentation, verbatim.

constexpr const char* kSeedCommonSection = R"([common_quant_param]
# Supports WEIGHT_QUANT or FULL_QUANT
quant_type=WEIGHT_QUANT
# Weight quantization support the number of bits [0,16], Set to 0 is mixed bit quantization, otherwise it is fixed bit quantization
# Full quantization support 8bit
bit_num=8
# Layers with size of weights exceeds threshold `min_quant_weight_size` will be quantized.
min_quant_weight_size=0
# Layers with channel size of weights exceeds threshold `min_quant_weight_channel` will be quantized.
min_quant_weight_channel=16
# Set the name of the operator that skips the quantization, and use `,` to split between multiple operators.
skip_quant_node=node_name1,node_name2,node_name3
# Set the folder path where the quantization debug information file is saved.
debug_info_save_path=/home/workspace/mindspore/debug_info_save_path
)";

constexpr const char* kSeedMixedBitSection = R"([mixed_bit_weight_quant_param]
init_scale=0.02
auto_tune=false
)";

constexpr const char* kSeedFullSection = R"([full_quant_param]
# Activation quantized method supports MAX_MIN or KL or REMOVAL_OUTLIER
activation_quant_method=MAX_MIN
# Whether to correct the quantization error. Recommended to set to true.
bias_correction=true
)";

constexpr const char* kSeedFullNvgpuSection = R"([full_quant_param]
# Activation quantized method supports MAX_MIN or KL or REMOVAL_OUTLIER
activation_quant_method=MAX_MIN
# Supports specific hardware backends
target_device=NVGPU
)";

constexpr const char* kSeedPreprocessSection = R"([data_preprocess_param]
# Calibration dataset path, the format is input_name_1:input_1_dir,input_name_2:input_2_dir
# Full quantification must provide correction dataset
calibrate_path=input_name_1:/mnt/image/input_1_dir,input_name_2:input_2_dir
# Calibration data size
calibrate_size=100
# Input type supports IMAGE or BIN
# When set to IMAGE, the image data will be read
# When set to BIN, the `.bin` binary file will be read
input_type=IMAGE
# The output format of the preprocessed image
# Supports RGB or GRAY or BGR
image_to_format=RGB
# Image normalization
# dst = (src - mean) / std
normalize_mean=[127.5, 127.5, 127.5]
normalize_std=[127.5, 127.5, 127.5]
# Image resize
resize_width=224
resize_height=224
# Resize method supports LINEAR or NEAREST or CUBIC
resize_method=LINEAR
# Image center crop
center_crop_width=224
center_crop_height=224
)";

constexpr const char* kSeedMixedBitFile = R"([common_quant_param]
quant_type=WEIGHT_QUANT
# Weight quantization support the number of bits [0,16], Set to 0 is mixed bit quantization, otherwise it is fixed bit quantization
bit_num=0
# Layers with size of weights exceeds threshold `min_quant_weight_size` will be quantized.
min_quant_weight_size=5000
# Layers with channel size of weights exceeds threshold `min_quant_weight_channel` will be quantized.
min_quant_weight_channel=5

[mixed_bit_weight_quant_param]
# Initialization scale in (0,1).
# A larger value can get a larger compression ratio, but it may also cause a larger error.
init_scale=0.02
)";

constexpr const char* kSeedFixedBitFile = R"([common_quant_param]
quant_type=WEIGHT_QUANT
# Weight quantization support the number of bits [0,16], Set to 0 is mixed bit quantization, otherwise it is fixed bit quantization
bit_num=8
# Layers with size of weights exceeds threshold `min_quant_weight_size` will be quantized.
min_quant_weight_size=0
# Layers with channel size of weights exceeds threshold `min_quant_weight_channel` will be quantized.
min_quant_weight_channel=16
)";

constexpr const char* kSeedFullQuantFile = R"([common_quant_param]
quant_type=FULL_QUANT
# Full quantization support 8bit
bit_num=8

[data_preprocess_param]
# Calibration dataset path, the format is input_name_1:input_1_dir,input_name_2:input_2_dir
# Full quantification must provide correction dataset
calibrate_path=input_name_1:/mnt/image/input_1_dir,input_name_2:input_2_dir
# Calibration data size
calibrate_size=100
# Input type supports IMAGE or BIN
# When set to IMAGE, the image data will be read
# When set to BIN, the `.bin` binary file will be read
input_type=IMAGE
# The output format of the preprocessed image
# Supports RGB or GRAY or BGR
image_to_format=RGB
# Image normalization
# dst = (src - mean) / std
normalize_mean=[127.5, 127.5, 127.5]
normalize_std=[127.5, 127.5, 127.5]
# Image resize
resize_width=224
resize_height=224
# Resize method supports LINEAR or NEAREST or CUBIC
resize_method=LINEAR
# Image center crop
center_crop_width=224
center_crop_height=224

[full_quant_param]
# Activation quantized method supports MAX_MIN or KL or REMOVAL_OUTLIER
activation_quant_method=MAX_MIN
# Whether to correct the quantization error. Recommended to set to true.
bias_correction=true
)";

constexpr const char* kSeedDynamicFile = R"([common_quant_param]
quant_type=DYNAMIC_QUANT
bit_num=8
)";

constexpr const char* kSeedDebugSection = R"([common_quant_param]
debug_info_save_path=/home/workspace/mindspore/debug_info_save_path
)";

constexpr const char* kSeedSkipNodeSection = R"([common_quant_param]
# Supports WEIGHT_QUANT or FULL_QUANT
quant_type=FULL_QUANT
# Weight quantization support the number of bits [0,16], Set to 0 is mixed bit quantization, otherwise it is fixed bit quantization
# Full quantization support 8bit
bit_num=8
# Set the name of the operator that skips the quantization, and use `,` to split between multiple operators.
skip_quant_node=conv2d_1,add_8,concat_1
)";

const ValidationContext kUploaded{.calibration_supplied_separately = true};

QuantConfig MustParse(const std::string& text, const ValidationContext& ctx = {}) {
  auto parsed = ParseQuantConfig(text, ctx);
  EXPECT_TRUE(parsed.ok()) << parsed.status().reason() << ": " << parsed.status().message()
                           << "\n--- input ---\n"
                           << text;
  return parsed.ok() ? *parsed : QuantConfig{};
}

// Checks the reason and that the message names what it is about.
void ExpectRejected(const std::string& text, const std::string& reason,
                    const std::vector<std::string>& message_parts, const ValidationContext& ctx = {}) {
  auto parsed = ParseQuantConfig(text, ctx);
  ASSERT_FALSE(parsed.ok()) << "accepted:\n" << text;
  EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parsed.status().reason(), reason) << parsed.status().message() << "\n--- input ---\n" << text;
  for (const auto& part : message_parts) {
    EXPECT_NE(parsed.status().message().find(part), std::string::npos)
        << "message lacks \"" << part << "\": " << parsed.status().message();
  }
}

std::string ReadText(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---------------------------------------------------------------------------
// Seed examples.

TEST(SeedExamples, CommonSectionStandsAlone) {
  const QuantConfig cfg = MustParse(kSeedCommonSection);
  EXPECT_EQ(cfg.common.quant_type, QuantType::kWeightQuant);
  EXPECT_EQ(cfg.common.bit_num, 8);
  EXPECT_EQ(cfg.common.min_quant_weight_size, 0);
  EXPECT_EQ(cfg.common.min_quant_weight_channel, 16);
  EXPECT_EQ(cfg.common.skip_quant_node, (std::vector<std::string>{"node_name1", "node_name2", "node_name3"}));
  EXPECT_EQ(cfg.common.debug_info_save_path, "/home/workspace/mindspore/debug_info_save_path");
}

TEST(SeedExamples, MixedBitFile) {
  const QuantConfig cfg = MustParse(kSeedMixedBitFile);
  EXPECT_EQ(cfg.common.bit_num, 0);
  EXPECT_EQ(cfg.common.min_quant_weight_size, 5000);
  EXPECT_EQ(cfg.common.min_quant_weight_channel, 5);
  EXPECT_DOUBLE_EQ(cfg.mixed_bit.init_scale, 0.02);
  EXPECT_FALSE(cfg.mixed_bit.auto_tune);
}

TEST(SeedExamples, MixedBitSectionWithCommonHeader) {
  const QuantConfig cfg = MustParse(
      std::string("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=0\n") + kSeedMixedBitSection);
  EXPECT_DOUBLE_EQ(cfg.mixed_bit.init_scale, 0.02);
  EXPECT_FALSE(cfg.mixed_bit.auto_tune);
}

TEST(SeedExamples, FixedBitFile) {
  const QuantConfig cfg = MustParse(kSeedFixedBitFile);
  EXPECT_EQ(cfg.common.quant_type, QuantType::kWeightQuant);
  EXPECT_EQ(cfg.common.bit_num, 8);
  EXPECT_FALSE(cfg.preprocess.present);
}

TEST(SeedExamples, FullQuantFile) {
  const QuantConfig cfg = MustParse(kSeedFullQuantFile);
  EXPECT_EQ(cfg.common.quant_type, QuantType::kFullQuant);
  const DataPreprocessParam& p = cfg.preprocess;
  EXPECT_TRUE(p.present);
  ASSERT_EQ(p.calibrate_path.size(), 2u);
  EXPECT_EQ(p.calibrate_path[0], (CalibrationSource{"input_name_1", "/mnt/image/input_1_dir"}));
  EXPECT_EQ(p.calibrate_path[1], (CalibrationSource{"input_name_2", "input_2_dir"}));
  EXPECT_EQ(p.calibrate_size, 100);
  EXPECT_EQ(p.input_type, InputType::kImage);
  EXPECT_EQ(p.image_to_format, ImageFormat::kRgb);
  EXPECT_EQ(p.normalize_mean, (std::vector<double>{127.5, 127.5, 127.5}));
  EXPECT_EQ(p.normalize_std, (std::vector<double>{127.5, 127.5, 127.5}));
  EXPECT_EQ(p.resize_width, 224);
  EXPECT_EQ(p.resize_height, 224);
  EXPECT_EQ(p.resize_method, ResizeMethod::kLinear);
  EXPECT_EQ(p.center_crop_width, 224);
  EXPECT_EQ(p.center_crop_height, 224);
  EXPECT_EQ(cfg.full.activation_quant_method, ActivationQuantMethod::kMaxMin);
  EXPECT_TRUE(cfg.full.bias_correction);
}

TEST(SeedExamples, FullQuantSectionsAssembled) {
  const std::string header = "[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n";
  const QuantConfig plain = MustParse(header + kSeedPreprocessSection + kSeedFullSection);
  EXPECT_EQ(plain.full.target_device, TargetDevice::kDefault);
  EXPECT_EQ(plain, MustParse(kSeedFullQuantFile));

  const QuantConfig gpu = MustParse(header + kSeedPreprocessSection + kSeedFullNvgpuSection);
  EXPECT_EQ(gpu.full.target_device, TargetDevice::kNvGpu);
  EXPECT_EQ(gpu.full.activation_quant_method, ActivationQuantMethod::kMaxMin);
}

TEST(SeedExamples, DynamicQuantFile) {
  const QuantConfig cfg = MustParse(kSeedDynamicFile);
  EXPECT_EQ(cfg.common.quant_type, QuantType::kDynamicQuant);
  EXPECT_EQ(cfg.common.bit_num, 8);
  EXPECT_EQ(cfg.dynamic.operator_form, DynamicOperatorForm::kOrtFused) << "the default";
}

TEST(DynamicQuantParam, OperatorFormInBothSpellings) {
  const QuantConfig ini = MustParse(std::string(kSeedDynamicFile) + "[dynamic_quant_param]\noperator_form=STANDARD\n");
  EXPECT_EQ(ini.dynamic.operator_form, DynamicOperatorForm::kStandard);
  const QuantConfig yaml = MustParse(
      "common_quant_param:\n  quant_type: DYNAMIC_QUANT\n  bit_num: 8\n"
      "dynamic_quant_param:\n  operator_form: STANDARD\n");
  EXPECT_EQ(yaml, ini);
  EXPECT_EQ(ToJson(ini)["dynamic_quant_param"]["operator_form"], "STANDARD");
  EXPECT_EQ(ToString(DynamicOperatorForm::kOrtFused), "ORT_FUSED");
  ExpectRejected(std::string(kSeedDynamicFile) + "[dynamic_quant_param]\noperator_form=QDQ\n",
                 "CONFIG_VALUE_OUT_OF_RANGE", {"dynamic_quant_param.operator_form", "ORT_FUSED, STANDARD"});
  ExpectRejected(std::string(kSeedDynamicFile) + "[dynamic_quant_param]\nform=STANDARD\n", "CONFIG_UNKNOWN_KEY",
                 {"dynamic_quant_param.form"});
}

TEST(SeedExamples, DebugSectionNeedsQuantType) {
  ExpectRejected(kSeedDebugSection, "CONFIG_MISSING_KEY", {"common_quant_param.quant_type"});
  const QuantConfig cfg = MustParse(std::string(kSeedDebugSection) + "quant_type=WEIGHT_QUANT\n");
  EXPECT_EQ(cfg.common.debug_info_save_path, "/home/workspace/mindspore/debug_info_save_path");
}

TEST(SeedExamples, SkipNodeExample) {
  // FULL_QUANT with no calibration section: fine only when the calibration
  // set arrives by other means.
  ExpectRejected(kSeedSkipNodeSection, "CONFIG_MISSING_KEY", {"data_preprocess_param.calibrate_path"});
  const QuantConfig uploaded = MustParse(kSeedSkipNodeSection, kUploaded);
  EXPECT_EQ(uploaded.common.skip_quant_node, (std::vector<std::string>{"conv2d_1", "add_8", "concat_1"}));
  EXPECT_EQ(uploaded.preprocess.calibrate_size, 0);
  EXPECT_TRUE(uploaded.preprocess.calibrate_path.empty());

  const QuantConfig full = MustParse(std::string(kSeedSkipNodeSection) + kSeedPreprocessSection);
  EXPECT_EQ(full.common.skip_quant_node.size(), 3u);
  EXPECT_EQ(full.preprocess.calibrate_size, 100);
}

// ---------------------------------------------------------------------------
// Defaults and equivalence of the two forms.

TEST(Defaults, MatchTheSeedTable) {
  const QuantConfig cfg = MustParse("[common_quant_param]\nquant_type=WEIGHT_QUANT\n");
  EXPECT_EQ(cfg.common.bit_num, 8);
  EXPECT_EQ(cfg.common.min_quant_weight_size, 0);
  EXPECT_EQ(cfg.common.min_quant_weight_channel, 16);
  EXPECT_TRUE(cfg.common.skip_quant_node.empty());
  EXPECT_TRUE(cfg.common.debug_info_save_path.empty());
  EXPECT_DOUBLE_EQ(cfg.mixed_bit.init_scale, 0.02);
  EXPECT_FALSE(cfg.mixed_bit.auto_tune);
  EXPECT_EQ(cfg.full.activation_quant_method, ActivationQuantMethod::kMaxMin);
  EXPECT_TRUE(cfg.full.bias_correction);
  EXPECT_EQ(cfg.full.target_device, TargetDevice::kDefault);
  EXPECT_FALSE(cfg.preprocess.present);
  EXPECT_EQ(cfg.preprocess.image_to_format, ImageFormat::kUnchanged);
  EXPECT_FALSE(cfg.preprocess.resize_width.has_value());
  EXPECT_FALSE(cfg.preprocess.center_crop_height.has_value());
  EXPECT_EQ(cfg, MustParse("common_quant_param:\n  quant_type: WEIGHT_QUANT\n"));
}

constexpr const char* kEverythingIni = R"(; every key, with non-default values where possible
[common_quant_param]
quant_type=FULL_QUANT
bit_num=8
min_quant_weight_size=100
min_quant_weight_channel=3
skip_quant_node=conv1, fc/MatMul
debug_info_save_path=/tmp/debug dir

[mixed_bit_weight_quant_param]
init_scale=0.05
auto_tune=True

[full_quant_param]
activation_quant_method=KL
bias_correction=False
target_device=NVGPU

[data_preprocess_param]
calibrate_path=image:/data/calib/images,mask:masks
calibrate_size=64
input_type=IMAGE
image_to_format=BGR
normalize_mean=[123.675, 116.28, 103.53]
normalize_std=[58.395, 57.12, 57.375]
resize_width=256
resize_height=240
resize_method=CUBIC
center_crop_width=224
center_crop_height=200
)";

constexpr const char* kEverythingYaml = R"(# every key, with non-default values where possible
common_quant_param:
  quant_type: FULL_QUANT
  bit_num: 8
  min_quant_weight_size: 100
  min_quant_weight_channel: 3
  skip_quant_node: [conv1, fc/MatMul]
  debug_info_save_path: /tmp/debug dir
mixed_bit_weight_quant_param:
  init_scale: 0.05
  auto_tune: true
full_quant_param:
  activation_quant_method: KL
  bias_correction: false
  target_device: NVGPU
data_preprocess_param:
  calibrate_path:
    image: /data/calib/images
    mask: masks
  calibrate_size: 64
  input_type: IMAGE
  image_to_format: BGR
  normalize_mean: [123.675, 116.28, 103.53]
  normalize_std:
    - 58.395
    - 57.12
    - 57.375
  resize_width: 256
  resize_height: 240
  resize_method: CUBIC
  center_crop_width: 224
  center_crop_height: 200
)";

TEST(Forms, YamlAndIniMeanTheSame) {
  const QuantConfig ini = MustParse(kEverythingIni);
  const QuantConfig yaml = MustParse(kEverythingYaml);
  EXPECT_EQ(ToJson(ini), ToJson(yaml)) << ToJson(ini).dump(2) << "\n" << ToJson(yaml).dump(2);
  EXPECT_EQ(ini, yaml);

  // Guard against both readers dropping everything to defaults.
  EXPECT_EQ(yaml.common.quant_type, QuantType::kFullQuant);
  EXPECT_EQ(yaml.common.min_quant_weight_size, 100);
  EXPECT_EQ(yaml.common.min_quant_weight_channel, 3);
  EXPECT_EQ(yaml.common.skip_quant_node, (std::vector<std::string>{"conv1", "fc/MatMul"}));
  EXPECT_EQ(yaml.common.debug_info_save_path, "/tmp/debug dir");
  EXPECT_DOUBLE_EQ(yaml.mixed_bit.init_scale, 0.05);
  EXPECT_TRUE(yaml.mixed_bit.auto_tune);
  EXPECT_EQ(yaml.full.activation_quant_method, ActivationQuantMethod::kKl);
  EXPECT_FALSE(yaml.full.bias_correction);
  EXPECT_EQ(yaml.full.target_device, TargetDevice::kNvGpu);
  EXPECT_EQ(yaml.preprocess.calibrate_path,
            (std::vector<CalibrationSource>{{"image", "/data/calib/images"}, {"mask", "masks"}}));
  EXPECT_EQ(yaml.preprocess.calibrate_size, 64);
  EXPECT_EQ(yaml.preprocess.image_to_format, ImageFormat::kBgr);
  EXPECT_EQ(yaml.preprocess.normalize_std, (std::vector<double>{58.395, 57.12, 57.375}));
  EXPECT_EQ(yaml.preprocess.resize_width, 256);
  EXPECT_EQ(yaml.preprocess.resize_height, 240);
  EXPECT_EQ(yaml.preprocess.resize_method, ResizeMethod::kCubic);
  EXPECT_EQ(yaml.preprocess.center_crop_width, 224);
  EXPECT_EQ(yaml.preprocess.center_crop_height, 200);
}

TEST(Forms, DifferentConfigsGiveDifferentJson) {
  const std::string base = "[common_quant_param]\nquant_type=WEIGHT_QUANT\n";
  EXPECT_NE(ToJson(MustParse(base)), ToJson(MustParse(base + "bit_num=4\n")));
  EXPECT_NE(ToJson(MustParse(base)), ToJson(MustParse(base + "[data_preprocess_param]\ninput_type=BIN\n")));
}

TEST(Forms, SeedCommaStringsAndYamlSequencesAgree) {
  const QuantConfig seq = MustParse(
      "common_quant_param:\n  quant_type: WEIGHT_QUANT\n  skip_quant_node: [a, b]\n"
      "data_preprocess_param:\n  normalize_mean: [1, 2, 3]\n  normalize_std: [4, 5, 6]\n");
  const QuantConfig str = MustParse(
      "common_quant_param:\n  quant_type: WEIGHT_QUANT\n  skip_quant_node: a,b\n"
      "data_preprocess_param:\n  normalize_mean: '1, 2, 3'\n  normalize_std: '[4,5,6]'\n");
  const QuantConfig ini = MustParse(
      "[common_quant_param]\nquant_type=WEIGHT_QUANT\nskip_quant_node=[a, b]\n"
      "[data_preprocess_param]\nnormalize_mean=1,2,3\nnormalize_std=[4, 5, 6]\n");
  EXPECT_EQ(seq.common.skip_quant_node, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(seq.preprocess.normalize_mean, (std::vector<double>{1, 2, 3}));
  EXPECT_EQ(seq, str);
  EXPECT_EQ(seq, ini);
}

TEST(Forms, IniToleratesCrLfBomQuotesAndSemicolonComments) {
  const QuantConfig cfg = MustParse(
      "\xEF\xBB\xBF; leading comment\r\n[ common_quant_param ]\r\n  quant_type = weight_quant  \r\n"
      "debug_info_save_path=\"/a b/c\"\r\n");
  EXPECT_EQ(cfg.common.quant_type, QuantType::kWeightQuant);
  EXPECT_EQ(cfg.common.debug_info_save_path, "/a b/c");
}

TEST(Forms, EmptySectionsAreAllowedAndMarkPresence) {
  const QuantConfig ini =
      MustParse("[common_quant_param]\nquant_type=WEIGHT_QUANT\n[data_preprocess_param]\n");
  const QuantConfig yaml =
      MustParse("common_quant_param:\n  quant_type: WEIGHT_QUANT\ndata_preprocess_param:\n");
  EXPECT_TRUE(ini.preprocess.present);
  EXPECT_EQ(ini, yaml);
}

// ---------------------------------------------------------------------------
// Enums.

TEST(Enums, AcceptedCaseInsensitively) {
  const QuantConfig cfg = MustParse(R"([common_quant_param]
quant_type=full_quant
[full_quant_param]
activation_quant_method=removal_outlier
bias_correction=TRUE
target_device=nvgpu
[data_preprocess_param]
calibrate_path=x:/d
calibrate_size=1
input_type=Image
image_to_format=gray
resize_method=Nearest
)");
  EXPECT_EQ(cfg.common.quant_type, QuantType::kFullQuant);
  EXPECT_EQ(cfg.full.activation_quant_method, ActivationQuantMethod::kRemovalOutlier);
  EXPECT_TRUE(cfg.full.bias_correction);
  EXPECT_EQ(cfg.full.target_device, TargetDevice::kNvGpu);
  EXPECT_EQ(cfg.preprocess.input_type, InputType::kImage);
  EXPECT_EQ(cfg.preprocess.image_to_format, ImageFormat::kGray);
  EXPECT_EQ(cfg.preprocess.resize_method, ResizeMethod::kNearest);
}

TEST(Enums, SeedAlternativeSpellings) {
  const std::string head = "[common_quant_param]\nquant_type=WEIGHT_QUANT\n";
  for (const char* spelling : {"RemovalOutlier", "REMOVAL_OUTLIER", "removaloutlier"}) {
    EXPECT_EQ(MustParse(head + "[full_quant_param]\nactivation_quant_method=" + spelling + "\n")
                  .full.activation_quant_method,
              ActivationQuantMethod::kRemovalOutlier)
        << spelling;
  }
  EXPECT_EQ(MustParse(head + "[full_quant_param]\nactivation_quant_method=kl\n").full.activation_quant_method,
            ActivationQuantMethod::kKl);
  EXPECT_EQ(MustParse(head + "[data_preprocess_param]\nresize_method=NEARST\n").preprocess.resize_method,
            ResizeMethod::kNearest);
  EXPECT_EQ(MustParse(head + "[data_preprocess_param]\nresize_method=cubic\n").preprocess.resize_method,
            ResizeMethod::kCubic);
  EXPECT_EQ(MustParse(head + "[data_preprocess_param]\ninput_type=npy\n").preprocess.input_type,
            InputType::kNpy);
  EXPECT_EQ(MustParse(head + "[data_preprocess_param]\ninput_type=BIN\n").preprocess.input_type,
            InputType::kBin);
  EXPECT_EQ(MustParse("common_quant_param:\n  quant_type: Dynamic_Quant\n").common.quant_type,
            QuantType::kDynamicQuant);
}

TEST(Enums, UnknownValueListsTheAllowedOnes) {
  ExpectRejected("[common_quant_param]\nquant_type=INT8\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"common_quant_param.quant_type", "WEIGHT_QUANT, FULL_QUANT, DYNAMIC_QUANT"});
  ExpectRejected(
      "[common_quant_param]\nquant_type=WEIGHT_QUANT\n[full_quant_param]\nactivation_quant_method=KL2\n",
      "CONFIG_VALUE_OUT_OF_RANGE", {"full_quant_param.activation_quant_method", "MAX_MIN"});
  ExpectRejected("[common_quant_param]\nquant_type=WEIGHT_QUANT\n[data_preprocess_param]\ninput_type=JPEG\n",
                 "CONFIG_VALUE_OUT_OF_RANGE", {"data_preprocess_param.input_type", "IMAGE, BIN, NPY"});
}

TEST(Enums, ToStringUsesSeedSpelling) {
  EXPECT_EQ(ToString(QuantType::kWeightQuant), "WEIGHT_QUANT");
  EXPECT_EQ(ToString(QuantType::kFullQuant), "FULL_QUANT");
  EXPECT_EQ(ToString(QuantType::kDynamicQuant), "DYNAMIC_QUANT");
  EXPECT_EQ(ToString(ActivationQuantMethod::kMaxMin), "MAX_MIN");
  EXPECT_EQ(ToString(ActivationQuantMethod::kKl), "KL");
  EXPECT_EQ(ToString(ActivationQuantMethod::kRemovalOutlier), "REMOVAL_OUTLIER");
  EXPECT_EQ(ToString(TargetDevice::kDefault), "DEFAULT");
  EXPECT_EQ(ToString(TargetDevice::kNvGpu), "NVGPU");
  EXPECT_EQ(ToString(InputType::kImage), "IMAGE");
  EXPECT_EQ(ToString(InputType::kBin), "BIN");
  EXPECT_EQ(ToString(InputType::kNpy), "NPY");
  EXPECT_EQ(ToString(ImageFormat::kUnchanged), "UNCHANGED");
  EXPECT_EQ(ToString(ImageFormat::kRgb), "RGB");
  EXPECT_EQ(ToString(ImageFormat::kGray), "GRAY");
  EXPECT_EQ(ToString(ImageFormat::kBgr), "BGR");
  EXPECT_EQ(ToString(ResizeMethod::kLinear), "LINEAR");
  EXPECT_EQ(ToString(ResizeMethod::kNearest), "NEAREST");
  EXPECT_EQ(ToString(ResizeMethod::kCubic), "CUBIC");
}

// ---------------------------------------------------------------------------
// calibrate_path forms and the FULL_QUANT calibration requirement.

TEST(CalibratePath, AllFormsAgree) {
  const std::string yaml_head =
      "common_quant_param:\n  quant_type: FULL_QUANT\ndata_preprocess_param:\n"
      "  calibrate_size: 10\n  input_type: BIN\n";
  const std::vector<CalibrationSource> expected = {{"a", "/data/a"}, {"b", "rel/b"}};
  const QuantConfig string_form = MustParse(yaml_head + "  calibrate_path: a:/data/a,b:rel/b\n");
  const QuantConfig map_form = MustParse(yaml_head + "  calibrate_path:\n    a: /data/a\n    b: rel/b\n");
  const QuantConfig flow_map = MustParse(yaml_head + "  calibrate_path: {a: /data/a, b: rel/b}\n");
  const QuantConfig list_form = MustParse(yaml_head + "  calibrate_path: ['a:/data/a', 'b:rel/b']\n");
  const QuantConfig ini_form = MustParse(
      "[common_quant_param]\nquant_type=FULL_QUANT\n[data_preprocess_param]\ncalibrate_size=10\n"
      "input_type=BIN\ncalibrate_path=a:/data/a, b:rel/b\n");
  EXPECT_EQ(string_form.preprocess.calibrate_path, expected);
  EXPECT_EQ(map_form, string_form);
  EXPECT_EQ(flow_map, string_form);
  EXPECT_EQ(list_form, string_form);
  EXPECT_EQ(ini_form, string_form);
}

TEST(CalibratePath, InputNamesMayContainColons) {
  const QuantConfig cfg = MustParse(
      "[common_quant_param]\nquant_type=FULL_QUANT\n[data_preprocess_param]\ncalibrate_size=10\n"
      "input_type=BIN\ncalibrate_path=serving_default_x:0:/data/x\n");
  ASSERT_EQ(cfg.preprocess.calibrate_path.size(), 1u);
  EXPECT_EQ(cfg.preprocess.calibrate_path[0], (CalibrationSource{"serving_default_x:0", "/data/x"}));
}

TEST(CalibratePath, MalformedEntries) {
  const std::string head =
      "[common_quant_param]\nquant_type=FULL_QUANT\n[data_preprocess_param]\ncalibrate_size=10\ninput_type="
      "BIN\n";
  ExpectRejected(head + "calibrate_path=/data/only_a_dir\n", "CONFIG_WRONG_TYPE",
                 {"data_preprocess_param.calibrate_path", "input_name:dir"});
  ExpectRejected(head + "calibrate_path=a:\n", "CONFIG_WRONG_TYPE", {"data_preprocess_param.calibrate_path"});
  ExpectRejected(head + "calibrate_path=a:/x,,b:/y\n", "CONFIG_WRONG_TYPE",
                 {"data_preprocess_param.calibrate_path", "empty"});
  ExpectRejected(head + "calibrate_path=a:/x,a:/y\n", "CONFIG_DUPLICATE_KEY",
                 {"data_preprocess_param.calibrate_path", "\"a\""});
}

TEST(FullQuant, RequiresCalibrationUnlessUploaded) {
  const std::string head = "[common_quant_param]\nquant_type=FULL_QUANT\n";
  ExpectRejected(head, "CONFIG_MISSING_KEY", {"data_preprocess_param.calibrate_path", "FULL_QUANT"});
  ExpectRejected(head + "[data_preprocess_param]\ncalibrate_size=10\ninput_type=IMAGE\n",
                 "CONFIG_MISSING_KEY", {"data_preprocess_param.calibrate_path"});
  ExpectRejected(head + "[data_preprocess_param]\ncalibrate_path=in:/d\ninput_type=IMAGE\n",
                 "CONFIG_MISSING_KEY", {"data_preprocess_param.calibrate_size"});
  ExpectRejected(head + "[data_preprocess_param]\ncalibrate_path=in:/d\ncalibrate_size=5\n",
                 "CONFIG_MISSING_KEY", {"data_preprocess_param.input_type"});
  ExpectRejected(head + "[data_preprocess_param]\ncalibrate_path=\ncalibrate_size=5\ninput_type=BIN\n",
                 "CONFIG_MISSING_KEY", {"data_preprocess_param.calibrate_path"});

  const QuantConfig bare = MustParse(head, kUploaded);
  EXPECT_EQ(bare.preprocess.calibrate_size, 0);  // every uploaded file
  EXPECT_EQ(bare.preprocess.input_type, InputType::kImage);
  EXPECT_FALSE(bare.preprocess.present);

  const QuantConfig typed = MustParse(head + "[data_preprocess_param]\ninput_type=NPY\n", kUploaded);
  EXPECT_EQ(typed.preprocess.input_type, InputType::kNpy);
  EXPECT_EQ(typed.preprocess.calibrate_size, 0);

  const QuantConfig sized = MustParse(head + "[data_preprocess_param]\ncalibrate_size=42\n", kUploaded);
  EXPECT_EQ(sized.preprocess.calibrate_size, 42);
  // Written bounds still hold when the set is uploaded.
  ExpectRejected(head + "[data_preprocess_param]\ncalibrate_size=0\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"data_preprocess_param.calibrate_size", "1..65535"}, kUploaded);
}

TEST(FullQuant, OtherQuantTypesIgnoreCalibration) {
  EXPECT_EQ(MustParse(kSeedDynamicFile).preprocess.calibrate_size, 0);
  // A weight-only job may carry an unused full_quant_param section.
  const QuantConfig cfg = MustParse(std::string(kSeedFixedBitFile) + kSeedFullNvgpuSection);
  EXPECT_EQ(cfg.full.target_device, TargetDevice::kNvGpu);
}

TEST(MixedBit, AutoTuneRequiresCalibrationUnlessUploaded) {
  const std::string head = "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=0\n";
  const std::string tune = "[mixed_bit_weight_quant_param]\nauto_tune=true\n";
  ExpectRejected(head + tune, "CONFIG_MISSING_KEY",
                 {"data_preprocess_param.calibrate_path", "mixed_bit_weight_quant_param.auto_tune"});
  ExpectRejected(head + tune + "[data_preprocess_param]\ninput_type=IMAGE\n", "CONFIG_MISSING_KEY",
                 {"data_preprocess_param.calibrate_path"});
  const QuantConfig uploaded = MustParse(head + tune, kUploaded);
  EXPECT_TRUE(uploaded.mixed_bit.auto_tune);
  EXPECT_EQ(uploaded.preprocess.calibrate_size, 0);  // every uploaded file
  const QuantConfig listed = MustParse(head + tune + "[data_preprocess_param]\ncalibrate_path=input:/d\n");
  EXPECT_EQ(listed.preprocess.calibrate_path, (std::vector<CalibrationSource>{{"input", "/d"}}));
  // Without the search, or with a fixed width, auto_tune has nothing to tune
  // and needs no data.
  EXPECT_FALSE(MustParse(head + "[mixed_bit_weight_quant_param]\nauto_tune=false\n").preprocess.present);
  EXPECT_TRUE(MustParse("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n" + tune).mixed_bit.auto_tune);
}

// ---------------------------------------------------------------------------
// Rejections.

TEST(Reject, UnknownSectionSuggestsClosest) {
  ExpectRejected("[common_quant_params]\nquant_type=WEIGHT_QUANT\n", "CONFIG_UNKNOWN_SECTION",
                 {"common_quant_params", "did you mean [common_quant_param]?", "line 1"});
  ExpectRejected("common_quant_param:\n  quant_type: WEIGHT_QUANT\nextras:\n  a: 1\n",
                 "CONFIG_UNKNOWN_SECTION", {"[extras]", "known sections", "line 3"});
}

TEST(Reject, UnknownKeySuggestsClosest) {
  ExpectRejected(
      "[common_quant_param]\nquant_type=WEIGHT_QUANT\nmin_quant_weigth_size=5\n", "CONFIG_UNKNOWN_KEY",
      {"common_quant_param.min_quant_weigth_size", "did you mean min_quant_weight_size?", "line 3"});
  ExpectRejected("common_quant_param:\n  quant_type: WEIGHT_QUANT\n  Bit_Num: 4\n", "CONFIG_UNKNOWN_KEY",
                 {"common_quant_param.Bit_Num", "did you mean bit_num?"});
  ExpectRejected("[common_quant_param]\nquant_type=WEIGHT_QUANT\ninit_scale=0.1\n", "CONFIG_UNKNOWN_KEY",
                 {"common_quant_param.init_scale", "belongs in [mixed_bit_weight_quant_param]"});
  auto far = ParseQuantConfig("[common_quant_param]\nquant_type=WEIGHT_QUANT\ncolour=blue\n");
  ASSERT_FALSE(far.ok());
  EXPECT_EQ(far.status().reason(), "CONFIG_UNKNOWN_KEY");
  EXPECT_EQ(far.status().message().find("did you mean"), std::string::npos) << far.status().message();
  EXPECT_NE(far.status().message().find("known keys are"), std::string::npos);
}

TEST(Reject, WrongTypes) {
  const std::string head = "[common_quant_param]\nquant_type=WEIGHT_QUANT\n";
  ExpectRejected("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=eight\n", "CONFIG_WRONG_TYPE",
                 {"common_quant_param.bit_num", "\"eight\"", "integer", "line 3"});
  ExpectRejected(head + "bit_num=8.0\n", "CONFIG_WRONG_TYPE", {"common_quant_param.bit_num"});
  ExpectRejected(head + "bit_num=\n", "CONFIG_WRONG_TYPE", {"common_quant_param.bit_num"});
  ExpectRejected(head + "min_quant_weight_size=1k\n", "CONFIG_WRONG_TYPE",
                 {"common_quant_param.min_quant_weight_size"});
  // Ignored because bit_num != 0, but a malformed value is still an error.
  ExpectRejected(head + "[mixed_bit_weight_quant_param]\nauto_tune=yes\n", "CONFIG_WRONG_TYPE",
                 {"mixed_bit_weight_quant_param.auto_tune", "true or false"});
  ExpectRejected(
      "common_quant_param:\n  quant_type: WEIGHT_QUANT\nmixed_bit_weight_quant_param:\n  auto_tune: 1\n",
      "CONFIG_WRONG_TYPE", {"mixed_bit_weight_quant_param.auto_tune"});
  ExpectRejected(head + "[full_quant_param]\nbias_correction=on\n", "CONFIG_WRONG_TYPE",
                 {"full_quant_param.bias_correction"});
  ExpectRejected(head + "[mixed_bit_weight_quant_param]\ninit_scale=small\n", "CONFIG_WRONG_TYPE",
                 {"mixed_bit_weight_quant_param.init_scale", "number"});
  ExpectRejected(head + "[data_preprocess_param]\nnormalize_mean=[1, x, 3]\nnormalize_std=[1,1,1]\n",
                 "CONFIG_WRONG_TYPE", {"data_preprocess_param.normalize_mean", "element 2", "\"x\""});
  ExpectRejected("common_quant_param:\n  quant_type: WEIGHT_QUANT\n  bit_num: [8]\n", "CONFIG_WRONG_TYPE",
                 {"common_quant_param.bit_num", "list", "line 3"});
  ExpectRejected("common_quant_param:\n  quant_type: {a: b}\n", "CONFIG_WRONG_TYPE",
                 {"common_quant_param.quant_type", "mapping"});
  ExpectRejected("common_quant_param:\n  quant_type: WEIGHT_QUANT\n  skip_quant_node: [a, []]\n",
                 "CONFIG_WRONG_TYPE", {"common_quant_param.skip_quant_node", "list"});
  ExpectRejected("common_quant_param:\n  quant_type: WEIGHT_QUANT\n  debug_info_save_path: [a]\n",
                 "CONFIG_WRONG_TYPE", {"common_quant_param.debug_info_save_path"});
  ExpectRejected(head + "skip_quant_node=a,,b\n", "CONFIG_WRONG_TYPE",
                 {"common_quant_param.skip_quant_node"});
}

TEST(Reject, NotAMapping) {
  ExpectRejected("- common_quant_param\n- quant_type\n", "CONFIG_WRONG_TYPE", {"mapping"});
  ExpectRejected("just some text\n", "CONFIG_WRONG_TYPE", {"mapping"});
  ExpectRejected("common_quant_param: WEIGHT_QUANT\n", "CONFIG_WRONG_TYPE",
                 {"[common_quant_param]", "mapping"});
  ExpectRejected("common_quant_param:\n  - quant_type: WEIGHT_QUANT\n", "CONFIG_WRONG_TYPE",
                 {"[common_quant_param]"});
}

TEST(Reject, BitNumPerQuantType) {
  {
    auto r = ParseQuantConfig("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=17\n");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().reason(), "CONFIG_VALUE_OUT_OF_RANGE");
    EXPECT_EQ(r.status().message(),
              "common_quant_param.bit_num: 17 is out of range; WEIGHT_QUANT allows 0..16");
  }
  ExpectRejected("[common_quant_param]\nbit_num=16\nquant_type=FULL_QUANT\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"common_quant_param.bit_num", "FULL_QUANT allows only 8"}, kUploaded);
  ExpectRejected("[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=4\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"common_quant_param.bit_num", "DYNAMIC_QUANT allows only 8"});
  ExpectRejected("[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=0\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"common_quant_param.bit_num"});
  ExpectRejected("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=-1\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"common_quant_param.bit_num"});
  ExpectRejected("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=99999999999999999999999\n",
                 "CONFIG_VALUE_OUT_OF_RANGE", {"common_quant_param.bit_num"});
  ExpectRejected("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=3000000000\n",
                 "CONFIG_VALUE_OUT_OF_RANGE", {"common_quant_param.bit_num"});
  for (int bits : {0, 1, 8, 16}) {
    EXPECT_EQ(
        MustParse("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=" + std::to_string(bits) + "\n")
            .common.bit_num,
        bits);
  }
}

TEST(Reject, OutOfRangeValues) {
  const std::string head = "[common_quant_param]\nquant_type=WEIGHT_QUANT\n";
  ExpectRejected(head + "min_quant_weight_size=65536\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"common_quant_param.min_quant_weight_size", "0..65535"});
  ExpectRejected(head + "min_quant_weight_channel=-1\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"common_quant_param.min_quant_weight_channel", "0..65535"});
  EXPECT_EQ(MustParse(head + "min_quant_weight_size=65535\n").common.min_quant_weight_size, 65535);
  for (const char* scale : {"0", "1", "1.5", "-0.1", "nan", "inf"}) {
    ExpectRejected(head + "[mixed_bit_weight_quant_param]\ninit_scale=" + scale + "\n",
                   "CONFIG_VALUE_OUT_OF_RANGE", {"mixed_bit_weight_quant_param.init_scale"});
  }
  EXPECT_DOUBLE_EQ(
      MustParse(head + "[mixed_bit_weight_quant_param]\ninit_scale=0.999\n").mixed_bit.init_scale, 0.999);
  const std::string pre = head + "[data_preprocess_param]\n";
  for (const char* size : {"0", "65536", "-3"}) {
    ExpectRejected(pre + "calibrate_size=" + size + "\n", "CONFIG_VALUE_OUT_OF_RANGE",
                   {"data_preprocess_param.calibrate_size", "1..65535"});
  }
  ExpectRejected(pre + "resize_width=0\nresize_height=10\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"data_preprocess_param.resize_width", "1..65535"});
  ExpectRejected(pre + "center_crop_width=10\ncenter_crop_height=70000\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"data_preprocess_param.center_crop_height"});
  ExpectRejected(pre + "normalize_mean=[0, 0, 0]\nnormalize_std=[1, 0, 1]\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"data_preprocess_param.normalize_std", "element 2", "non-zero"});
  ExpectRejected(pre + "normalize_mean=[0, 0]\nnormalize_std=[1, 1]\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"data_preprocess_param.normalize_mean", "1 or 3"});
  ExpectRejected(pre + "normalize_mean=[0, inf, 0]\nnormalize_std=[1, 1, 1]\n", "CONFIG_VALUE_OUT_OF_RANGE",
                 {"data_preprocess_param.normalize_mean", "element 2"});
}

TEST(Reject, InconsistentPreprocessing) {
  const std::string pre = "[common_quant_param]\nquant_type=WEIGHT_QUANT\n[data_preprocess_param]\n";
  ExpectRejected(pre + "normalize_mean=[0, 0, 0]\nnormalize_std=[1]\n", "CONFIG_INCONSISTENT",
                 {"data_preprocess_param.normalize_std", "must match"});
  ExpectRejected(pre + "normalize_mean=[0]\n", "CONFIG_INCONSISTENT",
                 {"data_preprocess_param.normalize_mean", "normalize_std"});
  ExpectRejected(pre + "normalize_std=[1]\n", "CONFIG_INCONSISTENT", {"data_preprocess_param.normalize_std"});
  ExpectRejected(pre + "resize_width=10\n", "CONFIG_INCONSISTENT",
                 {"data_preprocess_param.resize_width", "resize_height"});
  ExpectRejected(pre + "center_crop_height=10\n", "CONFIG_INCONSISTENT",
                 {"data_preprocess_param.center_crop_height", "center_crop_width"});
  ExpectRejected(pre + "resize_width=100\nresize_height=100\ncenter_crop_width=120\ncenter_crop_height=90\n",
                 "CONFIG_INCONSISTENT", {"data_preprocess_param.center_crop_width", "larger"});
  ExpectRejected(pre + "image_to_format=GRAY\nnormalize_mean=[1,2,3]\nnormalize_std=[1,1,1]\n",
                 "CONFIG_INCONSISTENT", {"data_preprocess_param.normalize_mean", "GRAY"});
  ExpectRejected(pre + "image_to_format=RGB\nnormalize_mean=[1]\nnormalize_std=[1]\n", "CONFIG_INCONSISTENT",
                 {"data_preprocess_param.normalize_mean", "RGB"});
  ExpectRejected(pre + "input_type=BIN\nimage_to_format=RGB\n", "CONFIG_INCONSISTENT",
                 {"data_preprocess_param.image_to_format", "BIN"});
  ExpectRejected(pre + "input_type=NPY\nresize_width=4\nresize_height=4\n", "CONFIG_INCONSISTENT",
                 {"data_preprocess_param.resize_width", "NPY"});
  // Without an explicit format either channel count is fine.
  EXPECT_EQ(MustParse(pre + "normalize_mean=[1]\nnormalize_std=[2]\n").preprocess.normalize_std,
            (std::vector<double>{2}));
}

TEST(Reject, MissingQuantType) {
  ExpectRejected("[common_quant_param]\nbit_num=8\n", "CONFIG_MISSING_KEY",
                 {"common_quant_param.quant_type", "WEIGHT_QUANT"});
  ExpectRejected("[mixed_bit_weight_quant_param]\ninit_scale=0.02\n", "CONFIG_MISSING_KEY",
                 {"common_quant_param.quant_type"});
  ExpectRejected("", "CONFIG_MISSING_KEY", {"common_quant_param.quant_type"});
  ExpectRejected("# nothing but a comment\n", "CONFIG_MISSING_KEY", {"common_quant_param.quant_type"});
  ExpectRejected("common_quant_param:\n  bit_num: 8\n", "CONFIG_MISSING_KEY",
                 {"common_quant_param.quant_type"});
}

TEST(Reject, Duplicates) {
  ExpectRejected("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\nbit_num=4\n",
                 "CONFIG_DUPLICATE_KEY", {"common_quant_param.bit_num", "lines 3 and 4"});
  ExpectRejected("common_quant_param:\n  quant_type: WEIGHT_QUANT\n  bit_num: 8\n  bit_num: 4\n",
                 "CONFIG_DUPLICATE_KEY", {"common_quant_param.bit_num", "lines 3 and 4"});
  ExpectRejected("[common_quant_param]\nquant_type=WEIGHT_QUANT\n[common_quant_param]\nbit_num=4\n",
                 "CONFIG_DUPLICATE_KEY", {"[common_quant_param]", "lines 1 and 3"});
  ExpectRejected("common_quant_param:\n  quant_type: WEIGHT_QUANT\ncommon_quant_param:\n  bit_num: 4\n",
                 "CONFIG_DUPLICATE_KEY", {"[common_quant_param]"});
}

TEST(Reject, SyntaxErrorsCarryLineNumbers) {
  ExpectRejected("[common_quant_param]\nquant_type WEIGHT_QUANT\n", "CONFIG_SYNTAX", {"line 2", "key=value"});
  ExpectRejected("# header next\n[common_quant_param\nquant_type=WEIGHT_QUANT\n", "CONFIG_SYNTAX",
                 {"line 2"});
  ExpectRejected("[common_quant_param]\n=WEIGHT_QUANT\n", "CONFIG_SYNTAX", {"line 2"});
  ExpectRejected("[]\n", "CONFIG_SYNTAX", {"line 1"});
  ExpectRejected("common_quant_param:\n  quant_type: WEIGHT_QUANT\n  skip_quant_node: [a, b\n",
                 "CONFIG_SYNTAX", {"line"});
  ExpectRejected("common_quant_param:\n  quant_type: WEIGHT_QUANT\n bit_num: 8\n", "CONFIG_SYNTAX",
                 {"line 3"});
  ExpectRejected("common_quant_param:\n  quant_type: A\n---\ncommon_quant_param:\n  quant_type: B\n",
                 "CONFIG_SYNTAX", {"one YAML document"});
  std::string with_nul = "[common_quant_param]\nquant_type=WEIGHT_QUANT";
  with_nul += '\0';
  with_nul += "\n";
  ExpectRejected(with_nul, "CONFIG_SYNTAX", {"NUL"});
}

TEST(Reject, HostileInput) {
  std::string big = "[common_quant_param]\nquant_type=WEIGHT_QUANT\n";
  big += "# " + std::string(kMaxConfigBytes, 'x') + "\n";
  ExpectRejected(big, "CONFIG_TOO_LARGE", {"limit"});

  ExpectRejected("common_quant_param:\n  quant_type: WEIGHT_QUANT\n  skip_quant_node: [[[[a]]]]\n",
                 "CONFIG_TOO_LARGE", {"line 3"});
  ExpectRejected("a: " + std::string(100000, '['), "CONFIG_TOO_LARGE", {"deeper"});
  std::string dashes;
  for (int i = 0; i < 100000; ++i) dashes += "- ";
  ExpectRejected(dashes + "x\n", "CONFIG_TOO_LARGE", {"deeper"});

  // A short text whose aliases expand to a large tree.
  std::string aliases = "common_quant_param:\n  quant_type: WEIGHT_QUANT\n  skip_quant_node: &s [";
  for (int i = 0; i < 2000; ++i) aliases += "n,";
  aliases += "n]\n";
  for (int i = 0; i < 100; ++i) aliases += "  k" + std::to_string(i) + ": *s\n";
  ASSERT_LT(aliases.size(), 8000u);
  ExpectRejected(aliases, "CONFIG_TOO_LARGE", {"nodes"});

  // Echoed input is bounded.
  auto r = ParseQuantConfig("[common_quant_param]\nquant_type=" + std::string(10000, 'Q') + "\n");
  ASSERT_FALSE(r.ok());
  EXPECT_LT(r.status().message().size(), 400u);
}

// ---------------------------------------------------------------------------
// ValidateQuantConfig on values built in code.

TEST(Validate, TypedValues) {
  QuantConfig cfg;
  EXPECT_TRUE(ValidateQuantConfig(cfg, {}).ok());
  cfg.common.quant_type = QuantType::kFullQuant;
  Status s = ValidateQuantConfig(cfg, {});
  EXPECT_EQ(s.reason(), "CONFIG_MISSING_KEY");
  EXPECT_TRUE(ValidateQuantConfig(cfg, kUploaded).ok());
  cfg.common.bit_num = 7;
  s = ValidateQuantConfig(cfg, kUploaded);
  EXPECT_EQ(s.reason(), "CONFIG_VALUE_OUT_OF_RANGE");
  EXPECT_NE(s.message().find("common_quant_param.bit_num"), std::string::npos);
  cfg.common.bit_num = 8;
  cfg.preprocess.calibrate_size = 70000;
  EXPECT_EQ(ValidateQuantConfig(cfg, kUploaded).reason(), "CONFIG_VALUE_OUT_OF_RANGE");
  cfg.preprocess.calibrate_size = 10;
  cfg.preprocess.calibrate_path = {{"x", "/a"}, {"x", "/b"}};
  EXPECT_EQ(ValidateQuantConfig(cfg, kUploaded).reason(), "CONFIG_DUPLICATE_KEY");
  cfg.preprocess.calibrate_path = {{"x", "/a"}};
  cfg.preprocess.present = true;
  EXPECT_TRUE(ValidateQuantConfig(cfg, {}).ok());
  cfg.mixed_bit.init_scale = 0;
  EXPECT_EQ(ValidateQuantConfig(cfg, {}).reason(), "CONFIG_VALUE_OUT_OF_RANGE");
}

TEST(Json, ShapeAndValues) {
  const nlohmann::json j = ToJson(MustParse(kSeedFullQuantFile));
  EXPECT_EQ(j["common_quant_param"]["quant_type"], "FULL_QUANT");
  EXPECT_EQ(j["common_quant_param"]["bit_num"], 8);
  EXPECT_EQ(j["mixed_bit_weight_quant_param"]["init_scale"], 0.02);
  EXPECT_EQ(j["full_quant_param"]["activation_quant_method"], "MAX_MIN");
  EXPECT_EQ(j["full_quant_param"]["target_device"], "DEFAULT");
  EXPECT_EQ(j["data_preprocess_param"]["calibrate_path"][1]["input_name"], "input_name_2");
  EXPECT_EQ(j["data_preprocess_param"]["calibrate_path"][1]["dir"], "input_2_dir");
  EXPECT_EQ(j["data_preprocess_param"]["normalize_mean"], nlohmann::json({127.5, 127.5, 127.5}));
  EXPECT_EQ(j["data_preprocess_param"]["resize_width"], 224);
  EXPECT_EQ(j["data_preprocess_param"]["image_to_format"], "RGB");

  const nlohmann::json w = ToJson(MustParse(kSeedFixedBitFile));
  EXPECT_TRUE(w["data_preprocess_param"]["resize_width"].is_null());
  EXPECT_EQ(w["data_preprocess_param"]["present"], false);
  EXPECT_EQ(w["common_quant_param"]["skip_quant_node"], nlohmann::json::array());
}

// ---------------------------------------------------------------------------
// The example configs shipped in configs/.

TEST(ShippedConfigs, AllParseAndPairsAgree) {
  const std::filesystem::path dir = std::filesystem::path(QUANTD_SOURCE_DIR) / "configs";
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  std::map<std::string, std::map<std::string, QuantConfig>> by_stem;  // stem -> ext -> config
  int parsed = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string ext = entry.path().extension().string();
    if (ext != ".yaml" && ext != ".cfg") continue;
    SCOPED_TRACE(entry.path().string());
    const QuantConfig cfg = MustParse(ReadText(entry.path()));
    by_stem[entry.path().stem().string()][ext] = cfg;
    ++parsed;
  }
  EXPECT_GE(parsed, 8);
  int pairs = 0;
  for (const auto& [stem, forms] : by_stem) {
    if (forms.size() == 2) {
      ++pairs;
      EXPECT_EQ(ToJson(forms.at(".yaml")), ToJson(forms.at(".cfg"))) << stem;
    }
  }
  EXPECT_GE(pairs, 1);

  for (const char* name : {"weight_quant_8bit", "weight_quant_4bit", "mixed_bit_weight_quant", "full_quant",
                           "full_quant_kl", "full_quant_nvgpu", "dynamic_quant"}) {
    EXPECT_TRUE(by_stem.contains(name) && by_stem[name].contains(".yaml")) << name;
  }
  ASSERT_TRUE(by_stem["weight_quant_8bit"].contains(".cfg"));
  EXPECT_EQ(by_stem["weight_quant_4bit"][".yaml"].common.bit_num, 4);
  EXPECT_EQ(by_stem["mixed_bit_weight_quant"][".yaml"].common.bit_num, 0);
  EXPECT_EQ(by_stem["mixed_bit_auto_tune"][".yaml"].common.bit_num, 0);
  EXPECT_TRUE(by_stem["mixed_bit_auto_tune"][".yaml"].mixed_bit.auto_tune);
  EXPECT_EQ(by_stem["dynamic_quant"][".yaml"].common.quant_type, QuantType::kDynamicQuant);
  EXPECT_EQ(by_stem["full_quant_kl"][".yaml"].full.activation_quant_method, ActivationQuantMethod::kKl);
  EXPECT_EQ(by_stem["full_quant_nvgpu"][".yaml"].full.target_device, TargetDevice::kNvGpu);

  const QuantConfig& fmnist = by_stem["full_quant"][".yaml"];
  EXPECT_EQ(fmnist.common.quant_type, QuantType::kFullQuant);
  EXPECT_EQ(fmnist.preprocess.input_type, InputType::kImage);
  EXPECT_EQ(fmnist.preprocess.image_to_format, ImageFormat::kGray);
  EXPECT_EQ(fmnist.preprocess.normalize_mean, (std::vector<double>{0}));
  EXPECT_EQ(fmnist.preprocess.normalize_std, (std::vector<double>{255}));
  EXPECT_EQ(fmnist.preprocess.calibrate_path, (std::vector<CalibrationSource>{{"input", "calib/"}}));
  EXPECT_EQ(fmnist.preprocess.calibrate_size, 100);
}

}  // namespace
}  // namespace quantd::config
