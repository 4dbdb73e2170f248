#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "quantd/v1/quantd.pb.h"

namespace quantd::server {

struct ServerConfig;

// Owner of jobs created without authentication, and of rows stored before
// jobs had owners.
inline constexpr const char* kDefaultTenant = "default";

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

// Durable job queue and event log. The Job message is stored whole; the
// columns beside it exist for the queue order, lease bookkeeping and
// filters. Every state change is stored together with its event, so a
// reader never sees one without the other. All methods are thread-safe, and
// a backend shared by several quantd processes is safe across them too.
class JobStore {
 public:
  virtual ~JobStore() = default;
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Inserts a QUEUED job owned by job.tenant() (kDefaultTenant when empty),
  // or returns that tenant's existing job with the same non-empty
  // request_id (deduplicated = true). Tenants never see each other's ids.
  virtual StatusOr<std::pair<v1::Job, bool>> CreateJob(v1::Job job) = 0;
  virtual StatusOr<v1::Job> GetJob(const std::string& job_id) = 0;
  // Jobs of `tenant`, or of every tenant when it is empty.
  virtual StatusOr<JobPage> ListJobs(const std::string& tenant, const std::vector<v1::JobState>& states, int page_size,
                                     const std::string& page_token) = 0;

  // Assigns the next dense sequence number and stores the event.
  virtual StatusOr<v1::JobEvent> AppendEvent(const std::string& job_id, v1::JobEvent event) = 0;
  virtual StatusOr<std::vector<v1::JobEvent>> EventsAfter(const std::string& job_id, int64_t after_seq, int limit) = 0;

  // Queue order: priority (high first), then age (old first). A worker of
  // class CPU or GPU takes jobs of its class or ANY.
  virtual StatusOr<std::optional<LeasedJob>> LeaseNext(v1::DeviceClass worker_device, const std::string& worker_id,
                                                       int64_t lease_ttl_ms) = 0;
  // Extends the lease; fails with LEASE_LOST if the job is not leased by it.
  virtual StatusOr<v1::Job> RenewLease(const std::string& job_id, const std::string& lease_id,
                                       int64_t lease_ttl_ms) = 0;
  // One worker heartbeat in one transaction: extends the lease, applies the
  // progress events to the stored Job and appends the progress and log
  // events (state and artifact events are the server's own and are
  // dropped). Fails with LEASE_LOST, storing nothing, if the lease is gone.
  virtual StatusOr<v1::Job> Heartbeat(const std::string& job_id, const std::string& lease_id, int64_t lease_ttl_ms,
                                      const std::vector<v1::JobEvent>& events) = 0;
  // Applies progress/stage from events to the stored Job.
  virtual Status UpdateProgress(const std::string& job_id, const std::string& stage, double fraction) = 0;
  virtual Status AddArtifact(const std::string& job_id, const std::string& lease_id, const v1::Artifact& artifact) = 0;
  virtual StatusOr<v1::Job> Complete(const std::string& job_id, const std::string& lease_id) = 0;
  // A failure of a cancel-requested job ends CANCELLED; a retryable one goes
  // back to the queue while attempts remain.
  virtual StatusOr<v1::Job> Fail(const std::string& job_id, const std::string& lease_id, const std::string& reason,
                                 const std::string& message, bool retryable, int max_attempts) = 0;
  // Queued: CANCELLED at once. Running: flags it; the worker stops and reports.
  virtual StatusOr<v1::Job> RequestCancel(const std::string& job_id) = 0;
  // Leases past their deadline: the job is requeued, failed, or cancelled.
  virtual StatusOr<std::vector<ExpiredLease>> ExpireLeases(int max_attempts) = 0;

  virtual StatusOr<std::vector<std::pair<v1::JobState, int64_t>>> CountByState() = 0;
  virtual StatusOr<std::vector<std::pair<v1::DeviceClass, int64_t>>> QueueDepthByDevice() = 0;

 protected:
  JobStore() = default;
};

// The backend named by config.job_store: SQLite in <data_dir>/quantd.db
// (one process), or PostgreSQL at config.postgres_dsn (any number of quantd
// replicas sharing one queue).
StatusOr<std::unique_ptr<JobStore>> OpenJobStore(const ServerConfig& config);

// The job life-cycle rules, shared by the backends: each one finds and locks
// the row its own way and then applies exactly these, so both behave alike.
namespace job_rules {

v1::JobEvent StateEvent(v1::JobState state, const std::string& reason, const std::string& message);
bool IsTerminal(v1::JobState state);
// The owner of a stored job; rows from before tenants belong to kDefaultTenant.
std::string TenantOf(const v1::Job& job);
// Whether a worker may add this heartbeat event to the job's log.
bool IsWorkerEvent(const v1::JobEvent& event);
Status JobNotFound(const std::string& job_id);
Status LeaseLost(const std::string& job_id);

// A queued job handed to `worker_id` for its next attempt; returns the
// RUNNING event to store with it.
v1::JobEvent StartAttempt(v1::Job& job, const std::string& worker_id);
v1::JobEvent Succeed(v1::Job& job);
v1::JobEvent FailAttempt(v1::Job& job, const std::string& reason, const std::string& message, bool retryable,
                         int max_attempts);
// For a job that is not terminal. A queued job ends CANCELLED (a state
// event); a running one is flagged (a log event) and ends when its worker
// reports.
v1::JobEvent RequestCancel(v1::Job& job);
// The decision for a running job whose lease ran out; `event` receives the
// state event to store.
ExpiredLease ExpireLease(v1::Job& job, int max_attempts, v1::JobEvent& event);
void PutArtifact(v1::Job& job, const v1::Artifact& artifact);
// A running job's progress; false when the job is not running (nothing to do).
bool ApplyProgress(v1::Job& job, const std::string& stage, double fraction);

// ListJobs pages run newest first; the token names the last job returned.
struct PageCursor {
  int64_t created_ms = 0;
  std::string id;
};
StatusOr<std::optional<PageCursor>> ParsePageToken(const std::string& token);
std::string PageTokenAfter(const v1::Job& last);
int ClampPageSize(int page_size);
// Bit i set: state i is wanted. Zero: every state.
int64_t StateMask(const std::vector<v1::JobState>& states);

}  // namespace job_rules

}  // namespace quantd::server
