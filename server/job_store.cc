#include "server/job_store.h"

#include <charconv>

#include "common/ids.h"

namespace quantd::server {
namespace {

Status SqlError(sqlite3* db, const std::string& what) {
  return Internal("STORE_ERROR", what + ": " + sqlite3_errmsg(db));
}

// Prepared statement with RAII finalisation and typed binders.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) { rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr); }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  bool prepared() const { return rc_ == SQLITE_OK; }
  Statement& Bind(int index, const std::string& text) {
    sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& Bind(int index, int64_t value) {
    sqlite3_bind_int64(stmt_, index, value);
    return *this;
  }
  Statement& BindBlob(int index, const std::string& bytes) {
    sqlite3_bind_blob(stmt_, index, bytes.data(), static_cast<int>(bytes.size()), SQLITE_TRANSIENT);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(stmt_); }
  int64_t Int(int column) { return sqlite3_column_int64(stmt_, column); }
  std::string Text(int column) {
    auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, column))) : std::string();
  }
  std::string Blob(int column) {
    auto* p = static_cast<const char*>(sqlite3_column_blob(stmt_, column));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, column))) : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

// Rolls back unless committed, so every early return leaves the file as it was.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) { ok_ = sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK; }
  ~Transaction() {
    if (ok_ && !committed_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  bool began() const { return ok_; }
  Status Commit() {
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) return SqlError(db_, "commit");
    committed_ = true;
    return Status::Ok();
  }

 private:
  sqlite3* db_;
  bool ok_ = false;
  bool committed_ = false;
};

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

Status JobNotFound(const std::string& job_id) { return NotFound("JOB_NOT_FOUND", "no job " + job_id); }

Status LeaseLost(const std::string& job_id) {
  return FailedPrecondition("LEASE_LOST", "job " + job_id + " is not leased to this worker any more");
}

}  // namespace

StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::filesystem::path& file) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string message = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Internal("STORE_OPEN_FAILED", "cannot open job store " + file.string() + ": " + message);
  }
  std::unique_ptr<JobStore> store(new JobStore(db));
  sqlite3_busy_timeout(db, 5000);
  QUANTD_RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
  QUANTD_RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=FULL"));
  QUANTD_RETURN_IF_ERROR(store->Exec(
      "CREATE TABLE IF NOT EXISTS jobs("
      " id TEXT PRIMARY KEY,"
      " request_id TEXT NOT NULL DEFAULT '',"
      " state INTEGER NOT NULL,"
      " device INTEGER NOT NULL,"
      " priority INTEGER NOT NULL,"
      " created_ms INTEGER NOT NULL,"
      " lease_id TEXT NOT NULL DEFAULT '',"
      " lease_expires_ms INTEGER NOT NULL DEFAULT 0,"
      " proto BLOB NOT NULL)"));
  QUANTD_RETURN_IF_ERROR(
      store->Exec("CREATE UNIQUE INDEX IF NOT EXISTS jobs_request ON jobs(request_id) WHERE request_id <> ''"));
  QUANTD_RETURN_IF_ERROR(store->Exec("CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(state, priority DESC, created_ms)"));
  QUANTD_RETURN_IF_ERROR(store->Exec("CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_ms DESC, id DESC)"));
  QUANTD_RETURN_IF_ERROR(store->Exec(
      "CREATE TABLE IF NOT EXISTS events("
      " job_id TEXT NOT NULL, seq INTEGER NOT NULL, proto BLOB NOT NULL,"
      " PRIMARY KEY(job_id, seq)) WITHOUT ROWID"));
  return store;
}

JobStore::~JobStore() { sqlite3_close(db_); }

Status JobStore::Exec(const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    std::string message = error ? error : "unknown error";
    sqlite3_free(error);
    return Internal("STORE_ERROR", std::string(sql).substr(0, 40) + ": " + message);
  }
  return Status::Ok();
}

StatusOr<std::optional<v1::Job>> JobStore::LoadLocked(const std::string& job_id) {
  Statement stmt(db_, "SELECT proto FROM jobs WHERE id = ?");
  stmt.Bind(1, job_id);
  int rc = stmt.Step();
  if (rc == SQLITE_DONE) return std::optional<v1::Job>();
  if (rc != SQLITE_ROW) return SqlError(db_, "load job");
  v1::Job job;
  if (!job.ParseFromString(stmt.Blob(0))) return DataLoss("STORE_CORRUPT", "stored job " + job_id + " is unreadable");
  return std::optional<v1::Job>(std::move(job));
}

StatusOr<std::string> JobStore::LeaseIdLocked(const std::string& job_id) {
  Statement stmt(db_, "SELECT lease_id FROM jobs WHERE id = ?");
  stmt.Bind(1, job_id);
  if (stmt.Step() != SQLITE_ROW) return JobNotFound(job_id);
  return stmt.Text(0);
}

Status JobStore::SaveLocked(const v1::Job& job, const std::string& lease_id, int64_t lease_expires_ms) {
  Statement stmt(db_,
                 "INSERT INTO jobs(id, request_id, state, device, priority, created_ms, lease_id, lease_expires_ms, proto)"
                 " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                 " ON CONFLICT(id) DO UPDATE SET state = ?3, lease_id = ?7, lease_expires_ms = ?8, proto = ?9");
  stmt.Bind(1, job.id())
      .Bind(2, job.request_id())
      .Bind(3, static_cast<int64_t>(job.state()))
      .Bind(4, static_cast<int64_t>(job.device()))
      .Bind(5, static_cast<int64_t>(job.priority()))
      .Bind(6, job.created_unix_ms())
      .Bind(7, lease_id)
      .Bind(8, lease_expires_ms)
      .BindBlob(9, job.SerializeAsString());
  if (stmt.Step() != SQLITE_DONE) return SqlError(db_, "save job");
  return Status::Ok();
}

StatusOr<v1::JobEvent> JobStore::AppendEventLocked(const std::string& job_id, v1::JobEvent event) {
  Statement max_stmt(db_, "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?");
  max_stmt.Bind(1, job_id);
  if (max_stmt.Step() != SQLITE_ROW) return SqlError(db_, "next event seq");
  event.set_seq(max_stmt.Int(0) + 1);
  if (event.unix_ms() == 0) event.set_unix_ms(UnixMillisNow());
  Statement insert(db_, "INSERT INTO events(job_id, seq, proto) VALUES(?, ?, ?)");
  insert.Bind(1, job_id).Bind(2, event.seq()).BindBlob(3, event.SerializeAsString());
  if (insert.Step() != SQLITE_DONE) return SqlError(db_, "append event");
  return event;
}

StatusOr<std::pair<v1::Job, bool>> JobStore::CreateJob(v1::Job job) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  if (!job.request_id().empty()) {
    Statement find(db_, "SELECT proto FROM jobs WHERE request_id = ?");
    find.Bind(1, job.request_id());
    if (find.Step() == SQLITE_ROW) {
      v1::Job existing;
      if (!existing.ParseFromString(find.Blob(0))) return DataLoss("STORE_CORRUPT", "stored job is unreadable");
      return std::make_pair(std::move(existing), true);
    }
  }
  job.set_state(v1::JOB_STATE_QUEUED);
  if (job.created_unix_ms() == 0) job.set_created_unix_ms(UnixMillisNow());
  QUANTD_RETURN_IF_ERROR(SaveLocked(job, "", 0));
  QUANTD_ASSIGN_OR_RETURN(auto event, AppendEventLocked(job.id(), StateEvent(v1::JOB_STATE_QUEUED, "", "queued")));
  (void)event;
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return std::make_pair(std::move(job), false);
}

StatusOr<v1::Job> JobStore::GetJob(const std::string& job_id) {
  std::lock_guard lock(mutex_);
  QUANTD_ASSIGN_OR_RETURN(auto job, LoadLocked(job_id));
  if (!job) return JobNotFound(job_id);
  return std::move(*job);
}

StatusOr<JobPage> JobStore::ListJobs(const std::vector<v1::JobState>& states, int page_size,
                                     const std::string& page_token) {
  if (page_size <= 0) page_size = 50;
  if (page_size > 500) page_size = 500;
  int64_t after_created = INT64_MAX;
  std::string after_id;
  if (!page_token.empty()) {
    auto colon = page_token.find(':');
    const char* begin = page_token.data();
    auto parsed = std::from_chars(begin, begin + (colon == std::string::npos ? 0 : colon), after_created);
    if (colon == std::string::npos || parsed.ec != std::errc() || parsed.ptr != begin + colon) {
      return InvalidArgument("BAD_PAGE_TOKEN", "page_token is not one this server issued");
    }
    after_id = page_token.substr(colon + 1);
  }
  uint32_t mask = 0;
  for (auto state : states) mask |= 1u << static_cast<unsigned>(state);
  std::lock_guard lock(mutex_);
  Statement stmt(db_,
                 "SELECT proto, created_ms, id FROM jobs"
                 " WHERE (?1 = 0 OR ((?1 >> state) & 1) = 1)"
                 "   AND (created_ms < ?2 OR (created_ms = ?2 AND id < ?3))"
                 " ORDER BY created_ms DESC, id DESC LIMIT ?4");
  stmt.Bind(1, static_cast<int64_t>(mask))
      .Bind(2, after_created)
      .Bind(3, after_id.empty() ? std::string("\x7f") : after_id)
      .Bind(4, static_cast<int64_t>(page_size) + 1);
  JobPage page;
  int rc;
  while ((rc = stmt.Step()) == SQLITE_ROW) {
    if (static_cast<int>(page.jobs.size()) == page_size) {
      const auto& last = page.jobs.back();
      page.next_page_token = std::to_string(last.created_unix_ms()) + ":" + last.id();
      break;
    }
    v1::Job job;
    if (!job.ParseFromString(stmt.Blob(0))) return DataLoss("STORE_CORRUPT", "stored job is unreadable");
    page.jobs.push_back(std::move(job));
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(db_, "list jobs");
  return page;
}

StatusOr<v1::JobEvent> JobStore::AppendEvent(const std::string& job_id, v1::JobEvent event) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  QUANTD_ASSIGN_OR_RETURN(auto stored, AppendEventLocked(job_id, std::move(event)));
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return stored;
}

StatusOr<std::vector<v1::JobEvent>> JobStore::EventsAfter(const std::string& job_id, int64_t after_seq, int limit) {
  std::lock_guard lock(mutex_);
  Statement stmt(db_, "SELECT proto FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?");
  stmt.Bind(1, job_id).Bind(2, after_seq).Bind(3, static_cast<int64_t>(limit));
  std::vector<v1::JobEvent> events;
  int rc;
  while ((rc = stmt.Step()) == SQLITE_ROW) {
    v1::JobEvent event;
    if (!event.ParseFromString(stmt.Blob(0))) return DataLoss("STORE_CORRUPT", "stored event is unreadable");
    events.push_back(std::move(event));
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "read events");
  return events;
}

StatusOr<std::optional<LeasedJob>> JobStore::LeaseNext(v1::DeviceClass worker_device, const std::string& worker_id,
                                                       int64_t lease_ttl_ms) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  Statement pick(db_,
                 "SELECT id FROM jobs WHERE state = ?1 AND device IN (?2, ?3, ?4)"
                 " ORDER BY priority DESC, created_ms ASC, id ASC LIMIT 1");
  pick.Bind(1, static_cast<int64_t>(v1::JOB_STATE_QUEUED))
      .Bind(2, static_cast<int64_t>(worker_device))
      .Bind(3, static_cast<int64_t>(v1::DEVICE_CLASS_ANY))
      .Bind(4, static_cast<int64_t>(v1::DEVICE_CLASS_UNSPECIFIED));
  int rc = pick.Step();
  if (rc == SQLITE_DONE) return std::optional<LeasedJob>();
  if (rc != SQLITE_ROW) return SqlError(db_, "pick job");
  std::string job_id = pick.Text(0);
  QUANTD_ASSIGN_OR_RETURN(auto loaded, LoadLocked(job_id));
  v1::Job job = std::move(*loaded);
  job.set_state(v1::JOB_STATE_RUNNING);
  job.set_attempts(job.attempts() + 1);
  job.set_worker(worker_id);
  job.set_started_unix_ms(UnixMillisNow());
  job.set_stage("");
  job.set_progress(0);
  std::string lease_id = NewId("lease-");
  QUANTD_RETURN_IF_ERROR(SaveLocked(job, lease_id, UnixMillisNow() + lease_ttl_ms));
  QUANTD_ASSIGN_OR_RETURN(
      auto event, AppendEventLocked(job_id, StateEvent(v1::JOB_STATE_RUNNING, "",
                                                       "attempt " + std::to_string(job.attempts()) + " on " + worker_id)));
  (void)event;
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return std::optional<LeasedJob>(LeasedJob{std::move(job), std::move(lease_id)});
}

StatusOr<v1::Job> JobStore::RenewLease(const std::string& job_id, const std::string& lease_id, int64_t lease_ttl_ms) {
  std::lock_guard lock(mutex_);
  QUANTD_ASSIGN_OR_RETURN(auto current, LeaseIdLocked(job_id));
  QUANTD_ASSIGN_OR_RETURN(auto job, LoadLocked(job_id));
  if (current != lease_id || job->state() != v1::JOB_STATE_RUNNING) return LeaseLost(job_id);
  Statement stmt(db_, "UPDATE jobs SET lease_expires_ms = ? WHERE id = ?");
  stmt.Bind(1, UnixMillisNow() + lease_ttl_ms).Bind(2, job_id);
  if (stmt.Step() != SQLITE_DONE) return SqlError(db_, "renew lease");
  return std::move(*job);
}

Status JobStore::UpdateProgress(const std::string& job_id, const std::string& stage, double fraction) {
  std::lock_guard lock(mutex_);
  QUANTD_ASSIGN_OR_RETURN(auto lease_id, LeaseIdLocked(job_id));
  QUANTD_ASSIGN_OR_RETURN(auto job, LoadLocked(job_id));
  if (job->state() != v1::JOB_STATE_RUNNING) return Status::Ok();
  job->set_stage(stage);
  job->set_progress(fraction);
  Statement stmt(db_, "UPDATE jobs SET proto = ? WHERE id = ?");
  stmt.BindBlob(1, job->SerializeAsString()).Bind(2, job_id);
  if (stmt.Step() != SQLITE_DONE) return SqlError(db_, "update progress");
  return Status::Ok();
}

Status JobStore::AddArtifact(const std::string& job_id, const std::string& lease_id, const v1::Artifact& artifact) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  QUANTD_ASSIGN_OR_RETURN(auto current, LeaseIdLocked(job_id));
  QUANTD_ASSIGN_OR_RETURN(auto job, LoadLocked(job_id));
  if (current != lease_id || job->state() != v1::JOB_STATE_RUNNING) return LeaseLost(job_id);
  bool replaced = false;
  for (auto& existing : *job->mutable_artifacts()) {
    if (existing.name() == artifact.name()) {
      existing = artifact;
      replaced = true;
    }
  }
  if (!replaced) *job->add_artifacts() = artifact;
  Statement stmt(db_, "UPDATE jobs SET proto = ? WHERE id = ?");
  stmt.BindBlob(1, job->SerializeAsString()).Bind(2, job_id);
  if (stmt.Step() != SQLITE_DONE) return SqlError(db_, "add artifact");
  v1::JobEvent event;
  *event.mutable_artifact() = artifact;
  QUANTD_ASSIGN_OR_RETURN(auto stored, AppendEventLocked(job_id, event));
  (void)stored;
  return tx.Commit();
}

StatusOr<v1::Job> JobStore::Complete(const std::string& job_id, const std::string& lease_id) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  QUANTD_ASSIGN_OR_RETURN(auto current, LeaseIdLocked(job_id));
  QUANTD_ASSIGN_OR_RETURN(auto job, LoadLocked(job_id));
  if (current != lease_id || job->state() != v1::JOB_STATE_RUNNING) return LeaseLost(job_id);
  job->set_state(v1::JOB_STATE_SUCCEEDED);
  job->set_finished_unix_ms(UnixMillisNow());
  job->set_progress(1.0);
  QUANTD_RETURN_IF_ERROR(SaveLocked(*job, "", 0));
  QUANTD_ASSIGN_OR_RETURN(auto event, AppendEventLocked(job_id, StateEvent(v1::JOB_STATE_SUCCEEDED, "", "succeeded")));
  (void)event;
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return std::move(*job);
}

StatusOr<v1::Job> JobStore::Fail(const std::string& job_id, const std::string& lease_id, const std::string& reason,
                                 const std::string& message, bool retryable, int max_attempts) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  QUANTD_ASSIGN_OR_RETURN(auto current, LeaseIdLocked(job_id));
  QUANTD_ASSIGN_OR_RETURN(auto job, LoadLocked(job_id));
  if (current != lease_id || job->state() != v1::JOB_STATE_RUNNING) return LeaseLost(job_id);
  v1::JobState next;
  if (job->cancel_requested()) {
    next = v1::JOB_STATE_CANCELLED;
  } else if (retryable && job->attempts() < max_attempts) {
    next = v1::JOB_STATE_QUEUED;
  } else {
    next = v1::JOB_STATE_FAILED;
  }
  job->set_state(next);
  if (next == v1::JOB_STATE_QUEUED) {
    job->set_worker("");
  } else {
    job->set_finished_unix_ms(UnixMillisNow());
    job->set_failure_reason(next == v1::JOB_STATE_CANCELLED ? "CANCELLED" : reason);
    job->set_failure_message(next == v1::JOB_STATE_CANCELLED ? "cancelled by request" : message);
  }
  QUANTD_RETURN_IF_ERROR(SaveLocked(*job, "", 0));
  QUANTD_ASSIGN_OR_RETURN(auto event,
                          AppendEventLocked(job_id, StateEvent(next, job->failure_reason().empty() ? reason : job->failure_reason(),
                                                               job->failure_message().empty() ? message : job->failure_message())));
  (void)event;
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return std::move(*job);
}

StatusOr<v1::Job> JobStore::RequestCancel(const std::string& job_id) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  QUANTD_ASSIGN_OR_RETURN(auto current, LeaseIdLocked(job_id));
  QUANTD_ASSIGN_OR_RETURN(auto job, LoadLocked(job_id));
  if (IsTerminal(job->state())) return std::move(*job);
  job->set_cancel_requested(true);
  if (job->state() == v1::JOB_STATE_QUEUED) {
    job->set_state(v1::JOB_STATE_CANCELLED);
    job->set_finished_unix_ms(UnixMillisNow());
    job->set_failure_reason("CANCELLED");
    job->set_failure_message("cancelled by request");
    QUANTD_RETURN_IF_ERROR(SaveLocked(*job, "", 0));
    QUANTD_ASSIGN_OR_RETURN(auto event, AppendEventLocked(job_id, StateEvent(v1::JOB_STATE_CANCELLED, "CANCELLED",
                                                                              "cancelled while queued")));
    (void)event;
  } else {
    Statement stmt(db_, "UPDATE jobs SET proto = ? WHERE id = ?");
    stmt.BindBlob(1, job->SerializeAsString()).Bind(2, job_id);
    if (stmt.Step() != SQLITE_DONE) return SqlError(db_, "request cancel");
    v1::JobEvent log;
    log.mutable_log()->set_level(v1::LogLine::LEVEL_INFO);
    log.mutable_log()->set_text("cancellation requested; waiting for the worker to stop");
    QUANTD_ASSIGN_OR_RETURN(auto event, AppendEventLocked(job_id, log));
    (void)event;
  }
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  (void)current;
  return std::move(*job);
}

StatusOr<std::vector<ExpiredLease>> JobStore::ExpireLeases(int max_attempts) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  Statement stmt(db_, "SELECT id FROM jobs WHERE state = ? AND lease_expires_ms < ?");
  stmt.Bind(1, static_cast<int64_t>(v1::JOB_STATE_RUNNING)).Bind(2, UnixMillisNow());
  std::vector<std::string> ids;
  while (stmt.Step() == SQLITE_ROW) ids.push_back(stmt.Text(0));
  std::vector<ExpiredLease> expired;
  for (const auto& id : ids) {
    QUANTD_ASSIGN_OR_RETURN(auto job, LoadLocked(id));
    ExpiredLease lease{id, v1::JOB_STATE_QUEUED, ""};
    if (job->cancel_requested()) {
      lease.new_state = v1::JOB_STATE_CANCELLED;
      lease.reason = "CANCELLED";
    } else if (job->attempts() >= max_attempts) {
      lease.new_state = v1::JOB_STATE_FAILED;
      lease.reason = "WORKER_LOST";
    }
    std::string message =
        lease.new_state == v1::JOB_STATE_FAILED
            ? "the worker running attempt " + std::to_string(job->attempts()) + " stopped responding; gave up after " +
                  std::to_string(max_attempts) + " attempts"
            : "the worker " + job->worker() + " stopped responding; lease expired";
    job->set_state(lease.new_state);
    job->set_worker("");
    if (lease.new_state != v1::JOB_STATE_QUEUED) {
      job->set_finished_unix_ms(UnixMillisNow());
      job->set_failure_reason(lease.reason);
      job->set_failure_message(message);
    }
    QUANTD_RETURN_IF_ERROR(SaveLocked(*job, "", 0));
    QUANTD_ASSIGN_OR_RETURN(auto event, AppendEventLocked(id, StateEvent(lease.new_state, lease.reason, message)));
    (void)event;
    expired.push_back(std::move(lease));
  }
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return expired;
}

StatusOr<std::vector<std::pair<v1::JobState, int64_t>>> JobStore::CountByState() {
  std::lock_guard lock(mutex_);
  Statement stmt(db_, "SELECT state, COUNT(*) FROM jobs GROUP BY state");
  std::vector<std::pair<v1::JobState, int64_t>> counts;
  while (stmt.Step() == SQLITE_ROW) counts.emplace_back(static_cast<v1::JobState>(stmt.Int(0)), stmt.Int(1));
  return counts;
}

StatusOr<std::vector<std::pair<v1::DeviceClass, int64_t>>> JobStore::QueueDepthByDevice() {
  std::lock_guard lock(mutex_);
  Statement stmt(db_, "SELECT device, COUNT(*) FROM jobs WHERE state = ? GROUP BY device");
  stmt.Bind(1, static_cast<int64_t>(v1::JOB_STATE_QUEUED));
  std::vector<std::pair<v1::DeviceClass, int64_t>> counts;
  while (stmt.Step() == SQLITE_ROW) counts.emplace_back(static_cast<v1::DeviceClass>(stmt.Int(0)), stmt.Int(1));
  return counts;
}

}  // namespace quantd::server
