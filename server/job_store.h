#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "quantd/v1/quantd.pb.h"

namespace quantd::server {

struct LeasedJob {
  v1::Job job;
  std::string lease_id;
};

struct ExpiredLease {
  std::string job_id;
  v1::JobState new_state;
  std::string reason;
};

struct JobPage {
  std::vector<v1::Job> jobs;
  std::string next_page_token;
};

// Durable job store on one SQLite file (WAL, synchronous=FULL). The Job
// message is stored whole; the columns beside it exist for the queue order,
// lease bookkeeping and filters. All methods are thread-safe.
class JobStore {
 public:
  static StatusOr<std::unique_ptr<JobStore>> Open(const std::filesystem::path& file);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Inserts a QUEUED job, or returns the existing one with the same
  // non-empty request_id (deduplicated = true).
  StatusOr<std::pair<v1::Job, bool>> CreateJob(v1::Job job);
  StatusOr<v1::Job> GetJob(const std::string& job_id);
  StatusOr<JobPage> ListJobs(const std::vector<v1::JobState>& states, int page_size, const std::string& page_token);

  // Assigns the next dense sequence number and stores the event.
  StatusOr<v1::JobEvent> AppendEvent(const std::string& job_id, v1::JobEvent event);
  StatusOr<std::vector<v1::JobEvent>> EventsAfter(const std::string& job_id, int64_t after_seq, int limit);

  // Queue order: priority (high first), then age (old first). A worker of
  // class CPU or GPU takes jobs of its class or ANY.
  StatusOr<std::optional<LeasedJob>> LeaseNext(v1::DeviceClass worker_device, const std::string& worker_id,
                                               int64_t lease_ttl_ms);
  // Extends the lease; fails with LEASE_LOST if the job is not leased by it.
  StatusOr<v1::Job> RenewLease(const std::string& job_id, const std::string& lease_id, int64_t lease_ttl_ms);
  // Applies progress/stage from events to the stored Job.
  Status UpdateProgress(const std::string& job_id, const std::string& stage, double fraction);
  Status AddArtifact(const std::string& job_id, const std::string& lease_id, const v1::Artifact& artifact);
  StatusOr<v1::Job> Complete(const std::string& job_id, const std::string& lease_id);
  // A failure of a cancel-requested job ends CANCELLED; a retryable one goes
  // back to the queue while attempts remain.
  StatusOr<v1::Job> Fail(const std::string& job_id, const std::string& lease_id, const std::string& reason,
                         const std::string& message, bool retryable, int max_attempts);
  // Queued: CANCELLED at once. Running: flags it; the worker stops and reports.
  StatusOr<v1::Job> RequestCancel(const std::string& job_id);
  // Leases past their deadline: the job is requeued, failed, or cancelled.
  StatusOr<std::vector<ExpiredLease>> ExpireLeases(int max_attempts);

  StatusOr<std::vector<std::pair<v1::JobState, int64_t>>> CountByState();
  StatusOr<std::vector<std::pair<v1::DeviceClass, int64_t>>> QueueDepthByDevice();

 private:
  explicit JobStore(sqlite3* db) : db_(db) {}
  Status Exec(const char* sql);
  StatusOr<std::optional<v1::Job>> LoadLocked(const std::string& job_id);
  Status SaveLocked(const v1::Job& job, const std::string& lease_id, int64_t lease_expires_ms);
  StatusOr<v1::JobEvent> AppendEventLocked(const std::string& job_id, v1::JobEvent event);
  StatusOr<std::string> LeaseIdLocked(const std::string& job_id);

  std::mutex mutex_;
  sqlite3* db_;
};

}  // namespace quantd::server
