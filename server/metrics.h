#pragma once

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "quantd/v1/quantd.pb.h"
#include "server/job_store.h"

namespace quantd::server {

// Prometheus metrics. Labels are bounded sets (state, device class); job ids
// never become labels.
class Metrics {
 public:
  Metrics();
  // Starts the HTTP endpoint; returns the bound "host:port".
  StatusOr<std::string> Serve(const std::string& listen);

  void JobSubmitted() { submitted_->Increment(); }
  void BytesUploaded(int64_t bytes) { uploaded_bytes_->Increment(static_cast<double>(bytes)); }
  void JobFinished(const v1::Job& job);
  // Re-reads state counts and queue depth from the store.
  void Refresh(JobStore& store);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Gauge>* jobs_by_state_;
  prometheus::Family<prometheus::Gauge>* queue_depth_;
  prometheus::Family<prometheus::Histogram>* job_duration_;
  prometheus::Counter* submitted_;
  prometheus::Counter* uploaded_bytes_;
};

}  // namespace quantd::server
