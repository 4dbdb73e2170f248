#pragma once

#include <sys/types.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace quantd::testing {

std::filesystem::path SourceDir();
std::filesystem::path BinDir();
std::filesystem::path BundledModel();
std::filesystem::path TempDir(const std::string& prefix);

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
// loopback port and a private data dir.
class QuantdProcess {
 public:
  struct Options {
    int local_workers = 2;
    std::vector<std::string> yaml_lines;  // extra quantd.yaml settings
  };
  explicit QuantdProcess(Options options);
  ~QuantdProcess();
  QuantdProcess(const QuantdProcess&) = delete;
  QuantdProcess& operator=(const QuantdProcess&) = delete;

  const std::string& address() const { return address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  const std::filesystem::path& data_dir() const { return data_dir_; }
  pid_t pid() const { return pid_; }
  // Sends SIGTERM and waits; returns the exit status.
  int Stop();

 private:
  std::filesystem::path root_, data_dir_;
  std::string address_, metrics_address_;
  pid_t pid_ = -1;
};

// Writes `count` Fashion-MNIST images (28x28 gray PNG, from the train or
// test split of Debian's dataset-fashion-mnist) starting at `offset`.
void WriteFashionMnistImages(const std::filesystem::path& dir, int count, int offset, bool train);

// Op types of a model file, e.g. ONNX Runtime's optimized graph.
std::vector<std::string> ModelOpTypes(const std::filesystem::path& model);

// Plain HTTP GET over loopback, for the metrics endpoint.
std::string HttpGet(const std::string& host_port, const std::string& path);

}  // namespace quantd::testing
