#include "server/job_store.h"

#include <charconv>

#include "common/ids.h"
#include "server/postgres_job_store.h"
#include "server/server_config.h"
#include "server/sqlite_job_store.h"

namespace quantd::server {

StatusOr<std::unique_ptr<JobStore>> OpenJobStore(const ServerConfig& config) {
  switch (config.job_store) {
    case JobStoreBackend::kSqlite: {
      QUANTD_ASSIGN_OR_RETURN(auto store, SqliteJobStore::Open(config.data_dir / "quantd.db"));
      return std::unique_ptr<JobStore>(std::move(store));
    }
    case JobStoreBackend::kPostgres: {
      if (config.postgres_dsn.empty()) {
        return InvalidArgument("SERVER_CONFIG_MISSING_KEY", "job_store: postgres needs postgres_dsn");
      }
      QUANTD_ASSIGN_OR_RETURN(auto store, PostgresJobStore::Open(config.postgres_dsn, config.postgres_connections));
      return std::unique_ptr<JobStore>(std::move(store));
    }
  }
  return InvalidArgument("SERVER_CONFIG_OUT_OF_RANGE", "unknown job store backend");
}

namespace job_rules {

v1::JobEvent StateEvent(v1::JobState state, const std::string& reason, const std::string& message) {
  v1::JobEvent event;
  event.mutable_state()->set_state(state);
  event.mutable_state()->set_reason(reason);
  event.mutable_state()->set_message(message);
  return event;
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED || state == v1::JOB_STATE_CANCELLED;
}

std::string TenantOf(const v1::Job& job) {
  return job.tenant().empty() ? kDefaultTenant : job.tenant();
}

bool IsWorkerEvent(const v1::JobEvent& event) {
  return !event.has_state() && !event.has_artifact();
}

Status JobNotFound(const std::string& job_id) {
  return NotFound("JOB_NOT_FOUND", "no job " + job_id);
}

Status LeaseLost(const std::string& job_id) {
  return FailedPrecondition("LEASE_LOST", "job " + job_id + " is not leased to this worker any more");
}

v1::JobEvent StartAttempt(v1::Job& job, const std::string& worker_id) {
  job.set_state(v1::JOB_STATE_RUNNING);
  job.set_attempts(job.attempts() + 1);
  job.set_worker(worker_id);
  job.set_started_unix_ms(UnixMillisNow());
  job.set_stage("");
  job.set_progress(0);
  // Whatever an earlier attempt uploaded before it died belongs to that
  // attempt; this one starts with nothing.
  job.clear_artifacts();
  return StateEvent(v1::JOB_STATE_RUNNING, "", "attempt " + std::to_string(job.attempts()) + " on " + worker_id);
}

v1::JobEvent Succeed(v1::Job& job) {
  job.set_state(v1::JOB_STATE_SUCCEEDED);
  job.set_finished_unix_ms(UnixMillisNow());
  job.set_progress(1.0);
  return StateEvent(v1::JOB_STATE_SUCCEEDED, "", "succeeded");
}

v1::JobEvent FailAttempt(v1::Job& job, const std::string& reason, const std::string& message, bool retryable,
                         int max_attempts) {
  v1::JobState next;
  if (job.cancel_requested()) {
    next = v1::JOB_STATE_CANCELLED;
  } else if (retryable && job.attempts() < max_attempts) {
    next = v1::JOB_STATE_QUEUED;
  } else {
    next = v1::JOB_STATE_FAILED;
  }
  job.set_state(next);
  // Only a completed attempt has a result; whatever a failed one uploaded is
  // not one.
  job.clear_artifacts();
  if (next == v1::JOB_STATE_QUEUED) {
    job.set_worker("");
  } else {
    job.set_finished_unix_ms(UnixMillisNow());
    job.set_failure_reason(next == v1::JOB_STATE_CANCELLED ? "CANCELLED" : reason);
    job.set_failure_message(next == v1::JOB_STATE_CANCELLED ? "cancelled by request" : message);
  }
  return StateEvent(next, job.failure_reason().empty() ? reason : job.failure_reason(),
                    job.failure_message().empty() ? message : job.failure_message());
}

v1::JobEvent RequestCancel(v1::Job& job) {
  job.set_cancel_requested(true);
  if (job.state() == v1::JOB_STATE_QUEUED) {
    job.set_state(v1::JOB_STATE_CANCELLED);
    job.set_finished_unix_ms(UnixMillisNow());
    job.set_failure_reason("CANCELLED");
    job.set_failure_message("cancelled by request");
    return StateEvent(v1::JOB_STATE_CANCELLED, "CANCELLED", "cancelled while queued");
  }
  v1::JobEvent log;
  log.mutable_log()->set_level(v1::LogLine::LEVEL_INFO);
  log.mutable_log()->set_text("cancellation requested; waiting for the worker to stop");
  return log;
}

ExpiredLease ExpireLease(v1::Job& job, int max_attempts, v1::JobEvent& event) {
  ExpiredLease lease{job.id(), v1::JOB_STATE_QUEUED, ""};
  if (job.cancel_requested()) {
    lease.new_state = v1::JOB_STATE_CANCELLED;
    lease.reason = "CANCELLED";
  } else if (job.attempts() >= max_attempts) {
    lease.new_state = v1::JOB_STATE_FAILED;
    lease.reason = "WORKER_LOST";
  }
  std::string message = lease.new_state == v1::JOB_STATE_FAILED
                            ? "the worker running attempt " + std::to_string(job.attempts()) +
                                  " stopped responding; gave up after " + std::to_string(max_attempts) + " attempts"
                            : "the worker " + job.worker() + " stopped responding; lease expired";
  job.set_state(lease.new_state);
  job.set_worker("");
  // Artifacts uploaded under the lost lease are not a result of this job.
  job.clear_artifacts();
  if (lease.new_state != v1::JOB_STATE_QUEUED) {
    job.set_finished_unix_ms(UnixMillisNow());
    job.set_failure_reason(lease.reason);
    job.set_failure_message(message);
  }
  event = StateEvent(lease.new_state, lease.reason, message);
  return lease;
}

void PutArtifact(v1::Job& job, const v1::Artifact& artifact) {
  bool replaced = false;
  for (auto& existing : *job.mutable_artifacts()) {
    if (existing.name() == artifact.name()) {
      existing = artifact;
      replaced = true;
    }
  }
  if (!replaced) *job.add_artifacts() = artifact;
}

bool ApplyProgress(v1::Job& job, const std::string& stage, double fraction) {
  if (job.state() != v1::JOB_STATE_RUNNING) return false;
  job.set_stage(stage);
  job.set_progress(fraction);
  return true;
}

StatusOr<std::optional<PageCursor>> ParsePageToken(const std::string& token) {
  if (token.empty()) return std::optional<PageCursor>();
  PageCursor cursor;
  auto colon = token.find(':');
  const char* begin = token.data();
  auto parsed = std::from_chars(begin, begin + (colon == std::string::npos ? 0 : colon), cursor.created_ms);
  if (colon == std::string::npos || parsed.ec != std::errc() || parsed.ptr != begin + colon) {
    return InvalidArgument("BAD_PAGE_TOKEN", "page_token is not one this server issued");
  }
  cursor.id = token.substr(colon + 1);
  return std::optional<PageCursor>(std::move(cursor));
}

std::string PageTokenAfter(const v1::Job& last) {
  return std::to_string(last.created_unix_ms()) + ":" + last.id();
}

int ClampPageSize(int page_size) {
  if (page_size <= 0) return 50;
  return page_size > 500 ? 500 : page_size;
}

int64_t StateMask(const std::vector<v1::JobState>& states) {
  int64_t mask = 0;
  for (auto state : states) {
    // Out-of-range numbers cannot match a stored state; shifting by them would be undefined.
    if (state >= 0 && state < 62) mask |= int64_t{1} << static_cast<unsigned>(state);
  }
  // A filter naming only unknown states matches nothing, not everything.
  if (!states.empty() && mask == 0) mask = int64_t{1} << 62;
  return mask;
}

}  // namespace job_rules
}  // namespace quantd::server
