// The service end to end: a real quantd, real worker processes, loopback
// gRPC, and every produced model checked in ONNX Runtime.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <fstream>
#include <random>
#include <regex>
#include <thread>

#include "client/client.h"
#include "common/files.h"
#include "common/ids.h"
#include "tests/e2e/harness.h"

namespace quantd::testing {
namespace {

using client::QuantClient;

std::string ReadConfig(const std::string& name) {
  auto text = ReadFile(SourceDir() / "configs" / name, 1 << 20);
  if (!text.ok()) throw std::runtime_error(text.status().message());
  return *text;
}

class ServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    QuantdProcess::Options options;
    options.local_workers = 2;
    options.yaml_lines = {"worker_heartbeat_ms: 100", "lease_ttl_seconds: 10"};
    server_ = new QuantdProcess(options);
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { client_ = std::make_unique<QuantClient>(server_->address()); }

  v1::SubmitJobRequest Request(const std::string& model_sha, const std::string& config_text) {
    v1::SubmitJobRequest request;
    request.set_request_id(NewId("req-"));
    request.set_model_sha256(model_sha);
    request.set_config_text(config_text);
    request.set_model_name("model.onnx");
    return request;
  }
  std::string Upload(const std::filesystem::path& file) {
    auto sha = client_->UploadFile(file);
    EXPECT_TRUE(sha.ok()) << sha.status().message();
    return sha.ok() ? *sha : "";
  }
  v1::Job SubmitAndWatch(const v1::SubmitJobRequest& request, std::vector<v1::JobEvent>* events = nullptr) {
    auto submitted = client_->Submit(request);
    EXPECT_TRUE(submitted.ok()) << submitted.status().message();
    std::vector<v1::JobEvent> seen;
    auto job = client_->Watch(submitted->job().id(), 0, [&](const v1::JobEvent& event) { seen.push_back(event); });
    EXPECT_TRUE(job.ok()) << job.status().message();
    if (events) *events = seen;
    return job.ok() ? *job : v1::Job();
  }

  static QuantdProcess* server_;
  std::unique_ptr<QuantClient> client_;
  ScratchDir scratch_{"quantd-e2e-out-"};
  const std::filesystem::path& out_ = scratch_.path();
};

QuantdProcess* ServiceTest::server_ = nullptr;

TEST_F(ServiceTest, WeightQuantJobRunsEndToEndAndKeepsAccuracyInOnnxRuntime) {
  auto model_sha = Upload(BundledModel());
  std::vector<v1::JobEvent> events;
  auto job = SubmitAndWatch(Request(model_sha, ReadConfig("weight_quant_8bit.yaml")), &events);
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.failure_reason() << ": " << job.failure_message();
  EXPECT_EQ(job.attempts(), 1);

  // Events: dense sequence numbers, progress fractions, artifact notices.
  ASSERT_FALSE(events.empty());
  bool saw_progress = false, saw_model_artifact = false;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq(), static_cast<int64_t>(i + 1));
    if (events[i].has_progress()) {
      saw_progress = true;
      EXPECT_GE(events[i].progress().fraction(), 0.0);
      EXPECT_LE(events[i].progress().fraction(), 1.0);
    }
    if (events[i].has_artifact() && events[i].artifact().name() == "model.onnx") saw_model_artifact = true;
  }
  EXPECT_TRUE(saw_progress);
  EXPECT_TRUE(saw_model_artifact);
  EXPECT_EQ(events.back().state().state(), v1::JOB_STATE_SUCCEEDED);

  // Resuming a watch after a given sequence replays exactly the rest.
  std::vector<int64_t> resumed;
  auto again = client_->Watch(job.id(), 3, [&](const v1::JobEvent& event) { resumed.push_back(event.seq()); });
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(resumed.size(), events.size() - 3);
  EXPECT_EQ(resumed.front(), 4);

  ASSERT_TRUE(client_->DownloadAll(job.id(), out_).ok());
  ASSERT_TRUE(std::filesystem::exists(out_ / "model.onnx"));
  std::ifstream summary_file(out_ / "summary.json");
  auto summary = nlohmann::json::parse(summary_file);
  EXPECT_EQ(summary["quant_type"], "WEIGHT_QUANT");
  EXPECT_GT(summary["weights"]["quantized"].size(), 0u);
  EXPECT_GT(summary["compression_ratio"].get<double>(), 2.5);
  EXPECT_EQ(summary["input_model"]["bytes"].get<int64_t>(), static_cast<int64_t>(std::filesystem::file_size(BundledModel())));

  auto ort = RunOrt({"eval", "--model", (out_ / "model.onnx").string(), "--reference", BundledModel().string(),
                     "--count", "10000"});
  double fp32 = ort["reference_accuracy"], int8 = ort["accuracy"];
  EXPECT_GT(fp32, 0.85);
  EXPECT_LE(std::abs(fp32 - int8), 0.002) << "fp32 " << fp32 << " vs weight-quantized " << int8;
  EXPECT_GT(ort["mean_cosine"].get<double>(), 0.999);
}

TEST_F(ServiceTest, FourBitWeightsArePackedAndStillRunInOnnxRuntime) {
  auto model_sha = Upload(BundledModel());
  auto job = SubmitAndWatch(Request(model_sha, ReadConfig("weight_quant_4bit.yaml")));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.failure_message();
  ASSERT_TRUE(client_->DownloadAll(job.id(), out_).ok());
  std::ifstream summary_file(out_ / "summary.json");
  auto summary = nlohmann::json::parse(summary_file);
  ASSERT_GT(summary["weights"]["quantized"].size(), 0u);
  for (const auto& weight : summary["weights"]["quantized"]) EXPECT_EQ(weight["storage"], "INT4");
  // Packed nibbles: the model is several times smaller than fp32.
  EXPECT_GT(summary["compression_ratio"].get<double>(), 4.0);
  auto ort = RunOrt({"eval", "--model", (out_ / "model.onnx").string(), "--reference", BundledModel().string(),
                     "--count", "2000"});
  EXPECT_GT(ort["top1_agreement"].get<double>(), 0.9);
}

TEST_F(ServiceTest, ResubmittingWithTheSameRequestIdReturnsTheSameJob) {
  auto model_sha = Upload(BundledModel());
  auto request = Request(model_sha, ReadConfig("weight_quant_8bit.yaml"));
  request.set_device(v1::DEVICE_CLASS_GPU);  // no GPU worker: it stays queued
  auto first = client_->Submit(request);
  auto second = client_->Submit(request);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_FALSE(first->deduplicated());
  EXPECT_TRUE(second->deduplicated());
  EXPECT_EQ(first->job().id(), second->job().id());
  ASSERT_TRUE(client_->Cancel(first->job().id()).ok());
}

TEST_F(ServiceTest, CancellingAQueuedJobEndsItAtOnce) {
  auto model_sha = Upload(BundledModel());
  auto request = Request(model_sha, ReadConfig("weight_quant_8bit.yaml"));
  request.set_device(v1::DEVICE_CLASS_GPU);
  auto submitted = client_->Submit(request);
  ASSERT_TRUE(submitted.ok());
  EXPECT_EQ(submitted->job().state(), v1::JOB_STATE_QUEUED);
  auto cancelled = client_->Cancel(submitted->job().id());
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
  auto job = client_->Get(submitted->job().id());
  EXPECT_EQ(job->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(job->attempts(), 0) << "a cancelled queued job must never reach a worker";
}

// A model with many large MatMul weights: enough work that a running job
// is still running when the cancellation reaches its worker.
std::filesystem::path WriteLargeModel(const std::filesystem::path& dir, int layers, int width) {
  onnx::ModelProto model;
  model.set_ir_version(8);
  auto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(13);
  auto* graph = model.mutable_graph();
  graph->set_name("large");
  auto add_value = [](onnx::ValueInfoProto* info, const std::string& name, int width) {
    info->set_name(name);
    auto* type = info->mutable_type()->mutable_tensor_type();
    type->set_elem_type(onnx::TensorProto::FLOAT);
    type->mutable_shape()->add_dim()->set_dim_value(1);
    type->mutable_shape()->add_dim()->set_dim_value(width);
  };
  add_value(graph->add_input(), "x0", width);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::string raw(static_cast<size_t>(width) * width * sizeof(float), '\0');
  for (int layer = 0; layer < layers; ++layer) {
    auto* values = reinterpret_cast<float*>(raw.data());
    for (int i = 0; i < width * width; ++i) values[i] = normal(rng);
    auto* weight = graph->add_initializer();
    weight->set_name("w" + std::to_string(layer));
    weight->set_data_type(onnx::TensorProto::FLOAT);
    weight->add_dims(width);
    weight->add_dims(width);
    weight->set_raw_data(raw);
    auto* node = graph->add_node();
    node->set_op_type("MatMul");
    node->set_name("matmul" + std::to_string(layer));
    node->add_input("x" + std::to_string(layer));
    node->add_input("w" + std::to_string(layer));
    node->add_output("x" + std::to_string(layer + 1));
  }
  add_value(graph->add_output(), "x" + std::to_string(layers), width);
  auto path = dir / "large.onnx";
  std::ofstream out(path, std::ios::binary);
  model.SerializeToOstream(&out);
  return path;
}

TEST_F(ServiceTest, CancellingARunningJobStopsItsWorker) {
  auto model = WriteLargeModel(out_, 48, 1024);
  auto model_sha = Upload(model);
  auto submitted = client_->Submit(Request(model_sha, ReadConfig("weight_quant_8bit.yaml")));
  ASSERT_TRUE(submitted.ok());
  const auto job_id = submitted->job().id();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (client_->Get(job_id)->state() == v1::JOB_STATE_QUEUED && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto requested = client_->Cancel(job_id);
  ASSERT_TRUE(requested.ok());
  ASSERT_EQ(requested->state(), v1::JOB_STATE_RUNNING) << "the job finished before it could be cancelled";
  auto job = client_->Watch(job_id, 0, [](const v1::JobEvent&) {});
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(job->failure_reason(), "CANCELLED");
  EXPECT_EQ(job->artifacts_size(), 0);
}

TEST_F(ServiceTest, GarbageModelFailsWithAClearReasonAndTheServerKeepsServing) {
  auto garbage = out_ / "garbage.onnx";
  {
    std::ofstream out(garbage, std::ios::binary);
    std::mt19937 rng(3);
    for (int i = 0; i < 4096; ++i) out.put(static_cast<char>(rng()));
  }
  auto job = SubmitAndWatch(Request(Upload(garbage), ReadConfig("weight_quant_8bit.yaml")));
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.failure_reason(), "MODEL_INVALID");
  EXPECT_NE(job.failure_message().find("ONNX"), std::string::npos) << job.failure_message();
  EXPECT_EQ(job.attempts(), 1) << "input errors are never retried";

  auto good = SubmitAndWatch(Request(Upload(BundledModel()), ReadConfig("weight_quant_8bit.yaml")));
  EXPECT_EQ(good.state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(ServiceTest, OutOfRangeConfigIsRefusedAtSubmitAndNothingIsQueued) {
  auto model_sha = Upload(BundledModel());
  v1::ListJobsRequest list;
  list.set_page_size(500);
  auto before = client_->List(list)->jobs_size();
  auto config = std::regex_replace(ReadConfig("weight_quant_8bit.yaml"), std::regex("bit_num: *8"), "bit_num: 17");
  ASSERT_NE(config.find("bit_num: 17"), std::string::npos);
  auto submitted = client_->Submit(Request(model_sha, config));
  ASSERT_FALSE(submitted.ok());
  EXPECT_EQ(submitted.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(submitted.status().reason(), "CONFIG_VALUE_OUT_OF_RANGE");
  EXPECT_NE(submitted.status().message().find("bit_num"), std::string::npos) << submitted.status().message();
  EXPECT_EQ(client_->List(list)->jobs_size(), before);
}

TEST_F(ServiceTest, UnknownJobsAndArtifactsAreNotFound) {
  auto job = client_->Get("job-doesnotexist");
  EXPECT_EQ(job.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(job.status().reason(), "JOB_NOT_FOUND");
  auto submitted = client_->Submit(Request(std::string(64, '0'), ReadConfig("weight_quant_8bit.yaml")));
  EXPECT_EQ(submitted.status().reason(), "MODEL_BLOB_MISSING");
}

TEST_F(ServiceTest, MetricsEndpointReportsJobsQueueAndUploads) {
  auto job = SubmitAndWatch(Request(Upload(BundledModel()), ReadConfig("weight_quant_8bit.yaml")));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  std::this_thread::sleep_for(std::chrono::milliseconds(700));  // one refresh tick
  auto text = HttpGet(server_->metrics_address(), "/metrics");
  EXPECT_NE(text.find("quantd_jobs{state=\"succeeded\"}"), std::string::npos) << text.substr(0, 2000);
  EXPECT_NE(text.find("quantd_queue_depth{device=\"cpu\"}"), std::string::npos);
  EXPECT_NE(text.find("quantd_job_duration_seconds_count"), std::string::npos);
  EXPECT_NE(text.find("quantd_uploaded_bytes_total"), std::string::npos);
  EXPECT_EQ(text.find("job-"), std::string::npos) << "job ids must never be metric labels";
}

TEST_F(ServiceTest, QuantctlSubmitWaitFetchAndConvertAgree) {
  auto quantctl = (BinDir() / "quantctl").string();
  auto config = (SourceDir() / "configs" / "weight_quant_8bit.yaml").string();
  auto plain = RunCommand({quantctl, "--server", server_->address(), "submit", "--model", BundledModel().string(),
                           "--config", config, "--device", "gpu"});
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_TRUE(std::regex_match(plain.out, std::regex("job-[0-9a-f]{16}\n"))) << "stdout: " << plain.out;
  auto cancel = RunCommand({quantctl, "--server", server_->address(), "cancel", plain.out.substr(0, plain.out.size() - 1)});
  EXPECT_EQ(cancel.exit_code, 0) << cancel.err;

  auto waited = RunCommand({quantctl, "--server", server_->address(), "submit", "--model", BundledModel().string(),
                            "--config", config, "--wait", "--out", (out_ / "served").string()});
  ASSERT_EQ(waited.exit_code, 0) << waited.err;
  EXPECT_NE(waited.err.find("progress"), std::string::npos) << "plain progress lines off a terminal";
  auto converted = RunCommand({quantctl, "convert", "--model", BundledModel().string(), "--config", config, "--out",
                               (out_ / "local").string()});
  ASSERT_EQ(converted.exit_code, 0) << converted.err;
  auto served_model = ReadFile(out_ / "served" / "model.onnx", 64 << 20);
  auto local_model = ReadFile(out_ / "local" / "model.onnx", 64 << 20);
  ASSERT_TRUE(served_model.ok() && local_model.ok());
  EXPECT_EQ(*served_model, *local_model) << "the service and convert run the same pipeline";

  auto bad = RunCommand({quantctl, "--server", server_->address(), "submit", "--model",
                         (SourceDir() / "README.md").string(), "--config", (SourceDir() / "README.md").string()});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << "one clear line: " << bad.err;
  auto missing = RunCommand({quantctl, "--server", server_->address(), "get", "job-0000000000000000"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.err.find("JOB_NOT_FOUND"), std::string::npos);
}

}  // namespace
}  // namespace quantd::testing

namespace quantd::testing {
namespace {

// Full quantization through the service: calibration images uploaded as an
// archive, the model checked in ONNX Runtime for accuracy and for fused
// integer kernels.
class FullQuantServiceTest : public ServiceTest {};

TEST_F(FullQuantServiceTest, MaxMinKeepsAccuracyAndOnnxRuntimeFusesIntegerKernels) {
  auto calib = out_ / "calib";
  WriteFashionMnistImages(calib, 100, 0, /*train=*/true);
  auto quantctl = (BinDir() / "quantctl").string();
  auto run = RunCommand({quantctl, "--server", server_->address(), "submit", "--model", BundledModel().string(),
                         "--config", (SourceDir() / "configs" / "full_quant.yaml").string(), "--calib",
                         "input=" + calib.string(), "--wait", "--out", (out_ / "full").string()});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  auto model = out_ / "full" / "model.onnx";
  std::ifstream summary_file(out_ / "full" / "summary.json");
  auto summary = nlohmann::json::parse(summary_file);
  EXPECT_EQ(summary["quant_type"], "FULL_QUANT");
  EXPECT_EQ(summary["full_quant"]["calibration_samples"], 100);
  EXPECT_GT(summary["full_quant"]["bias_corrected_nodes"].get<int>(), 0);

  auto optimized = out_ / "optimized.onnx";
  auto ort = RunOrt({"eval", "--model", model.string(), "--reference", BundledModel().string(), "--count", "10000",
                     "--optimized-model-path", optimized.string()});
  double fp32 = ort["reference_accuracy"], int8 = ort["accuracy"];
  EXPECT_GE(int8, fp32 - 0.003) << "fp32 " << fp32 << " vs int8 " << int8;
  // Provenance: the digests that produced this model travel inside it.
  onnx::ModelProto produced;
  std::ifstream produced_file(model, std::ios::binary);
  ASSERT_TRUE(produced.ParseFromIstream(&produced_file));
  std::map<std::string, std::string> metadata;
  for (const auto& prop : produced.metadata_props()) metadata[prop.key()] = prop.value();
  EXPECT_EQ(metadata["quantd.input_model_sha256"], summary["input_model"]["sha256"]);
  EXPECT_EQ(metadata["quantd.calibration_sha256"].size(), 64u);
  EXPECT_FALSE(metadata["quantd.version"].empty());
  auto ops = ModelOpTypes(optimized);
  EXPECT_NE(std::find(ops.begin(), ops.end(), "QLinearConv"), ops.end())
      << "ONNX Runtime did not fuse the QDQ convolutions into integer kernels";
}

// Mixed-bit weight quantization with auto_tune: the tuner runs the float
// and quantized models on the uploaded images, the result is checked in ONNX
// Runtime against the 8-bit weight-only model of the same network.
TEST_F(FullQuantServiceTest, MixedBitAutoTuneIsSmallerThanEightBitAndKeepsAccuracy) {
  auto calib = out_ / "calib";
  WriteFashionMnistImages(calib, 100, 0, /*train=*/true);
  auto quantctl = (BinDir() / "quantctl").string();
  auto mixed_config = (SourceDir() / "configs" / "mixed_bit_auto_tune.yaml").string();
  auto mixed =
      RunCommand({quantctl, "--server", server_->address(), "submit", "--model", BundledModel().string(), "--config",
                  mixed_config, "--calib", "input=" + calib.string(), "--wait", "--out", (out_ / "mixed").string()});
  ASSERT_EQ(mixed.exit_code, 0) << mixed.err;
  auto eight = RunCommand({quantctl, "--server", server_->address(), "submit", "--model", BundledModel().string(),
                           "--config", (SourceDir() / "configs" / "weight_quant_8bit.yaml").string(), "--wait", "--out",
                           (out_ / "eight").string()});
  ASSERT_EQ(eight.exit_code, 0) << eight.err;

  auto model = out_ / "mixed" / "model.onnx";
  const auto mixed_bytes = std::filesystem::file_size(model);
  const auto eight_bytes = std::filesystem::file_size(out_ / "eight" / "model.onnx");
  EXPECT_LT(mixed_bytes, eight_bytes) << "mixed-bit model is not smaller than the 8-bit one";

  std::ifstream summary_file(out_ / "mixed" / "summary.json");
  auto summary = nlohmann::json::parse(summary_file);
  EXPECT_EQ(summary["quant_type"], "WEIGHT_QUANT");
  EXPECT_EQ(summary["output_model"]["bytes"], mixed_bytes);
  const auto& weights = summary["weights"]["quantized"];
  ASSERT_FALSE(weights.empty());
  int below_eight = 0;
  for (const auto& weight : weights) {
    const int bits = weight["bits"];
    EXPECT_TRUE(bits >= 2 && bits <= 8) << weight.dump();
    EXPECT_EQ(weight["storage"], bits <= 4 ? "INT4" : "INT8") << weight.dump();
    below_eight += bits < 8;
  }
  EXPECT_GE(below_eight, 1) << "no layer got fewer than 8 bits";
  const auto& search = summary["weights"]["mixed_bit"];
  EXPECT_EQ(search["auto_tune"], true);
  EXPECT_EQ(search["layers"].size(), weights.size());
  int histogram_layers = 0;
  for (const auto& row : search["bits_histogram"]) histogram_layers += row["layers"].get<int>();
  EXPECT_EQ(histogram_layers, static_cast<int>(weights.size()));
  const auto& tuning = search["tuning"];
  EXPECT_EQ(tuning["calibration_samples"], 100);
  EXPECT_GE(tuning["output_cosine"].get<double>(), 0.99);
  EXPECT_EQ(tuning["target_met"], true);
  ASSERT_FALSE(tuning["trials"].empty());
  // The kept model is the tried one with the most INT4 weights among those
  // reaching the target.
  int chosen_int4 = -1;
  for (const auto& trial : tuning["trials"]) {
    const double scale = trial["init_scale"];
    EXPECT_TRUE(scale > 0 && scale < 1) << trial.dump();
    if (scale == search["init_scale"].get<double>()) chosen_int4 = trial["int4_layers"];
  }
  ASSERT_GE(chosen_int4, 1) << search.dump();
  for (const auto& trial : tuning["trials"]) {
    if (trial["output_cosine"].get<double>() >= tuning["target_cosine"].get<double>()) {
      EXPECT_LE(trial["int4_layers"].get<int>(), chosen_int4) << tuning.dump();
    } else {
      EXPECT_GT(trial["int4_layers"].get<int>(), chosen_int4) << tuning.dump();
    }
  }

  auto ort = RunOrt({"eval", "--model", model.string(), "--reference", BundledModel().string(), "--count", "1000"});
  double fp32 = ort["reference_accuracy"], quantized = ort["accuracy"];
  EXPECT_GE(quantized, fp32 - 0.01) << "fp32 " << fp32 << " vs mixed-bit " << quantized;
  // The cosine the tuner measured in quantd's executor on training images
  // holds in ONNX Runtime on test images.
  EXPECT_GE(ort["mean_cosine"].get<double>(), 0.99) << ort.dump();

  // `quantctl convert` runs the same pipeline, tuner included.
  auto converted = RunCommand({quantctl, "convert", "--model", BundledModel().string(), "--config", mixed_config,
                               "--calib", "input=" + calib.string(), "--out", (out_ / "local").string()});
  ASSERT_EQ(converted.exit_code, 0) << converted.err;
  auto served_model = ReadFile(model, 64 << 20);
  auto local_model = ReadFile(out_ / "local" / "model.onnx", 64 << 20);
  ASSERT_TRUE(served_model.ok() && local_model.ok());
  EXPECT_EQ(*served_model, *local_model) << "the service and convert choose the same bits";

  // Without calibration data auto_tune is refused at submit.
  {
    std::ofstream no_calib(out_ / "no_calib.yaml");
    no_calib << "common_quant_param:\n  quant_type: WEIGHT_QUANT\n  bit_num: 0\n"
                "mixed_bit_weight_quant_param:\n  auto_tune: true\n";
  }
  auto refused = RunCommand({quantctl, "--server", server_->address(), "submit", "--model", BundledModel().string(),
                             "--config", (out_ / "no_calib.yaml").string()});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("data_preprocess_param.calibrate_path"), std::string::npos) << refused.err;
}

TEST_F(FullQuantServiceTest, DynamicQuantizationOfTheTransformerKeepsAccuracyAndShrinksIt) {
  auto transformer = SourceDir() / "models" / "transformer_fashion.onnx";
  auto run = RunCommand({(BinDir() / "quantctl").string(), "--server", server_->address(), "submit", "--model",
                         transformer.string(), "--config", (SourceDir() / "configs" / "dynamic_quant.yaml").string(),
                         "--wait", "--out", (out_ / "dynamic").string()});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  auto model = out_ / "dynamic" / "model.onnx";
  auto optimized = out_ / "optimized.onnx";
  auto ort = RunOrt({"eval", "--model", model.string(), "--reference", transformer.string(), "--count", "10000",
                     "--optimized-model-path", optimized.string()});
  double fp32 = ort["reference_accuracy"], int8 = ort["accuracy"];
  EXPECT_LE(std::abs(fp32 - int8), 0.005) << "fp32 " << fp32 << " vs dynamic " << int8;
  const auto fp32_bytes = std::filesystem::file_size(transformer);
  EXPECT_LE(std::filesystem::file_size(model) * 10, fp32_bytes * 3) << "at most 30% of the fp32 file";
  // Only the attention's activation-by-activation MatMuls stay in float.
  auto original_ops = ModelOpTypes(transformer);
  auto written = ModelOpTypes(model);
  const auto fused_nodes = std::count(written.begin(), written.end(), "DynamicQuantizeMatMul");
  EXPECT_GT(fused_nodes, 0) << "the default form";
  EXPECT_EQ(fused_nodes + std::count(written.begin(), written.end(), "MatMul"),
            std::count(original_ops.begin(), original_ops.end(), "MatMul") +
                std::count(original_ops.begin(), original_ops.end(), "Gemm"));
  EXPECT_EQ(std::count(written.begin(), written.end(), "Gemm"), 0);
  auto ops = ModelOpTypes(optimized);
  auto integer_kernels = std::count(ops.begin(), ops.end(), "DynamicQuantizeMatMul") +
                         std::count(ops.begin(), ops.end(), "MatMulIntegerToFloat");
  EXPECT_GT(integer_kernels, 0) << "ONNX Runtime must run the quantized MatMuls with integer kernels";

  // The standard-operator form: same accuracy, no ONNX Runtime operators in
  // the file, and ONNX Runtime still runs it on integer kernels.
  {
    std::ofstream config(out_ / "dynamic_standard.yaml");
    config << "common_quant_param:\n  quant_type: DYNAMIC_QUANT\n  bit_num: 8\n"
              "dynamic_quant_param:\n  operator_form: STANDARD\n";
  }
  auto converted = RunCommand({(BinDir() / "quantctl").string(), "convert", "--model", transformer.string(), "--config",
                               (out_ / "dynamic_standard.yaml").string(), "--out", (out_ / "standard").string()});
  ASSERT_EQ(converted.exit_code, 0) << converted.err;
  auto standard = out_ / "standard" / "model.onnx";
  auto standard_optimized = out_ / "standard_optimized.onnx";
  auto standard_ort = RunOrt({"eval", "--model", standard.string(), "--reference", transformer.string(), "--count",
                              "10000", "--optimized-model-path", standard_optimized.string()});
  double standard_int8 = standard_ort["accuracy"];
  EXPECT_LE(std::abs(fp32 - standard_int8), 0.005) << "fp32 " << fp32 << " vs standard dynamic " << standard_int8;
  auto standard_ops = ModelOpTypes(standard);
  EXPECT_EQ(std::count(standard_ops.begin(), standard_ops.end(), "DynamicQuantizeMatMul"), 0);
  EXPECT_GT(std::count(standard_ops.begin(), standard_ops.end(), "MatMulInteger"), 0);
  EXPECT_LT(std::filesystem::file_size(model), std::filesystem::file_size(standard)) << "the fused form is smaller";
  auto standard_run = ModelOpTypes(standard_optimized);
  EXPECT_GT(std::count(standard_run.begin(), standard_run.end(), "DynamicQuantizeMatMul") +
                std::count(standard_run.begin(), standard_run.end(), "MatMulIntegerToFloat"),
            0);
}

TEST_F(FullQuantServiceTest, HostileCalibrationArchiveFailsTheJobWithAClearReason) {
  auto calib = out_ / "calib";
  WriteFashionMnistImages(calib, 4, 0, true);
  {
    std::ofstream broken(calib / "00002.png", std::ios::binary | std::ios::trunc);
    broken << "not an image";
  }
  auto run = RunCommand({(BinDir() / "quantctl").string(), "--server", server_->address(), "submit", "--model",
                         BundledModel().string(), "--config", (SourceDir() / "configs" / "full_quant.yaml").string(),
                         "--calib", "input=" + calib.string(), "--wait"});
  EXPECT_EQ(run.exit_code, 1) << run.err;
  EXPECT_NE(run.err.find("CALIBRATION_IMAGE_UNREADABLE"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("00002.png"), std::string::npos) << run.err;
}

}  // namespace
}  // namespace quantd::testing
