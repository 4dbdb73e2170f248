#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace quantd::testing {

std::filesystem::path SourceDir();
std::filesystem::path BinDir();
std::filesystem::path BundledModel();
std::filesystem::path TempDir(const std::string& prefix);

// A fresh TempDir that goes away, with everything in it, with the object:
// a fixture member gives each test its own scratch folder.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& prefix) : path_(TempDir(prefix)) {}
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs argv[0] with the arguments, no shell, capturing both streams.
CommandResult RunCommand(const std::vector<std::string>& argv);

// Runs the ONNX Runtime peer (tests/peer/ort_eval.js) and parses its JSON line.
nlohmann::json RunOrt(const std::vector<std::string>& args);

// A real quantd process with its real local worker processes, on a free
// loopback port and a private data dir. Workers get a private TMPDIR under
// the same root, so scratch files of killed workers go away with the test.
class QuantdProcess {
 public:
  struct Options {
    int local_workers = 2;
    std::vector<std::string> yaml_lines;   // extra quantd.yaml settings
    std::vector<std::string> extra_flags;  // e.g. {"--shutdown-grace-seconds", "20"}
    int port = 0;                          // 0: quantd picks a free one
    // Interface to bind; the ready file reports it as a loopback address.
    std::string listen_host = "127.0.0.1";
  };
  explicit QuantdProcess(Options options);
  ~QuantdProcess();
  QuantdProcess(const QuantdProcess&) = delete;
  QuantdProcess& operator=(const QuantdProcess&) = delete;

  const std::string& address() const { return address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  const std::filesystem::path& data_dir() const { return data_dir_; }
  // Private folder of this server: quantd.yaml, its log, and room for the
  // test's own files (certificates, token files).
  const std::filesystem::path& root() const { return root_; }
  // Where the local workers keep their per-process scratch folders.
  std::filesystem::path worker_scratch_root() const { return root_ / "tmp" / "quantd-worker"; }
  pid_t pid() const { return pid_; }
  // Sends SIGTERM and waits; returns the exit status.
  int Stop();
  // Sends `signal` and waits up to `timeout` for the exit; returns its status
  // (signals as 128 + number), or nullopt if it is still running.
  std::optional<int> SignalAndWait(int signal, std::chrono::milliseconds timeout);
  // SIGKILL, then waits (up to 15 s) until the worker processes it leaves
  // behind are gone too, so a later Restart() starts from a quiet machine;
  // throws if one outlives that.
  int Kill();
  // Starts quantd again on the same data dir and the same gRPC port, so
  // clients of the previous run can reconnect. Only after it has exited.
  void Restart();

  // The live local worker processes (children of quantd).
  std::vector<pid_t> WorkerPids() const;
  // The worker process started with --worker-id `worker_id`, or -1.
  pid_t WorkerPid(const std::string& worker_id) const;

 private:
  void Start();

  Options options_;
  std::filesystem::path root_, data_dir_;
  std::string address_, metrics_address_;
  pid_t pid_ = -1;
};

// Whether a process exists and has not exited (zombies count as exited).
bool ProcessAlive(pid_t pid);

// Resident memory of a process in KiB (VmRSS), or -1 if it is gone.
int64_t ResidentKib(pid_t pid);

// A chain of `layers` MatMuls with `width` x `width` float weights: a model
// whose weight quantization takes long enough to interrupt.
std::filesystem::path WriteMatMulChainModel(const std::filesystem::path& dir, int layers, int width);

// Writes `count` Fashion-MNIST images (28x28 gray PNG, from the train or
// test split of Debian's dataset-fashion-mnist) starting at `offset`.
void WriteFashionMnistImages(const std::filesystem::path& dir, int count, int offset, bool train);

// Op types of a model file, e.g. ONNX Runtime's optimized graph.
std::vector<std::string> ModelOpTypes(const std::filesystem::path& model);

// Plain HTTP GET over loopback, for the metrics endpoint.
std::string HttpGet(const std::string& host_port, const std::string& path);

}  // namespace quantd::testing
