#include "tests/e2e/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <onnx/onnx_pb.h>
#include <zlib.h>

#include <chrono>
#include <fstream>
#include <opencv2/imgcodecs.hpp>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <thread>

namespace quantd::testing {

std::filesystem::path SourceDir() {
  return QUANTD_SOURCE_DIR;
}
std::filesystem::path BinDir() {
  return QUANTD_BIN_DIR;
}
std::filesystem::path BundledModel() {
  return SourceDir() / "models" / "fashion_cnn.onnx";
}

std::filesystem::path TempDir(const std::string& prefix) {
  std::random_device rd;
  auto dir = std::filesystem::temp_directory_path() / (prefix + std::to_string(rd()) + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

CommandResult RunCommand(const std::vector<std::string>& argv) {
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, 0);
    std::vector<char*> args;
    for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  CommandResult result;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  char buffer[65536];
  while (open_fds > 0) {
    ::poll(fds, 2, -1);
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = ::read(fds[i].fd, buffer, sizeof(buffer));
      if (n <= 0) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? result.out : result.err).append(buffer, static_cast<size_t>(n));
      }
    }
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

nlohmann::json RunOrt(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"node", (SourceDir() / "tests" / "peer" / "ort_eval.js").string()};
  argv.insert(argv.end(), args.begin(), args.end());
  auto result = RunCommand(argv);
  if (result.exit_code != 0) {
    throw std::runtime_error("ONNX Runtime peer failed (" + std::to_string(result.exit_code) + "): " + result.err);
  }
  auto text = result.out;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  auto newline = text.rfind('\n');
  return nlohmann::json::parse(newline == std::string::npos ? text : text.substr(newline + 1));
}

QuantdProcess::QuantdProcess(Options options) : options_(std::move(options)) {
  root_ = TempDir("quantd-e2e-");
  data_dir_ = root_ / "data";
  std::filesystem::create_directories(root_ / "tmp");
  {
    std::ofstream out(root_ / "quantd.yaml");
    for (const auto& line : options_.yaml_lines) out << line << "\n";
  }
  Start();
}

void QuantdProcess::Start() {
  auto ready = root_ / "ready.json";
  std::error_code ec;
  std::filesystem::remove(ready, ec);
  // A restart binds the port the first run got, so clients can reconnect.
  std::string listen = address_.empty() ? options_.listen_host + ":" + std::to_string(options_.port) : address_;
  std::vector<std::string> argv = {(BinDir() / "quantd").string(),
                                   "--listen",
                                   listen,
                                   "--metrics-listen",
                                   "127.0.0.1:0",
                                   "--data-dir",
                                   data_dir_.string(),
                                   "--local-workers",
                                   std::to_string(options_.local_workers),
                                   "--config",
                                   (root_ / "quantd.yaml").string(),
                                   "--ready-file",
                                   ready.string()};
  argv.insert(argv.end(), options_.extra_flags.begin(), options_.extra_flags.end());
  std::vector<std::string> env;
  for (char** entry = environ; *entry; ++entry) {
    if (std::string_view(*entry).rfind("TMPDIR=", 0) != 0) env.emplace_back(*entry);
  }
  env.push_back("TMPDIR=" + (root_ / "tmp").string());
  // Everything the child touches is prepared here: after fork only
  // async-signal-safe calls are allowed in a threaded parent.
  std::vector<char*> args, envp;
  for (auto& arg : argv) args.push_back(arg.data());
  args.push_back(nullptr);
  for (auto& entry : env) envp.push_back(entry.data());
  envp.push_back(nullptr);
  auto log_path = (root_ / "quantd.log").string();
  pid_ = ::fork();
  if (pid_ == 0) {
    int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(log, 2);
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    if (std::filesystem::exists(ready)) {
      std::ifstream in(ready);
      auto info = nlohmann::json::parse(in);
      address_ = info["listen"];
      metrics_address_ = info["metrics"];
      return;
    }
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      std::ifstream log(root_ / "quantd.log");
      std::stringstream text;
      text << log.rdbuf();
      throw std::runtime_error("quantd exited at start: " + text.str());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  throw std::runtime_error("quantd did not become ready in 30 s");
}

void QuantdProcess::Restart() {
  if (pid_ > 0) throw std::runtime_error("Restart() needs the previous quantd to have exited");
  Start();
}

int QuantdProcess::Stop() {
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::optional<int> QuantdProcess::SignalAndWait(int signal, std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return std::nullopt;
  ::kill(pid_, signal);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

namespace {

// State letter from /proc/<pid>/stat, or 0 when the process is gone.
char ProcessState(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The command name is in parentheses and may hold spaces; the state follows it.
  auto close = text.rfind(')');
  if (close == std::string::npos || close + 2 >= text.size()) return 0;
  return text[close + 2];
}

std::vector<std::string> CommandLine(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::vector<std::string> args;
  std::string arg;
  while (std::getline(in, arg, '\0')) args.push_back(arg);
  return args;
}

}  // namespace

bool ProcessAlive(pid_t pid) {
  char state = ProcessState(pid);
  return state != 0 && state != 'Z' && state != 'X';
}

int QuantdProcess::Kill() {
  auto orphans = WorkerPids();
  auto status = SignalAndWait(SIGKILL, std::chrono::seconds(10));
  // The workers notice through their parent-death signal; they are no
  // longer our children, so poll instead of waiting on them.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  for (pid_t worker : orphans) {
    while (ProcessAlive(worker) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (ProcessAlive(worker)) throw std::runtime_error("worker " + std::to_string(worker) + " outlived its server");
  }
  return status.value_or(-1);
}

std::vector<pid_t> QuantdProcess::WorkerPids() const {
  std::vector<pid_t> pids;
  if (pid_ <= 0) return pids;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid_) + "/task", ec)) {
    std::ifstream in(task.path() / "children");
    pid_t child;
    while (in >> child) {
      if (ProcessAlive(child)) pids.push_back(child);
    }
  }
  return pids;
}

pid_t QuantdProcess::WorkerPid(const std::string& worker_id) const {
  for (pid_t pid : WorkerPids()) {
    auto args = CommandLine(pid);
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] == "--worker-id" && args[i + 1] == worker_id) return pid;
    }
  }
  return -1;
}

QuantdProcess::~QuantdProcess() {
  try {
    if (pid_ > 0 && !SignalAndWait(SIGTERM, std::chrono::seconds(60))) Kill();
  } catch (const std::exception&) {
    // A worker that outlived its server is reported by the tests that care.
  }
  std::error_code ec;
  if (!std::getenv("QUANTD_KEEP_TEST_DIRS")) std::filesystem::remove_all(root_, ec);
}

int64_t ResidentKib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

std::filesystem::path WriteMatMulChainModel(const std::filesystem::path& dir, int layers, int width) {
  onnx::ModelProto model;
  model.set_ir_version(8);
  model.add_opset_import()->set_version(13);
  auto* graph = model.mutable_graph();
  graph->set_name("matmul_chain");
  auto tensor_value = [width](onnx::ValueInfoProto* value, const std::string& name) {
    value->set_name(name);
    auto* tensor = value->mutable_type()->mutable_tensor_type();
    tensor->set_elem_type(onnx::TensorProto::FLOAT);
    tensor->mutable_shape()->add_dim()->set_dim_value(1);
    tensor->mutable_shape()->add_dim()->set_dim_value(width);
  };
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> uniform(-0.1f, 0.1f);
  std::vector<float> weights(static_cast<size_t>(width) * static_cast<size_t>(width));
  std::string activation = "input";
  tensor_value(graph->add_input(), activation);
  for (int layer = 0; layer < layers; ++layer) {
    for (auto& weight : weights) weight = uniform(rng);
    auto* initializer = graph->add_initializer();
    initializer->set_name("weight_" + std::to_string(layer));
    initializer->set_data_type(onnx::TensorProto::FLOAT);
    initializer->add_dims(width);
    initializer->add_dims(width);
    initializer->set_raw_data(weights.data(), weights.size() * sizeof(float));
    auto* node = graph->add_node();
    node->set_name("layer_" + std::to_string(layer));
    node->set_op_type("MatMul");
    node->add_input(activation);
    node->add_input(initializer->name());
    activation = "hidden_" + std::to_string(layer);
    node->add_output(activation);
  }
  tensor_value(graph->add_output(), activation);
  auto path = dir / ("matmul_chain_" + std::to_string(layers) + "x" + std::to_string(width) + ".onnx");
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!model.SerializeToOstream(&out)) throw std::runtime_error("cannot write " + path.string());
  return path;
}

void WriteFashionMnistImages(const std::filesystem::path& dir, int count, int offset, bool train) {
  const char* root = std::getenv("QUANTD_FASHION_MNIST_DIR");
  auto file = std::filesystem::path(root ? root : "/usr/share/datasets/fashion-mnist") /
              (train ? "train-images-idx3-ubyte.gz" : "t10k-images-idx3-ubyte.gz");
  gzFile in = gzopen(file.c_str(), "rb");
  if (!in) throw std::runtime_error("cannot open " + file.string());
  std::vector<unsigned char> header(16);
  gzread(in, header.data(), 16);
  gzseek(in, 16 + static_cast<z_off_t>(offset) * 784, SEEK_SET);
  std::filesystem::create_directories(dir);
  std::vector<unsigned char> pixels(784);
  for (int i = 0; i < count; ++i) {
    if (gzread(in, pixels.data(), 784) != 784) throw std::runtime_error("short read from " + file.string());
    cv::Mat image(28, 28, CV_8UC1, pixels.data());
    char name[32];
    std::snprintf(name, sizeof(name), "%05d.png", offset + i);
    cv::imwrite((dir / name).string(), image);
  }
  gzclose(in);
}

std::vector<std::string> ModelOpTypes(const std::filesystem::path& model_path) {
  onnx::ModelProto model;
  std::ifstream in(model_path, std::ios::binary);
  if (!model.ParseFromIstream(&in)) throw std::runtime_error("cannot parse " + model_path.string());
  std::vector<std::string> ops;
  for (const auto& node : model.graph().node()) ops.push_back(node.op_type());
  return ops;
}

std::string HttpGet(const std::string& host_port, const std::string& path) {
  auto colon = host_port.rfind(':');
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(host_port.substr(colon + 1))));
  ::inet_pton(AF_INET, host_port.substr(0, colon).c_str(), &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    throw std::runtime_error("cannot connect to " + host_port);
  }
  std::string request = "GET " + path + " HTTP/1.0\r\nHost: " + host_port + "\r\n\r\n";
  (void)::write(fd, request.data(), request.size());
  std::string response;
  char buffer[8192];
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, static_cast<size_t>(n));
  ::close(fd);
  return response;
}

}  // namespace quantd::testing
