// quantctl: command-line client for quantd, and the in-process `convert`.
#include <google/protobuf/util/json_util.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <thread>

#include "client/client.h"
#include "client/progress.h"
#include "common/archive.h"
#include "common/channel.h"
#include "common/files.h"
#include "common/ids.h"
#include "worker/calib/dataset.h"
#include "worker/onnx/model_io.h"
#include "worker/pipeline/pipeline.h"
#include "worker/runtime/executor.h"

namespace {

using quantd::Status;
namespace v1 = quantd::v1;

constexpr const char* kUsage = R"(usage: quantctl [--server ADDR] COMMAND [flags]

commands:
  submit --model M.onnx --config C.yaml [--calib NAME=DIR ...] [--priority P]
         [--device cpu|gpu|any] [--label K=V ...] [--request-id ID] [--wait] [--out DIR]
         [--memory-limit-mb MB] [--time-limit-seconds S]   (capped by the server's maximums)
         Without --wait prints only the job id.
  watch JOB            follow a job's progress and logs until it ends
  list [--state S] [--limit N]
  get JOB              the job record as JSON
  cancel JOB
  fetch JOB --out DIR  download the job's artifacts (resumes partial downloads)
  convert --model M.onnx --config C.yaml [--calib NAME=DIR ...] --out DIR
                       run the quantization pipeline here, with no server
  run --model M.onnx --input NAME=FILE.npy ... --out DIR [--threads N]
                       run a model in quantd's executor; writes each output as DIR/NAME.npy
  bench --model M.onnx [--batch B] [--iters K] [--threads N]
                       time the executor on random inputs; prints {"ms_per_batch": ...}

global flags (before the command):
  --server ADDR          quantd address; default $QUANTD_SERVER or 127.0.0.1:50051
  --token-file PATH      bearer token for a server with authentication (default: $QUANTD_TOKEN)
  --tls                  connect with TLS, trusting the system's CAs
  --ca-cert PEM          connect with TLS, trusting this CA (implies --tls)
  --client-cert PEM --client-key PEM
                         client certificate for a server that requires mutual TLS

Exit status: 0 success; 1 the job failed or was cancelled; 2 usage or request error.
)";

[[noreturn]] void Die(const std::string& message, int code = 2) {
  std::cerr << "quantctl: " << message << "\n";
  std::exit(code);
}

[[noreturn]] void DieStatus(const Status& status) {
  Die(status.message() + (status.reason().empty() ? "" : " [" + status.reason() + "]"));
}

// Flags of one subcommand: repeated flags keep every value in order.
struct Args {
  std::vector<std::string> positional;
  std::multimap<std::string, std::string> flags;
  std::map<std::string, bool> switches;

  std::optional<std::string> Get(const std::string& name) const {
    auto it = flags.find(name);
    if (it == flags.end()) return std::nullopt;
    return it->second;
  }
  std::string Require(const std::string& name) const {
    auto value = Get(name);
    if (!value) Die("missing --" + name + " (see --help)");
    return *value;
  }
  std::vector<std::string> All(const std::string& name) const {
    std::vector<std::string> values;
    auto [begin, end] = flags.equal_range(name);
    for (auto it = begin; it != end; ++it) values.push_back(it->second);
    return values;
  }
  bool Has(const std::string& name) const { return switches.count(name) > 0; }
};

Args ParseArgs(int argc, char** argv, int start, const std::vector<std::string>& valued,
               const std::vector<std::string>& boolean) {
  Args args;
  for (int i = start; i < argc; ++i) {
    std::string token = argv[i];
    if (token.rfind("--", 0) != 0) {
      args.positional.push_back(token);
      continue;
    }
    std::string name = token.substr(2);
    std::optional<std::string> inline_value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (std::find(boolean.begin(), boolean.end(), name) != boolean.end()) {
      args.switches[name] = true;
    } else if (std::find(valued.begin(), valued.end(), name) != valued.end()) {
      if (!inline_value) {
        if (i + 1 >= argc) Die("--" + name + " needs a value");
        inline_value = argv[++i];
      }
      args.flags.emplace(name, *inline_value);
    } else {
      Die("unknown flag --" + name + " (see --help)");
    }
  }
  return args;
}

std::vector<quantd::pipeline::CalibrationFolder> ParseCalib(const Args& args) {
  std::vector<quantd::pipeline::CalibrationFolder> folders;
  for (const auto& spec : args.All("calib")) {
    auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
      Die("--calib takes NAME=DIR (model input name and folder), got '" + spec + "'");
    }
    std::filesystem::path dir = spec.substr(eq + 1);
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) Die("--calib " + spec + ": " + dir.string() + " is not a folder");
    folders.push_back({spec.substr(0, eq), dir});
  }
  return folders;
}

std::string ReadText(const std::string& path, const std::string& what) {
  auto text = quantd::ReadFile(path, 1 << 20);
  if (!text.ok()) Die(what + ": " + text.status().message());
  return *text;
}

v1::DeviceClass ParseDevice(const std::string& device) {
  if (device == "cpu") return v1::DEVICE_CLASS_CPU;
  if (device == "gpu") return v1::DEVICE_CLASS_GPU;
  if (device == "any") return v1::DEVICE_CLASS_ANY;
  Die("--device must be cpu, gpu or any, got '" + device + "'");
}

int PrintWatchOutcome(const quantd::StatusOr<v1::Job>& job) {
  if (!job.ok()) DieStatus(job.status());
  if (job->state() == v1::JOB_STATE_SUCCEEDED) return 0;
  std::cerr << "quantctl: job " << job->id() << " " << quantd::client::StateName(job->state()) << ": "
            << job->failure_message() << " [" << job->failure_reason() << "]\n";
  return 1;
}

int WatchJob(quantd::client::QuantClient& client, const std::string& job_id) {
  quantd::client::ProgressPrinter printer(isatty(STDERR_FILENO) != 0, std::cerr);
  auto job = client.Watch(job_id, 0, [&](const v1::JobEvent& event) { printer.OnEvent(event); });
  printer.Finish();
  return PrintWatchOutcome(job);
}

int ParseCount(const Args& args, const std::string& name, int fallback, int max);

int Submit(quantd::client::QuantClient& client, const Args& args) {
  auto model = args.Require("model");
  auto config_text = ReadText(args.Require("config"), "--config");
  auto calibration = ParseCalib(args);
  auto model_sha = client.UploadFile(model);
  if (!model_sha.ok()) DieStatus(model_sha.status().WithContext("uploading " + model));
  v1::SubmitJobRequest request;
  request.set_request_id(args.Get("request-id").value_or(quantd::NewId("req-")));
  request.set_model_sha256(*model_sha);
  request.set_model_name(std::filesystem::path(model).filename().string());
  request.set_config_text(config_text);
  // Each calibration folder travels as a reproducible tar archive, so an
  // unchanged folder is uploaded once and resubmits reuse the blob.
  for (const auto& folder : calibration) {
    auto archive = std::filesystem::temp_directory_path() / (quantd::NewId("quantctl-calib-") + ".tar");
    auto packed = quantd::CreateTarArchive(folder.dir, archive);
    if (!packed.ok()) DieStatus(packed.WithContext("--calib " + folder.input_name));
    auto archive_sha = client.UploadFile(archive);
    std::error_code ec;
    std::filesystem::remove(archive, ec);
    if (!archive_sha.ok())
      DieStatus(archive_sha.status().WithContext("uploading calibration for " + folder.input_name));
    auto* entry = request.add_calibration();
    entry->set_input_name(folder.input_name);
    entry->set_archive_sha256(*archive_sha);
  }
  if (auto priority = args.Get("priority")) {
    try {
      request.set_priority(std::stoi(*priority));
    } catch (const std::exception&) {
      Die("--priority must be an integer, got '" + *priority + "'");
    }
  }
  request.set_device(ParseDevice(args.Get("device").value_or("any")));
  request.mutable_limits()->set_memory_bytes(int64_t{ParseCount(args, "memory-limit-mb", 0, 1 << 24)} << 20);
  request.mutable_limits()->set_time_seconds(ParseCount(args, "time-limit-seconds", 0, 7 * 86400));
  for (const auto& label : args.All("label")) {
    auto eq = label.find('=');
    if (eq == std::string::npos || eq == 0) Die("--label takes KEY=VALUE, got '" + label + "'");
    (*request.mutable_labels())[label.substr(0, eq)] = label.substr(eq + 1);
  }
  auto response = client.Submit(request);
  if (!response.ok()) DieStatus(response.status());
  const auto job_id = response->job().id();
  if (!args.Has("wait")) {
    std::cout << job_id << "\n";
    return 0;
  }
  std::cerr << "job " << job_id << (response->deduplicated() ? " (already submitted)" : " submitted") << "\n";
  int code = WatchJob(client, job_id);
  if (code == 0) std::cout << job_id << "\n";
  if (code == 0 && args.Get("out")) {
    if (auto status = client.DownloadAll(job_id, *args.Get("out")); !status.ok()) DieStatus(status);
    std::cerr << "artifacts in " << *args.Get("out") << "\n";
  }
  return code;
}

int List(quantd::client::QuantClient& client, const Args& args) {
  v1::ListJobsRequest request;
  for (const auto& state : args.All("state")) {
    v1::JobState parsed;
    std::string upper;
    for (char c : state) upper.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
    if (!v1::JobState_Parse("JOB_STATE_" + upper, &parsed)) {
      Die("--state must be one of queued, running, succeeded, failed, cancelled");
    }
    request.add_states(parsed);
  }
  int limit = 50;
  if (auto value = args.Get("limit")) limit = std::max(1, std::atoi(value->c_str()));
  request.set_page_size(std::min(limit, 500));
  std::printf("%-22s %-10s %-14s %-9s %-8s %s\n", "JOB", "STATE", "TYPE", "PROGRESS", "ATTEMPTS", "MODEL");
  int printed = 0;
  while (printed < limit) {
    auto page = client.List(request);
    if (!page.ok()) DieStatus(page.status());
    for (const auto& job : page->jobs()) {
      if (printed++ >= limit) break;
      std::printf("%-22s %-10s %-14s %3.0f%% %-4s %-8d %s\n", job.id().c_str(),
                  quantd::client::StateName(job.state()).c_str(), job.quant_type().c_str(), job.progress() * 100, "",
                  job.attempts(), job.model_name().c_str());
    }
    if (page->next_page_token().empty()) break;
    request.set_page_token(page->next_page_token());
  }
  return 0;
}

int ParseCount(const Args& args, const std::string& name, int fallback, int max) {
  auto value = args.Get(name);
  if (!value) return fallback;
  try {
    size_t used = 0;
    int parsed = std::stoi(*value, &used);
    if (used == value->size() && parsed >= 1 && parsed <= max) return parsed;
  } catch (const std::exception&) {
  }
  Die("--" + name + " must be an integer in 1.." + std::to_string(max) + ", got '" + *value + "'");
}

// Prints pipeline progress of an in-process conversion.
class ConsoleObserver : public quantd::pipeline::PipelineObserver {
 public:
  explicit ConsoleObserver(bool tty) : printer_(tty, std::cerr) {}
  void OnProgress(const std::string& stage, double fraction) override { printer_.OnProgress(stage, fraction); }
  void OnLog(quantd::LogLevel level, const std::string& text) override { printer_.OnLog(text); }
  bool CancelRequested() override { return false; }
  void Finish() { printer_.Finish(); }

 private:
  quantd::client::ProgressPrinter printer_;
};

int Convert(const Args& args) {
  quantd::pipeline::PipelineRequest request;
  request.model_path = args.Require("model");
  request.config_text = ReadText(args.Require("config"), "--config");
  request.calibration = ParseCalib(args);
  request.out_dir = args.Require("out");
  request.num_threads =
      ParseCount(args, "threads", static_cast<int>(std::max(1u, std::thread::hardware_concurrency())), 256);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(request.model_path, ec)) {
    Die("--model " + request.model_path.string() + " is not a file");
  }
  ConsoleObserver observer(isatty(STDERR_FILENO) != 0);
  auto result = quantd::pipeline::RunPipeline(request, observer);
  observer.Finish();
  if (!result.ok()) {
    std::cerr << "quantctl: convert failed: " << result.status().message() << " [" << result.status().reason() << "]\n";
    return 1;
  }
  std::cerr << "wrote " << request.out_dir.string() << "/model.onnx and summary.json\n";
  return 0;
}

std::unique_ptr<quantd::runtime::Executor> LoadExecutor(const std::string& path, int threads) {
  auto model = quantd::LoadModel(path, quantd::ModelLimits{});
  if (!model.ok()) DieStatus(model.status().WithContext(path));
  quantd::runtime::ExecutorOptions options;
  options.num_threads = threads;
  // Only graph outputs are returned here, so intermediates may be fused away.
  options.fuse_activations = true;
  auto executor = quantd::runtime::Executor::Create(*model, options);
  if (!executor.ok()) DieStatus(executor.status());
  return std::move(*executor);
}

int RunModel(const Args& args) {
  auto executor = LoadExecutor(args.Require("model"), ParseCount(args, "threads", 1, 256));
  std::map<std::string, quantd::runtime::Tensor> feeds;
  for (const auto& spec : args.All("input")) {
    auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0) Die("--input takes NAME=FILE.npy, got '" + spec + "'");
    auto tensor = quantd::calib::ReadNpy(spec.substr(eq + 1), int64_t{4} << 30);
    if (!tensor.ok()) DieStatus(tensor.status());
    feeds[spec.substr(0, eq)] = std::move(*tensor);
  }
  auto outputs = executor->Run(feeds);
  if (!outputs.ok()) DieStatus(outputs.status());
  std::filesystem::path out = args.Require("out");
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  for (const auto& [name, tensor] : *outputs) {
    std::string file = name;
    std::replace(file.begin(), file.end(), '/', '_');
    if (auto status = quantd::calib::WriteNpy(out / (file + ".npy"), tensor); !status.ok()) DieStatus(status);
    std::cerr << name << " " << quantd::runtime::ToString(tensor.dtype()) << " "
              << quantd::runtime::ShapeToString(tensor.shape()) << "\n";
  }
  return 0;
}

int BenchModel(const Args& args) {
  const int batch = ParseCount(args, "batch", 1, 4096);
  const int iterations = ParseCount(args, "iters", 20, 1000000);
  const int threads = ParseCount(args, "threads", 1, 256);
  auto executor = LoadExecutor(args.Require("model"), threads);
  std::map<std::string, quantd::runtime::Tensor> feeds;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  for (const auto& input : executor->inputs()) {
    if (input.optional) continue;
    quantd::runtime::Shape shape = input.shape;
    for (size_t i = 0; i < shape.size(); ++i) {
      if (shape[i] < 0) {
        if (i != 0)
          Die("input '" + input.name + "' has a dynamic dimension " + std::to_string(i) +
              "; only the batch may be dynamic");
        shape[i] = batch;
      }
    }
    if (input.dtype != quantd::runtime::DataType::kFloat)
      Die("bench feeds float32 inputs only; '" + input.name + "' is " + quantd::runtime::ToString(input.dtype));
    quantd::runtime::Tensor tensor(quantd::runtime::DataType::kFloat, shape);
    for (int64_t i = 0; i < tensor.size(); ++i) tensor.data<float>()[i] = uniform(rng);
    feeds[input.name] = std::move(tensor);
  }
  auto warm = executor->Run(feeds);
  if (!warm.ok()) DieStatus(warm.status());
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) {
    auto result = executor->Run(feeds);
    if (!result.ok()) DieStatus(result.status());
  }
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / iterations;
  std::printf("{\"model\":\"%s\",\"batch\":%d,\"threads\":%d,\"iters\":%d,\"ms_per_batch\":%.4f}\n",
              args.Require("model").c_str(), batch, threads, iterations, ms);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // oneDNN's OpenMP threads spin while idle and starve the executor's own
  // thread pool on small machines; passive waiting keeps them out of the
  // way. The OpenMP runtime reads the setting when it loads, before main(),
  // so the process re-executes itself once with it set.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    ::setenv("OMP_WAIT_POLICY", "passive", /*overwrite=*/0);
    ::execv("/proc/self/exe", argv);  // on failure, carry on as we are
  }
  std::string server = std::getenv("QUANTD_SERVER") ? std::getenv("QUANTD_SERVER") : "127.0.0.1:50051";
  quantd::ChannelOptions channel_options;
  std::string token_file;
  int i = 1;
  while (i < argc && std::string(argv[i]).rfind("--", 0) == 0) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (flag == "--tls") {
      channel_options.use_tls = true;
      ++i;
      continue;
    }
    std::string value;
    if (auto eq = flag.find('='); eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      ++i;
    } else {
      if (i + 1 >= argc) Die(flag + " needs a value");
      value = argv[i + 1];
      i += 2;
    }
    if (flag == "--server") {
      server = value;
    } else if (flag == "--token-file") {
      token_file = value;
    } else if (flag == "--ca-cert") {
      channel_options.ca_cert = value;
    } else if (flag == "--client-cert") {
      channel_options.client_cert = value;
    } else if (flag == "--client-key") {
      channel_options.client_key = value;
    } else {
      Die("unknown flag " + flag + " before the command (see --help)");
    }
  }
  channel_options.address = server;
  if (!token_file.empty()) {
    auto token = quantd::ReadTokenFile(token_file);
    if (!token.ok()) DieStatus(token.status().WithContext("--token-file"));
    channel_options.bearer_token = *token;
  } else if (const char* token = std::getenv("QUANTD_TOKEN"); token != nullptr) {
    channel_options.bearer_token = token;
  }
  if (i >= argc) Die("no command given (see --help)");
  std::string command = argv[i++];
  if (command == "help") {
    std::cout << kUsage;
    return 0;
  }
  if (command == "convert") {
    return Convert(ParseArgs(argc, argv, i, {"model", "config", "calib", "out", "threads"}, {}));
  }
  if (command == "run") return RunModel(ParseArgs(argc, argv, i, {"model", "input", "out", "threads"}, {}));
  if (command == "bench") return BenchModel(ParseArgs(argc, argv, i, {"model", "batch", "iters", "threads"}, {}));
  auto channel = quantd::OpenChannel(channel_options);
  if (!channel.ok()) DieStatus(channel.status());
  quantd::client::QuantClient client(*channel);
  if (command == "submit") {
    return Submit(client, ParseArgs(argc, argv, i,
                                    {"model", "config", "calib", "priority", "device", "label", "request-id", "out",
                                     "memory-limit-mb", "time-limit-seconds"},
                                    {"wait"}));
  }
  if (command == "list") return List(client, ParseArgs(argc, argv, i, {"state", "limit"}, {}));
  auto args = ParseArgs(argc, argv, i, {"out"}, {});
  if (args.positional.size() != 1) Die(command + " takes exactly one job id (see --help)");
  const auto& job_id = args.positional.front();
  if (command == "watch") return WatchJob(client, job_id);
  if (command == "get") {
    auto job = client.Get(job_id);
    if (!job.ok()) DieStatus(job.status());
    std::string json;
    google::protobuf::util::JsonPrintOptions options;
    options.add_whitespace = true;
    options.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(*job, &json, options);
    std::cout << json;
    return 0;
  }
  if (command == "cancel") {
    auto job = client.Cancel(job_id);
    if (!job.ok()) DieStatus(job.status());
    std::cout << job->id() << " " << quantd::client::StateName(job->state())
              << (job->state() == v1::JOB_STATE_RUNNING ? " (cancellation requested)" : "") << "\n";
    return 0;
  }
  if (command == "fetch") {
    auto out = args.Require("out");
    if (auto status = client.DownloadAll(job_id, out); !status.ok()) DieStatus(status);
    std::cerr << "artifacts in " << out << "\n";
    return 0;
  }
  Die("unknown command '" + command + "' (see --help)");
}
