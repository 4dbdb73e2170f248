#pragma once

#include <sqlite3.h>

#include <filesystem>
#include <mutex>

#include "server/job_store.h"

namespace quantd::server {

// The embedded backend: one SQLite file (WAL, synchronous=FULL) owned by one
// quantd process. A process-wide mutex serialises access; BEGIN IMMEDIATE
// keeps a second handle on the same file (tests, tools) consistent too.
class SqliteJobStore final : public JobStore {
 public:
  static StatusOr<std::unique_ptr<SqliteJobStore>> Open(const std::filesystem::path& file);
  ~SqliteJobStore() override;

  StatusOr<std::pair<v1::Job, bool>> CreateJob(v1::Job job) override;
  StatusOr<v1::Job> GetJob(const std::string& job_id) override;
  StatusOr<JobPage> ListJobs(const std::string& tenant, const std::vector<v1::JobState>& states, int page_size,
                             const std::string& page_token) override;
  StatusOr<v1::JobEvent> AppendEvent(const std::string& job_id, v1::JobEvent event) override;
  StatusOr<std::vector<v1::JobEvent>> EventsAfter(const std::string& job_id, int64_t after_seq, int limit) override;
  StatusOr<std::optional<LeasedJob>> LeaseNext(v1::DeviceClass worker_device, const std::string& worker_id,
                                               int64_t lease_ttl_ms) override;
  StatusOr<v1::Job> RenewLease(const std::string& job_id, const std::string& lease_id, int64_t lease_ttl_ms) override;
  StatusOr<v1::Job> Heartbeat(const std::string& job_id, const std::string& lease_id, int64_t lease_ttl_ms,
                              const std::vector<v1::JobEvent>& events) override;
  Status UpdateProgress(const std::string& job_id, const std::string& stage, double fraction) override;
  Status AddArtifact(const std::string& job_id, const std::string& lease_id, const v1::Artifact& artifact) override;
  StatusOr<v1::Job> Complete(const std::string& job_id, const std::string& lease_id) override;
  StatusOr<v1::Job> Fail(const std::string& job_id, const std::string& lease_id, const std::string& reason,
                         const std::string& message, bool retryable, int max_attempts) override;
  StatusOr<v1::Job> RequestCancel(const std::string& job_id) override;
  StatusOr<std::vector<ExpiredLease>> ExpireLeases(int max_attempts) override;
  StatusOr<std::vector<std::pair<v1::JobState, int64_t>>> CountByState() override;
  StatusOr<std::vector<std::pair<v1::DeviceClass, int64_t>>> QueueDepthByDevice() override;

 private:
  explicit SqliteJobStore(sqlite3* db) : db_(db) {}
  Status Exec(const char* sql);
  // Adds the tenant column to a store created before tenants existed.
  Status MigrateTenants();
  StatusOr<std::optional<v1::Job>> LoadLocked(const std::string& job_id);
  // The job and its current lease id, or JOB_NOT_FOUND.
  StatusOr<std::pair<v1::Job, std::string>> LoadWithLeaseLocked(const std::string& job_id);
  Status SaveLocked(const v1::Job& job, const std::string& lease_id, int64_t lease_expires_ms);
  Status SaveProtoLocked(const v1::Job& job);
  StatusOr<v1::JobEvent> AppendEventLocked(const std::string& job_id, v1::JobEvent event);

  std::mutex mutex_;
  sqlite3* db_;
};

}  // namespace quantd::server
