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
#include <opencv2/imgcodecs.hpp>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace quantd::testing {

std::filesystem::path SourceDir() { return QUANTD_SOURCE_DIR; }
std::filesystem::path BinDir() { return QUANTD_BIN_DIR; }
std::filesystem::path BundledModel() { return SourceDir() / "models" / "fashion_cnn.onnx"; }

std::filesystem::path TempDir(const std::string& prefix) {
  std::random_device rd;
  auto dir = std::filesystem::temp_directory_path() / (prefix + std::to_string(rd()) + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
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

QuantdProcess::QuantdProcess(Options options) {
  root_ = TempDir("quantd-e2e-");
  data_dir_ = root_ / "data";
  auto ready = root_ / "ready.json";
  auto yaml = root_ / "quantd.yaml";
  {
    std::ofstream out(yaml);
    for (const auto& line : options.yaml_lines) out << line << "\n";
  }
  std::vector<std::string> argv = {(BinDir() / "quantd").string(),
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--metrics-listen",
                                   "127.0.0.1:0",
                                   "--data-dir",
                                   data_dir_.string(),
                                   "--local-workers",
                                   std::to_string(options.local_workers),
                                   "--config",
                                   yaml.string(),
                                   "--ready-file",
                                   ready.string()};
  pid_ = ::fork();
  if (pid_ == 0) {
    int log = ::open((root_ / "quantd.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(log, 2);
    std::vector<char*> args;
    for (auto& arg : argv) args.push_back(arg.data());
    args.push_back(nullptr);
    ::execv(args[0], args.data());
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

int QuantdProcess::Stop() {
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

QuantdProcess::~QuantdProcess() {
  Stop();
  std::error_code ec;
  if (!std::getenv("QUANTD_KEEP_TEST_DIRS")) std::filesystem::remove_all(root_, ec);
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
