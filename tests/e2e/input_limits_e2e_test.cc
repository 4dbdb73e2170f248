// Limits on untrusted input set in quantd.yaml: one real server with small
// limits gets a crafted input over each of them, refuses or fails each with
// a message naming the limit, and still completes an ordinary job whose
// model runs in ONNX Runtime.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <random>
#include <thread>

#include "client/client.h"
#include "common/archive.h"
#include "common/files.h"
#include "common/ids.h"
#include "tests/e2e/harness.h"

namespace quantd::testing {
namespace {

using client::QuantClient;
using Clock = std::chrono::steady_clock;

constexpr int64_t kMaxModelBytes = 1 << 20;  // the bundled CNN is about 0.5 MiB
constexpr int kMaxGraphNodes = 20;           // the bundled CNN has 13
constexpr int kMaxArchiveEntries = 40;
constexpr int64_t kMaxArchiveBytes = 512 << 10;
constexpr int kMaxImagePixels = 1000;  // Fashion-MNIST images are 28x28 = 784

std::string ReadConfig(const std::string& name) {
  auto text = ReadFile(SourceDir() / "configs" / name, 1 << 20);
  if (!text.ok()) throw std::runtime_error(text.status().message());
  return *text;
}

class InputLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(out_ / "models");
    QuantdProcess::Options options;
    options.local_workers = 1;
    options.yaml_lines = {"limits:",
                          "  max_model_bytes: " + std::to_string(kMaxModelBytes),
                          "  max_graph_nodes: " + std::to_string(kMaxGraphNodes),
                          "  max_archive_entries: " + std::to_string(kMaxArchiveEntries),
                          "  max_archive_bytes: " + std::to_string(kMaxArchiveBytes),
                          "  max_image_pixels: " + std::to_string(kMaxImagePixels)};
    server_ = std::make_unique<QuantdProcess>(options);
    client_ = std::make_unique<QuantClient>(server_->address());
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
  }

  std::string Upload(const std::filesystem::path& file) {
    auto sha = client_->UploadFile(file);
    if (!sha.ok()) throw std::runtime_error(sha.status().message());
    return *sha;
  }

  // The folder packed as the calibration archive of the model's input.
  std::string UploadCalibration(const std::filesystem::path& folder) {
    auto tar = folder.string() + ".tar";
    auto packed = CreateTarArchive(folder, tar);
    if (!packed.ok()) throw std::runtime_error(packed.message());
    return Upload(tar);
  }

  v1::SubmitJobRequest Request(const std::string& model_sha, const std::string& config) {
    v1::SubmitJobRequest request;
    request.set_request_id(NewId("req-"));
    request.set_model_sha256(model_sha);
    request.set_config_text(ReadConfig(config));
    request.set_model_name("model.onnx");
    return request;
  }

  v1::SubmitJobRequest FullQuantRequest(const std::string& archive_sha) {
    auto request = Request(Upload(BundledModel()), "full_quant.yaml");
    auto* calibration = request.add_calibration();
    calibration->set_input_name("input");
    calibration->set_archive_sha256(archive_sha);
    return request;
  }

  std::string SubmitOrDie(const v1::SubmitJobRequest& request) {
    auto submitted = client_->Submit(request);
    if (!submitted.ok()) throw std::runtime_error(submitted.status().message());
    return submitted->job().id();
  }

  v1::Job WaitForEnd(const std::string& job_id) {
    auto deadline = Clock::now() + std::chrono::seconds(180);
    v1::Job last;
    while (Clock::now() < deadline) {
      auto job = client_->Get(job_id);
      if (job.ok()) {
        last = *job;
        if (client::IsTerminal(last.state())) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return last;
  }

  // Fails for good on the first attempt, with `reason` and a message that
  // names the quantd.yaml key.
  void ExpectFailedOver(const std::string& job_id, const std::string& reason, const std::string& key) {
    auto job = WaitForEnd(job_id);
    ASSERT_EQ(job.state(), v1::JOB_STATE_FAILED) << job.failure_reason() << ": " << job.failure_message();
    EXPECT_EQ(job.failure_reason(), reason) << job.failure_message();
    EXPECT_NE(job.failure_message().find("limits." + key), std::string::npos) << job.failure_message();
    EXPECT_EQ(job.attempts(), 1) << "input over a limit is not retried";
  }

  ScratchDir scratch_{"quantd-input-limits-"};
  const std::filesystem::path& out_ = scratch_.path();
  std::unique_ptr<QuantdProcess> server_;
  std::unique_ptr<QuantClient> client_;
};

TEST_F(InputLimitsTest, InputOverEachLimitIsRefusedWhileOrdinaryJobsComplete) {
  // Refused at submit: the server knows the blob sizes.
  auto large_model = WriteMatMulChainModel(out_ / "models", 2, 512);  // 2 MiB of weights
  auto refused = client_->Submit(Request(Upload(large_model), "weight_quant_8bit.yaml"));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().reason(), "MODEL_TOO_LARGE") << refused.status().message();
  EXPECT_NE(refused.status().message().find("limits.max_model_bytes"), std::string::npos) << refused.status().message();

  auto large_archive = out_ / "noise";
  {
    std::filesystem::create_directories(large_archive);
    std::string noise(static_cast<size_t>(kMaxArchiveBytes), '\0');
    std::mt19937 rng(5);
    for (auto& byte : noise) byte = static_cast<char>(rng());
    std::ofstream(large_archive / "noise.bin", std::ios::binary) << noise;
  }
  auto refused_archive = client_->Submit(FullQuantRequest(UploadCalibration(large_archive)));
  ASSERT_FALSE(refused_archive.ok());
  EXPECT_EQ(refused_archive.status().reason(), "ARCHIVE_LIMIT_EXCEEDED") << refused_archive.status().message();
  EXPECT_NE(refused_archive.status().message().find("limits.max_archive_bytes"), std::string::npos)
      << refused_archive.status().message();

  // Failed by the worker: only loading or extracting finds these.
  auto many_nodes = WriteMatMulChainModel(out_ / "models", kMaxGraphNodes + 5, 4);
  auto nodes_job = SubmitOrDie(Request(Upload(many_nodes), "weight_quant_8bit.yaml"));

  auto many_files = out_ / "many";
  WriteFashionMnistImages(many_files, kMaxArchiveEntries + 10, 0, /*train=*/true);
  auto entries_job = SubmitOrDie(FullQuantRequest(UploadCalibration(many_files)));

  auto big_image = out_ / "big_image";
  WriteFashionMnistImages(big_image, 3, 0, /*train=*/true);
  cv::Mat large(40, 40, CV_8UC1, cv::Scalar(128));  // 1600 pixels
  ASSERT_TRUE(cv::imwrite((big_image / "large.png").string(), large));
  auto pixels_job = SubmitOrDie(FullQuantRequest(UploadCalibration(big_image)));

  auto ordinary_job = SubmitOrDie(Request(Upload(BundledModel()), "weight_quant_8bit.yaml"));

  ExpectFailedOver(nodes_job, "MODEL_TOO_LARGE", "max_graph_nodes");
  ExpectFailedOver(entries_job, "ARCHIVE_LIMIT_EXCEEDED", "max_archive_entries");
  ExpectFailedOver(pixels_job, "CALIBRATION_IMAGE_TOO_LARGE", "max_image_pixels");

  auto done = WaitForEnd(ordinary_job);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.failure_reason() << ": " << done.failure_message();
  ASSERT_TRUE(client_->DownloadAll(ordinary_job, out_ / "ordinary").ok());
  auto ort = RunOrt({"eval", "--model", (out_ / "ordinary" / "model.onnx").string(), "--reference",
                     BundledModel().string(), "--count", "1000"});
  double fp32 = ort["reference_accuracy"], int8 = ort["accuracy"];
  EXPECT_GT(fp32, 0.8) << ort.dump();
  EXPECT_LE(std::abs(fp32 - int8), 0.01) << ort.dump();

  // Within the limits a calibration archive of images passes all three
  // checks the crafted ones failed.
  auto small_set = out_ / "small";
  WriteFashionMnistImages(small_set, 20, 0, /*train=*/true);
  auto full_job = SubmitOrDie(FullQuantRequest(UploadCalibration(small_set)));
  auto full = WaitForEnd(full_job);
  ASSERT_EQ(full.state(), v1::JOB_STATE_SUCCEEDED) << full.failure_reason() << ": " << full.failure_message();
  ASSERT_TRUE(client_->DownloadAll(full_job, out_ / "full").ok());
  auto full_ort = RunOrt({"eval", "--model", (out_ / "full" / "model.onnx").string(), "--reference",
                          BundledModel().string(), "--count", "1000"});
  EXPECT_GT(full_ort["accuracy"].get<double>(), full_ort["reference_accuracy"].get<double>() - 0.02) << full_ort.dump();
}

}  // namespace
}  // namespace quantd::testing
