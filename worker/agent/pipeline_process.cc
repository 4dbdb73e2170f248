#include "worker/agent/pipeline_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <mutex>
#include <new>
#include <optional>

#include "common/files.h"
#include "quantd/v1/quantd.pb.h"

namespace quantd::worker {
namespace {

// The child reports on this descriptor, in frames: a tag byte, a 4-byte
// little-endian length, then a serialized message.
constexpr int kReportFd = 3;
constexpr char kEventFrame = 'E';     // v1::JobEvent: progress or log
constexpr char kArtifactFrame = 'A';  // v1::Artifact: name is the file's path
constexpr char kTimingFrame = 'T';    // v1::StageTiming
constexpr char kDoneFrame = 'D';      // empty: the pipeline succeeded
constexpr char kFailedFrame = 'F';    // v1::ErrorDetail: reason, metadata code + message

constexpr uint32_t kMaxFrameBytes = 16 << 20;

Status MemoryLimitExceeded(int64_t limit, const std::string& detail) {
  return ResourceExhausted("MEMORY_LIMIT_EXCEEDED", "the job needed more than its memory limit of " +
                                                        std::to_string(limit >> 20) + " MiB (" + detail + ")");
}

// ---------------------------------------------------------------------------
// Child side

volatile std::sig_atomic_t g_cancel = 0;

void OnTerminate(int) {
  g_cancel = 1;
}

class FrameWriter {
 public:
  explicit FrameWriter(int fd) : fd_(fd) {}
  void Write(char tag, const std::string& payload) {
    std::lock_guard lock(mutex_);
    char header[5] = {tag, static_cast<char>(payload.size() & 0xff), static_cast<char>((payload.size() >> 8) & 0xff),
                      static_cast<char>((payload.size() >> 16) & 0xff),
                      static_cast<char>((payload.size() >> 24) & 0xff)};
    WriteAll(header, sizeof(header));
    WriteAll(payload.data(), payload.size());
  }

 private:
  void WriteAll(const char* data, size_t size) {
    while (size > 0) {
      ssize_t n = ::write(fd_, data, size);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // the worker is gone; PDEATHSIG ends this process
      data += n;
      size -= static_cast<size_t>(n);
    }
  }
  int fd_;
  std::mutex mutex_;
};

class ReportingObserver : public pipeline::PipelineObserver {
 public:
  explicit ReportingObserver(FrameWriter& out) : out_(out) {}
  void OnProgress(const std::string& stage, double fraction) override {
    v1::JobEvent event;
    event.mutable_progress()->set_stage(stage);
    event.mutable_progress()->set_fraction(fraction);
    out_.Write(kEventFrame, event.SerializeAsString());
  }
  void OnLog(LogLevel level, const std::string& text) override {
    v1::JobEvent event;
    event.mutable_log()->set_level(static_cast<v1::LogLine::Level>(static_cast<int>(level) + 1));
    event.mutable_log()->set_text(text);
    out_.Write(kEventFrame, event.SerializeAsString());
  }
  bool CancelRequested() override { return g_cancel != 0; }

 private:
  FrameWriter& out_;
};

void ReportFailure(FrameWriter& out, const Status& status) {
  v1::ErrorDetail detail;
  detail.set_reason(status.reason());
  (*detail.mutable_metadata())["code"] = std::to_string(static_cast<int>(status.code()));
  (*detail.mutable_metadata())["message"] = status.message();
  out.Write(kFailedFrame, detail.SerializeAsString());
}

// ---------------------------------------------------------------------------
// Parent side

class FrameReader {
 public:
  void Feed(const char* data, size_t size) { buffer_.append(data, size); }
  // The next whole frame, if one has arrived.
  bool Next(char& tag, std::string& payload, Status& error) {
    if (buffer_.size() < 5) return false;
    uint32_t size = 0;
    for (int i = 4; i >= 1; --i) size = (size << 8) | static_cast<unsigned char>(buffer_[static_cast<size_t>(i)]);
    if (size > kMaxFrameBytes) {
      error = Internal("PIPELINE_PROTOCOL", "the pipeline process sent a frame of " + std::to_string(size) + " bytes");
      return false;
    }
    if (buffer_.size() < 5 + size) return false;
    tag = buffer_[0];
    payload = buffer_.substr(5, size);
    buffer_.erase(0, 5 + size);
    return true;
  }

 private:
  std::string buffer_;
};

}  // namespace

bool IsLimitExceeded(const Status& status) {
  return status.reason() == "MEMORY_LIMIT_EXCEEDED" || status.reason() == "TIME_LIMIT_EXCEEDED";
}

StatusOr<pipeline::PipelineResult> RunPipelineProcess(const pipeline::PipelineRequest& request,
                                                      const PipelineLimits& limits,
                                                      pipeline::PipelineObserver& observer) {
  auto config_file = request.out_dir.parent_path() / "config.txt";
  QUANTD_RETURN_IF_ERROR(WriteFileAtomic(config_file, request.config_text));
  std::vector<std::string> args = {"/proc/self/exe",
                                   "--run-pipeline",
                                   "--model",
                                   request.model_path.string(),
                                   "--config-file",
                                   config_file.string(),
                                   "--out",
                                   request.out_dir.string(),
                                   "--threads",
                                   std::to_string(request.num_threads),
                                   "--memory-limit",
                                   std::to_string(limits.memory_bytes),
                                   "--debug-report-in-out-dir",
                                   request.debug_report_in_out_dir ? "1" : "0",
                                   "--max-model-bytes",
                                   std::to_string(request.model_limits.max_model_bytes),
                                   "--max-graph-nodes",
                                   std::to_string(request.model_limits.max_nodes),
                                   "--max-graph-depth",
                                   std::to_string(request.model_limits.max_graph_depth),
                                   "--max-tensor-elements",
                                   std::to_string(request.model_limits.max_tensor_elements),
                                   "--max-image-pixels",
                                   std::to_string(request.image_limits.max_pixels)};
  for (const auto& folder : request.calibration) {
    args.push_back("--calib");
    args.push_back(folder.input_name + "=" + folder.dir.string());
  }
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Internal("IO_ERROR", std::string("pipe: ") + std::strerror(errno));
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return Internal("IO_ERROR", std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    // Only async-signal-safe calls until exec: the parent has threads.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    if (fds[1] == kReportFd) {
      ::fcntl(kReportFd, F_SETFD, 0);
    } else {
      ::dup2(fds[1], kReportFd);
    }
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);

  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  const auto deadline = started + std::chrono::seconds(limits.time_seconds);
  bool timed_out = false;
  std::optional<Clock::time_point> last_term;
  FrameReader reader;
  Status protocol_error;
  std::optional<Status> failure;
  bool done = false;
  pipeline::PipelineResult result;
  char buffer[64 << 10];
  while (true) {
    if (limits.time_seconds > 0 && !timed_out && Clock::now() >= deadline) {
      timed_out = true;
      ::kill(pid, SIGKILL);
    }
    // Repeated, because a signal that lands before the child has installed
    // its handler (between fork and exec, say) is lost.
    if (observer.CancelRequested() && (!last_term || Clock::now() - *last_term > std::chrono::milliseconds(500))) {
      last_term = Clock::now();
      ::kill(pid, SIGTERM);
    }
    pollfd poll_fd{fds[0], POLLIN, 0};
    int ready = ::poll(&poll_fd, 1, 50);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    ssize_t n = ::read(fds[0], buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    reader.Feed(buffer, static_cast<size_t>(n));
    char tag;
    std::string payload;
    while (reader.Next(tag, payload, protocol_error)) {
      if (tag == kEventFrame) {
        v1::JobEvent event;
        if (!event.ParseFromString(payload)) continue;
        if (event.has_progress()) observer.OnProgress(event.progress().stage(), event.progress().fraction());
        if (event.has_log()) {
          observer.OnLog(static_cast<LogLevel>(std::max(0, static_cast<int>(event.log().level()) - 1)),
                         event.log().text());
        }
      } else if (tag == kArtifactFrame) {
        v1::Artifact artifact;
        if (artifact.ParseFromString(payload)) result.artifacts.emplace_back(artifact.name());
      } else if (tag == kTimingFrame) {
        v1::StageTiming timing;
        if (timing.ParseFromString(payload)) result.timings.push_back({timing.stage(), timing.seconds()});
      } else if (tag == kDoneFrame) {
        done = true;
      } else if (tag == kFailedFrame) {
        v1::ErrorDetail detail;
        if (!detail.ParseFromString(payload)) continue;
        auto code = static_cast<StatusCode>(std::atoi(detail.metadata().at("code").c_str()));
        failure = Status(code, detail.reason(), detail.metadata().at("message"));
      }
    }
    if (!protocol_error.ok()) {
      ::kill(pid, SIGKILL);
      break;
    }
  }
  ::close(fds[0]);
  int wait_status = 0;
  while (::waitpid(pid, &wait_status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    return Status(StatusCode::kDeadlineExceeded, "TIME_LIMIT_EXCEEDED",
                  "the job ran past its time limit of " + std::to_string(limits.time_seconds) + " s");
  }
  if (!protocol_error.ok()) return protocol_error;
  if (failure) return *failure;
  if (done && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0) return result;
  if (last_term && WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGTERM) {
    return Cancelled("the job was stopped before its pipeline started");
  }
  std::string how = WIFSIGNALED(wait_status) ? "signal " + std::to_string(WTERMSIG(wait_status))
                                             : "exit code " + std::to_string(WEXITSTATUS(wait_status));
  // Under a memory limit, allocation failures surface in many ways: an
  // exception nobody catches, an abort in a library, a failed thread start.
  if (limits.memory_bytes > 0) {
    return MemoryLimitExceeded(limits.memory_bytes, "the pipeline process ended with " + how);
  }
  return Internal("PIPELINE_CRASHED", "the pipeline process ended with " + how + " before reporting a result");
}

int PipelineProcessMain(int argc, char** argv) {
  std::signal(SIGTERM, OnTerminate);
  std::signal(SIGINT, SIG_IGN);
  FrameWriter out(kReportFd);
  pipeline::PipelineRequest request;
  int64_t memory_limit = 0;
  std::filesystem::path config_file;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") {
      request.model_path = value;
    } else if (flag == "--config-file") {
      config_file = value;
    } else if (flag == "--out") {
      request.out_dir = value;
    } else if (flag == "--threads") {
      request.num_threads = std::atoi(value.c_str());
    } else if (flag == "--memory-limit") {
      memory_limit = std::atoll(value.c_str());
    } else if (flag == "--debug-report-in-out-dir") {
      request.debug_report_in_out_dir = value == "1";
    } else if (flag == "--max-model-bytes") {
      request.model_limits.max_model_bytes = std::atoll(value.c_str());
    } else if (flag == "--max-graph-nodes") {
      request.model_limits.max_nodes = std::atoll(value.c_str());
    } else if (flag == "--max-graph-depth") {
      request.model_limits.max_graph_depth = std::atoi(value.c_str());
    } else if (flag == "--max-tensor-elements") {
      request.model_limits.max_tensor_elements = std::atoll(value.c_str());
    } else if (flag == "--max-image-pixels") {
      request.image_limits.max_pixels = std::atoll(value.c_str());
    } else if (flag == "--calib") {
      auto eq = value.find('=');
      request.calibration.push_back({value.substr(0, eq), value.substr(eq + 1)});
    }
  }
  auto config_text = ReadFile(config_file, 1 << 20);
  if (!config_text.ok()) {
    ReportFailure(out, config_text.status());
    return 0;
  }
  request.config_text = *config_text;
  if (memory_limit > 0) {
    // RLIMIT_DATA counts what the job allocates (heap and private mappings)
    // but not address space merely reserved, as thread stacks and
    // allocator arenas are; RLIMIT_AS would count those too.
    rlimit limit{static_cast<rlim_t>(memory_limit), static_cast<rlim_t>(memory_limit)};
    if (::setrlimit(RLIMIT_DATA, &limit) != 0) {
      ReportFailure(out, Internal("LIMIT_FAILED", std::string("setrlimit: ") + std::strerror(errno)));
      return 0;
    }
  }
  ReportingObserver observer(out);
  try {
    auto ran = pipeline::RunPipeline(request, observer);
    if (!ran.ok()) {
      ReportFailure(out, ran.status());
      return 0;
    }
    for (const auto& file : ran->artifacts) {
      v1::Artifact artifact;
      artifact.set_name(file.string());
      out.Write(kArtifactFrame, artifact.SerializeAsString());
    }
    for (const auto& timing : ran->timings) {
      v1::StageTiming stage;
      stage.set_stage(timing.stage);
      stage.set_seconds(timing.seconds);
      out.Write(kTimingFrame, stage.SerializeAsString());
    }
    out.Write(kDoneFrame, "");
  } catch (const std::bad_alloc&) {
    ReportFailure(out, memory_limit > 0 ? MemoryLimitExceeded(memory_limit, "an allocation failed")
                                        : ResourceExhausted("OUT_OF_MEMORY", "the worker machine ran out of memory"));
  }
  return 0;
}

}  // namespace quantd::worker
