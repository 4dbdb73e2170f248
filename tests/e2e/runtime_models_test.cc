// quantd's executor against ONNX Runtime on whole real models and real
// Fashion-MNIST inputs, through the user-facing `quantctl run`.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "tests/e2e/harness.h"
#include "worker/calib/dataset.h"

namespace quantd::testing {
namespace {

runtime::Tensor FashionBatch(int count, int offset) {
  gzFile in = gzopen("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz", "rb");
  if (!in) throw std::runtime_error("cannot open the Fashion-MNIST test images");
  gzseek(in, 16 + static_cast<z_off_t>(offset) * 784, SEEK_SET);
  runtime::Tensor batch(runtime::DataType::kFloat, {count, 1, 28, 28});
  std::vector<unsigned char> pixels(static_cast<size_t>(count) * 784);
  gzread(in, pixels.data(), static_cast<unsigned>(pixels.size()));
  gzclose(in);
  for (size_t i = 0; i < pixels.size(); ++i) batch.data<float>()[i] = static_cast<float>(pixels[i]) / 255.0f;
  return batch;
}

class RuntimeModelsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RuntimeModelsTest, OutputsMatchOnnxRuntime) {
  auto model = SourceDir() / "models" / GetParam();
  ASSERT_TRUE(std::filesystem::exists(model)) << model;
  ScratchDir scratch("quantd-runtime-models-");
  const auto& dir = scratch.path();
  auto input = dir / "input.npy";
  ASSERT_TRUE(calib::WriteNpy(input, FashionBatch(16, 100)).ok());
  auto ours = RunCommand({(BinDir() / "quantctl").string(), "run", "--model", model.string(), "--input",
                          "input=" + input.string(), "--out", (dir / "quantd").string()});
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  RunOrt({"run", "--model", model.string(), "--input", "input=" + input.string(), "--out", (dir / "ort").string()});
  int compared = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir / "ort")) {
    auto theirs = calib::ReadNpy(entry.path(), 1 << 30);
    auto mine = calib::ReadNpy(dir / "quantd" / entry.path().filename(), 1 << 30);
    ASSERT_TRUE(theirs.ok() && mine.ok()) << entry.path().filename();
    ASSERT_EQ(mine->shape(), theirs->shape());
    double max_diff = 0, max_ref = 0;
    for (int64_t i = 0; i < theirs->size(); ++i) {
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(mine->data<float>()[i] - theirs->data<float>()[i])));
      max_ref = std::max(max_ref, static_cast<double>(std::fabs(theirs->data<float>()[i])));
    }
    // Relative to the output's magnitude: summation order differs between
    // the two runtimes, so bit equality is not expected.
    EXPECT_LE(max_diff / std::max(max_ref, 1e-6), 1e-4) << GetParam() << " output " << entry.path().filename();
    ++compared;
  }
  EXPECT_GT(compared, 0);
}

INSTANTIATE_TEST_SUITE_P(BundledModels, RuntimeModelsTest,
                         ::testing::Values("fashion_cnn.onnx", "mobilenet_v2_fashion.onnx", "transformer_fashion.onnx"),
                         [](const auto& info) {
                           auto name = info.param.substr(0, info.param.find('.'));
                           return name;
                         });

TEST(QuantctlRunTest, WrongInputShapeIsRefusedNamingTheInputAndExpectedShape) {
  ScratchDir scratch("quantd-run-bad-");
  const auto& dir = scratch.path();
  ASSERT_TRUE(calib::WriteNpy(dir / "bad.npy", runtime::Tensor::Zeros(runtime::DataType::kFloat, {2, 3, 28, 28})).ok());
  auto run = RunCommand({(BinDir() / "quantctl").string(), "run", "--model", BundledModel().string(), "--input",
                         "input=" + (dir / "bad.npy").string(), "--out", (dir / "out").string()});
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.err.find("'input'"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("28"), std::string::npos) << run.err;
}

// Calibration decodes the next batch on another thread while one runs: a
// bad file there must still fail the conversion, naming the file, and
// leave no model behind.
TEST(QuantctlConvertTest, UnreadableImageInALaterBatchFailsNamingIt) {
  ScratchDir scratch("quantd-convert-bad-");
  const auto& dir = scratch.path();
  WriteFashionMnistImages(dir / "images", 40, 0, /*train=*/true);
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir / "images")) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  ASSERT_EQ(files.size(), 40u);
  const auto broken = files[35];  // in the second batch of 32
  {
    std::ofstream out(broken, std::ios::binary | std::ios::trunc);
    out << "not a PNG at all";
  }
  std::ofstream(dir / "config.yaml") << "common_quant_param:\n  quant_type: FULL_QUANT\n"
                                        "data_preprocess_param:\n  calibrate_path: input:"
                                     << (dir / "images").string()
                                     << "\n  calibrate_size: 40\n  input_type: IMAGE\n  image_to_format: GRAY\n"
                                        "  normalize_mean: [0]\n  normalize_std: [255]\n";
  auto convert = RunCommand({(BinDir() / "quantctl").string(), "convert", "--model", BundledModel().string(),
                             "--config", (dir / "config.yaml").string(), "--out", (dir / "out").string()});
  EXPECT_NE(convert.exit_code, 0);
  EXPECT_NE(convert.err.find(broken.filename().string()), std::string::npos) << convert.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "out" / "model.onnx"));
}

}  // namespace
}  // namespace quantd::testing
