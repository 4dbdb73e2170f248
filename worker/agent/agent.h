#pragma once

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>

#include "common/channel.h"
#include "quantd/v1/quantd.grpc.pb.h"

namespace quantd::worker {

struct AgentOptions {
  // Address, worker token and TLS files.
  ChannelOptions channel;
  v1::DeviceClass device = v1::DEVICE_CLASS_CPU;
  std::string worker_id;
  std::filesystem::path work_root;
  int heartbeat_ms = 1000;
  bool exit_when_idle = false;  // run queued jobs, then exit (batch use)
};

// Leases jobs from quantd, runs the pipeline on each, streams its events
// through heartbeats, uploads the artifacts and reports the outcome.
class WorkerAgent {
 public:
  explicit WorkerAgent(AgentOptions options);
  // Returns when RequestStop() was called (or when idle, with exit_when_idle).
  int Run();
  // Async-signal-safe: only sets a flag. A running job is handed back.
  void RequestStop() { stop_.store(true); }

 private:
  void RunJob(const v1::LeaseJobResponse& lease);
  // Takes this worker's scratch folder under work_root and removes the ones
  // of workers that died without cleaning up (SIGKILL, OOM kill, power loss).
  Status ClaimScratch();

  AgentOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::atomic<bool> stop_{false};
  std::filesystem::path scratch_;  // work_root/w-<pid>, locked while this worker lives
  int scratch_lock_fd_ = -1;
};

}  // namespace quantd::worker
