#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "server/job_store.h"

namespace quantd::server {

// The shared backend: every quantd replica pointed at the same PostgreSQL
// database serves one queue.
//
// - A worker's lease is taken with SELECT ... FOR UPDATE SKIP LOCKED, so two
//   replicas polling at once never hand out the same job, and neither waits
//   for the other's row lock.
// - Lease deadlines live in the table and are computed and compared with the
//   database clock, so replicas whose clocks disagree still agree on expiry;
//   every replica runs the expiry sweep, SKIP LOCKED keeps them apart.
// - Event numbers come from a per-job counter column bumped in the same
//   transaction as the event insert: the row lock orders concurrent
//   appenders and a rollback takes the number back, so numbers stay dense.
// - Connections come from a small pool; a transaction that failed before
//   COMMIT because of a serialization failure, deadlock or lost connection
//   is run again on a fresh connection.
class PostgresJobStore final : public JobStore {
 public:
  // Connects, checks the server, and creates the tables if they are missing
  // (safe when several replicas start at once).
  static StatusOr<std::unique_ptr<PostgresJobStore>> Open(const std::string& dsn, int max_connections);
  ~PostgresJobStore() override;

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

  class Connection;

 private:
  PostgresJobStore(std::string dsn, int max_connections);
  // Runs `body` on a pooled connection, inside BEGIN/COMMIT when
  // `transaction`. `body` may run more than once, so it must only assign
  // its results, never accumulate them.
  Status Run(bool transaction, const std::function<Status(Connection&)>& body);
  StatusOr<std::unique_ptr<Connection>> Acquire();
  void Release(std::unique_ptr<Connection> connection);

  const std::string dsn_;
  const int max_connections_;
  std::mutex mutex_;
  std::condition_variable released_;
  std::vector<std::unique_ptr<Connection>> idle_;
  int open_ = 0;  // idle plus in use
};

}  // namespace quantd::server
