#include "worker/agent/agent.h"

#include <grpcpp/grpcpp.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <thread>

#include "common/archive.h"
#include "common/ids.h"
#include "common/input_limits_proto.h"
#include "common/log.h"
#include "common/rpc_status.h"
#include "common/sha256.h"
#include "worker/agent/pipeline_process.h"
#include "worker/pipeline/pipeline.h"

namespace quantd::worker {
namespace {

constexpr size_t kChunkBytes = 1 << 20;

v1::LogLine::Level ToProtoLevel(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return v1::LogLine::LEVEL_DEBUG;
    case LogLevel::kInfo: return v1::LogLine::LEVEL_INFO;
    case LogLevel::kWarning: return v1::LogLine::LEVEL_WARNING;
    case LogLevel::kError: return v1::LogLine::LEVEL_ERROR;
  }
  return v1::LogLine::LEVEL_INFO;
}

// Buffers pipeline events until the next heartbeat carries them; progress
// is coalesced so a fast stage cannot flood the server.
class JobEventBuffer : public pipeline::PipelineObserver {
 public:
  void OnProgress(const std::string& stage, double fraction) override {
    std::lock_guard lock(mutex_);
    if (!pending_.empty() && pending_.back().has_progress() && pending_.back().progress().stage() == stage) {
      pending_.back().mutable_progress()->set_fraction(fraction);
      return;
    }
    v1::JobEvent event;
    event.set_unix_ms(UnixMillisNow());
    event.mutable_progress()->set_stage(stage);
    event.mutable_progress()->set_fraction(fraction);
    pending_.push_back(std::move(event));
  }
  void OnLog(LogLevel level, const std::string& text) override {
    std::lock_guard lock(mutex_);
    v1::JobEvent event;
    event.set_unix_ms(UnixMillisNow());
    event.mutable_log()->set_level(ToProtoLevel(level));
    event.mutable_log()->set_text(text);
    pending_.push_back(std::move(event));
  }
  bool CancelRequested() override { return cancel_.load(); }

  void Cancel() { cancel_.store(true); }
  std::deque<v1::JobEvent> Drain() {
    std::lock_guard lock(mutex_);
    return std::exchange(pending_, {});
  }

 private:
  std::mutex mutex_;
  std::deque<v1::JobEvent> pending_;
  std::atomic<bool> cancel_{false};
};

Status FetchBlobToFile(v1::WorkerService::Stub& stub, const v1::LeaseJobResponse& lease, const std::string& sha256,
                       const std::filesystem::path& target) {
  v1::FetchBlobRequest request;
  request.set_job_id(lease.job().id());
  request.set_lease_id(lease.lease_id());
  request.set_sha256(sha256);
  grpc::ClientContext context;
  auto reader = stub.FetchBlob(&context, request);
  std::ofstream out(target, std::ios::binary | std::ios::trunc);
  if (!out) return Internal("IO_ERROR", "cannot write " + target.string());
  Sha256 hasher;
  v1::BlobChunk chunk;
  while (reader->Read(&chunk)) {
    out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    hasher.Update(chunk.data());
  }
  QUANTD_RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()).WithContext("fetching input " + sha256.substr(0, 12)));
  out.close();
  if (!out) return Internal("IO_ERROR", "cannot write " + target.string());
  if (hasher.HexDigest() != sha256) {
    return Status(StatusCode::kUnavailable, "BLOB_CORRUPTED_IN_TRANSIT", "fetched input does not match its digest");
  }
  return Status::Ok();
}

Status UploadArtifactFile(v1::WorkerService::Stub& stub, const v1::LeaseJobResponse& lease,
                          const std::filesystem::path& file) {
  QUANTD_ASSIGN_OR_RETURN(auto sha256, Sha256OfFile(file));
  std::error_code ec;
  auto size = static_cast<int64_t>(std::filesystem::file_size(file, ec));
  grpc::ClientContext context;
  v1::UploadArtifactResponse response;
  auto writer = stub.UploadArtifact(&context, &response);
  v1::UploadArtifactRequest header;
  header.mutable_header()->set_job_id(lease.job().id());
  header.mutable_header()->set_lease_id(lease.lease_id());
  header.mutable_header()->set_name(file.filename().string());
  header.mutable_header()->set_sha256(sha256);
  header.mutable_header()->set_size_bytes(size);
  bool open = writer->Write(header);
  std::ifstream in(file, std::ios::binary);
  std::string buffer(kChunkBytes, '\0');
  int64_t offset = 0;
  while (open && in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    auto n = in.gcount();
    if (n <= 0) break;
    v1::UploadArtifactRequest chunk;
    chunk.mutable_chunk()->set_offset(offset);
    chunk.mutable_chunk()->set_data(buffer.data(), static_cast<size_t>(n));
    open = writer->Write(chunk);
    offset += n;
  }
  writer->WritesDone();
  return FromGrpcStatus(writer->Finish()).WithContext("uploading " + file.filename().string());
}

}  // namespace

WorkerAgent::WorkerAgent(AgentOptions options) : options_(std::move(options)) {}

Status WorkerAgent::ClaimScratch() {
  std::error_code ec;
  std::filesystem::create_directories(options_.work_root, ec);
  if (ec) return Internal("IO_ERROR", "cannot create " + options_.work_root.string() + ": " + ec.message());
  // The lock lives exactly as long as this process: the kernel drops it
  // however the process ends, so an unlocked folder belongs to nobody. The
  // folder gets its w- name only once locked, so a worker starting beside
  // this one never finds it unlocked while its owner lives.
  auto claiming = options_.work_root / (".claim-" + std::to_string(::getpid()));
  std::filesystem::remove_all(claiming, ec);
  std::filesystem::create_directories(claiming, ec);
  scratch_lock_fd_ = ::open((claiming / ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (scratch_lock_fd_ < 0 || ::flock(scratch_lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return Internal("IO_ERROR", "cannot lock a scratch folder in " + options_.work_root.string());
  }
  scratch_ = options_.work_root / ("w-" + std::to_string(::getpid()));
  std::filesystem::remove_all(scratch_, ec);  // a dead worker that had this pid
  std::filesystem::rename(claiming, scratch_, ec);
  if (ec) return Internal("IO_ERROR", "cannot create " + scratch_.string() + ": " + ec.message());
  for (const auto& entry : std::filesystem::directory_iterator(options_.work_root, ec)) {
    auto name = entry.path().filename().string();
    if (entry.path() == scratch_ || !entry.is_directory(ec)) continue;
    bool stale = name.rfind("job-", 0) == 0;  // the flat layout of older workers
    if (name.rfind("w-", 0) == 0) {
      int fd = ::open((entry.path() / ".lock").c_str(), O_RDWR | O_CLOEXEC);
      stale = fd < 0 || ::flock(fd, LOCK_EX | LOCK_NB) == 0;
      if (fd >= 0) ::close(fd);
    }
    if (stale) {
      std::filesystem::remove_all(entry.path(), ec);
      LogInfo("removed the scratch folder " + entry.path().string() + " of a worker that is gone");
    }
  }
  return Status::Ok();
}

int WorkerAgent::Run() {
  if (auto status = ClaimScratch(); !status.ok()) {
    LogError(status.message());
    return 2;
  }
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  auto channel = OpenChannel(options_.channel, args);
  if (!channel.ok()) {
    LogError(channel.status().message());
    return 2;
  }
  channel_ = *channel;
  stub_ = v1::WorkerService::NewStub(channel_);
  LogInfo("worker " + options_.worker_id + " serving " + options_.channel.address);
  int backoff_ms = 200;
  while (!stop_.load()) {
    v1::LeaseJobRequest request;
    request.set_worker_id(options_.worker_id);
    request.set_device(options_.device);
    request.set_wait_ms(options_.exit_when_idle ? 0 : 2000);
    v1::LeaseJobResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    auto status = stub_->LeaseJob(&context, request, &response);
    if (status.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
        status.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
      // Retrying cannot fix a wrong credential; a supervisor that restarts
      // the worker shows the message again.
      LogError("the server refused this worker: " + status.error_message());
      return 3;
    }
    if (!status.ok()) {
      if (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
          status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
        LogWarning("lease failed: " + status.error_message());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
      backoff_ms = std::min(backoff_ms * 2, 5000);
      continue;
    }
    backoff_ms = 200;
    if (!response.has_job()) {
      if (options_.exit_when_idle) break;
      continue;
    }
    RunJob(response);
  }
  LogInfo("worker " + options_.worker_id + " stopped");
  std::error_code ec;
  std::filesystem::remove_all(scratch_, ec);
  return 0;
}

void WorkerAgent::RunJob(const v1::LeaseJobResponse& lease) {
  const auto& job = lease.job();
  LogInfo("running job " + job.id() + " attempt " + std::to_string(job.attempts()));
  auto work_dir = scratch_ / (job.id() + "-" + std::to_string(job.attempts()));
  std::error_code ec;
  std::filesystem::remove_all(work_dir, ec);
  std::filesystem::create_directories(work_dir / "out", ec);

  JobEventBuffer events;
  std::atomic<bool> lease_lost{false};
  std::atomic<bool> pipeline_done{false};
  Status outcome;
  pipeline::PipelineResult result;

  std::thread runner([&] {
    auto finish = [&](Status status) {
      outcome = std::move(status);
      pipeline_done.store(true);
    };
    pipeline::PipelineRequest request;
    request.model_path = work_dir / "model.input.onnx";
    request.config_text = job.config_text();
    request.out_dir = work_dir / "out";
    request.debug_report_in_out_dir = true;
    const InputLimits input_limits = InputLimitsFromProto(lease.input_limits());
    request.model_limits = input_limits.model;
    request.image_limits = input_limits.image;
    events.OnProgress("fetch", 0.0);
    if (auto status = FetchBlobToFile(*stub_, lease, job.model_sha256(), request.model_path); !status.ok()) {
      return finish(status);
    }
    for (const auto& calibration : job.calibration()) {
      if (calibration.has_server_path()) {
        request.calibration.push_back({calibration.input_name(), calibration.server_path()});
        continue;
      }
      auto archive = work_dir / ("calibration-" + std::to_string(request.calibration.size()) + ".tar");
      if (auto status = FetchBlobToFile(*stub_, lease, calibration.archive_sha256(), archive); !status.ok()) {
        return finish(status);
      }
      auto folder = work_dir / "calibration" / std::to_string(request.calibration.size());
      auto extracted = ExtractArchive(archive, folder, input_limits.archive);
      if (!extracted.ok()) {
        return finish(
            extracted.status().WithContext("calibration archive for input '" + calibration.input_name() + "'"));
      }
      std::filesystem::remove(archive, ec);
      events.OnLog(LogLevel::kInfo, "calibration for '" + calibration.input_name() +
                                        "': " + std::to_string(extracted->files) + " files");
      request.calibration.push_back({calibration.input_name(), folder});
    }
    events.OnProgress("fetch", 1.0);
    PipelineLimits limits;
    limits.memory_bytes = job.limits().memory_bytes();
    limits.time_seconds = job.limits().time_seconds();
    auto ran = RunPipelineProcess(request, limits, events);
    if (ran.ok()) result = std::move(*ran);
    finish(ran.ok() ? Status::Ok() : ran.status());
  });

  auto send_heartbeat = [&]() {
    v1::HeartbeatRequest request;
    request.set_job_id(job.id());
    request.set_lease_id(lease.lease_id());
    for (auto& event : events.Drain()) *request.add_events() = std::move(event);
    v1::HeartbeatResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    auto status = stub_->Heartbeat(&context, request, &response);
    if (!status.ok()) return;  // the lease outlives a few missed beats
    if (response.lease_lost()) {
      lease_lost.store(true);
      events.Cancel();
    }
    if (response.cancel_requested()) events.Cancel();
  };

  while (!pipeline_done.load()) {
    for (int waited = 0; waited < options_.heartbeat_ms && !pipeline_done.load(); waited += 50) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (stop_.load()) events.Cancel();
    }
    send_heartbeat();
  }
  runner.join();
  send_heartbeat();

  if (lease_lost.load()) {
    LogWarning("job " + job.id() + " was taken away from this worker; dropping its result");
  } else if (outcome.ok()) {
    Status upload;
    for (const auto& file : result.artifacts) {
      upload = UploadArtifactFile(*stub_, lease, file);
      if (!upload.ok()) break;
    }
    if (upload.ok()) {
      v1::CompleteJobRequest request;
      request.set_job_id(job.id());
      request.set_lease_id(lease.lease_id());
      for (const auto& timing : result.timings) {
        auto* stage = request.add_timings();
        stage->set_stage(timing.stage);
        stage->set_seconds(timing.seconds);
      }
      v1::Empty empty;
      grpc::ClientContext context;
      auto status = stub_->CompleteJob(&context, request, &empty);
      if (!status.ok()) LogWarning("completing job " + job.id() + " failed: " + status.error_message());
    } else {
      outcome = upload;
    }
  }
  if (!lease_lost.load() && !outcome.ok()) {
    bool shutting_down = stop_.load() && outcome.code() == StatusCode::kCancelled;
    v1::FailJobRequest request;
    request.set_job_id(job.id());
    request.set_lease_id(lease.lease_id());
    request.set_reason(shutting_down ? "WORKER_SHUTDOWN" : outcome.reason());
    request.set_message(shutting_down ? "the worker was stopped; the job goes back to the queue" : outcome.message());
    // Neither bad input nor a job over its limits does better on a retry.
    request.set_retryable(shutting_down || (!pipeline::IsInputError(outcome) && !IsLimitExceeded(outcome)));
    v1::Empty empty;
    grpc::ClientContext context;
    auto status = stub_->FailJob(&context, request, &empty);
    if (!status.ok()) LogWarning("reporting failure of job " + job.id() + " failed: " + status.error_message());
    LogInfo("job " + job.id() + " failed: " + outcome.reason() + ": " + outcome.message());
  }
  std::filesystem::remove_all(work_dir, ec);
}

}  // namespace quantd::worker
