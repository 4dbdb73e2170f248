#include "server/metrics.h"

#include <map>

namespace quantd::server {
namespace {

std::string StateLabel(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_QUEUED: return "queued";
    case v1::JOB_STATE_RUNNING: return "running";
    case v1::JOB_STATE_SUCCEEDED: return "succeeded";
    case v1::JOB_STATE_FAILED: return "failed";
    case v1::JOB_STATE_CANCELLED: return "cancelled";
    default: return "unknown";
  }
}

std::string DeviceLabel(v1::DeviceClass device) {
  switch (device) {
    case v1::DEVICE_CLASS_CPU: return "cpu";
    case v1::DEVICE_CLASS_GPU: return "gpu";
    default: return "any";
  }
}

}  // namespace

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  jobs_by_state_ = &prometheus::BuildGauge().Name("quantd_jobs").Help("Jobs in the store by state").Register(*registry_);
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("quantd_queue_depth")
                      .Help("Queued jobs waiting for a worker, by requested device class")
                      .Register(*registry_);
  job_duration_ = &prometheus::BuildHistogram()
                       .Name("quantd_job_duration_seconds")
                       .Help("Wall time from a job's start on a worker to its end")
                       .Register(*registry_);
  submitted_ = &prometheus::BuildCounter()
                    .Name("quantd_jobs_submitted_total")
                    .Help("Jobs accepted by SubmitJob")
                    .Register(*registry_)
                    .Add({});
  uploaded_bytes_ = &prometheus::BuildCounter()
                         .Name("quantd_uploaded_bytes_total")
                         .Help("Bytes received by UploadBlob")
                         .Register(*registry_)
                         .Add({});
  for (auto state : {v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED,
                     v1::JOB_STATE_CANCELLED}) {
    jobs_by_state_->Add({{"state", StateLabel(state)}}).Set(0);
  }
  for (auto device : {v1::DEVICE_CLASS_CPU, v1::DEVICE_CLASS_GPU, v1::DEVICE_CLASS_ANY}) {
    queue_depth_->Add({{"device", DeviceLabel(device)}}).Set(0);
  }
}

StatusOr<std::string> Metrics::Serve(const std::string& listen) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return Status(StatusCode::kUnavailable, "METRICS_LISTEN_FAILED",
                  "cannot serve metrics on " + listen + ": " + e.what());
  }
  exposer_->RegisterCollectable(registry_);
  auto ports = exposer_->GetListeningPorts();
  auto host = listen.substr(0, listen.rfind(':'));
  return host + ":" + std::to_string(ports.empty() ? 0 : ports.front());
}

void Metrics::JobFinished(const v1::Job& job) {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600};
  if (job.started_unix_ms() == 0 || job.finished_unix_ms() < job.started_unix_ms()) return;
  double seconds = static_cast<double>(job.finished_unix_ms() - job.started_unix_ms()) / 1000.0;
  job_duration_->Add({{"state", StateLabel(job.state())}}, kBuckets).Observe(seconds);
}

void Metrics::Refresh(JobStore& store) {
  std::map<std::string, int64_t> by_state;
  for (auto state : {v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED,
                     v1::JOB_STATE_CANCELLED}) {
    by_state[StateLabel(state)] = 0;
  }
  if (auto counts = store.CountByState(); counts.ok()) {
    for (const auto& [state, count] : *counts) by_state[StateLabel(state)] += count;
  }
  for (const auto& [label, count] : by_state) jobs_by_state_->Add({{"state", label}}).Set(static_cast<double>(count));
  std::map<std::string, int64_t> by_device = {{"cpu", 0}, {"gpu", 0}, {"any", 0}};
  if (auto depth = store.QueueDepthByDevice(); depth.ok()) {
    for (const auto& [device, count] : *depth) by_device[DeviceLabel(device)] += count;
  }
  for (const auto& [label, count] : by_device) queue_depth_->Add({{"device", label}}).Set(static_cast<double>(count));
}

}  // namespace quantd::server
