#pragma once

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>

#include "quantd/v1/quantd.grpc.pb.h"

namespace quantd::worker {

struct AgentOptions {
  std::string server_address;
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

  AgentOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::atomic<bool> stop_{false};
};

}  // namespace quantd::worker
