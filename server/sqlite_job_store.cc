#include "server/sqlite_job_store.h"

#include "common/ids.h"

namespace quantd::server {
namespace {

using namespace job_rules;

Status SqlError(sqlite3* db, const std::string& what) {
  return Internal("STORE_ERROR", what + ": " + sqlite3_errmsg(db));
}

// Prepared statement with RAII finalisation and typed binders.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) { sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr); }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

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
  // SQLITE_ROW, SQLITE_DONE or an error code (also when preparing failed).
  int Step() { return stmt_ ? sqlite3_step(stmt_) : SQLITE_ERROR; }
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
  sqlite3_stmt* stmt_ = nullptr;
};

// Rolls back unless committed, so every early return leaves the file as it was.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {
    ok_ = sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK;
  }
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

// Steps `stmt` to the end, parsing column 0 of each row as a serialized T
// (`kind` names it in the corruption error, `action` the failed query).
template <typename T>
StatusOr<std::vector<T>> ReadProtoRows(sqlite3* db, Statement& stmt, const std::string& kind,
                                       const std::string& action) {
  std::vector<T> rows;
  int rc;
  while ((rc = stmt.Step()) == SQLITE_ROW) {
    T row;
    if (!row.ParseFromString(stmt.Blob(0))) return DataLoss("STORE_CORRUPT", "stored " + kind + " is unreadable");
    rows.push_back(std::move(row));
  }
  if (rc != SQLITE_DONE) return SqlError(db, action);
  return rows;
}

}  // namespace

StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(const std::filesystem::path& file) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr) !=
      SQLITE_OK) {
    std::string message = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Internal("STORE_OPEN_FAILED", "cannot open job store " + file.string() + ": " + message);
  }
  std::unique_ptr<SqliteJobStore> store(new SqliteJobStore(db));
  sqlite3_busy_timeout(db, 5000);
  QUANTD_RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
  QUANTD_RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=FULL"));
  QUANTD_RETURN_IF_ERROR(
      store->Exec("CREATE TABLE IF NOT EXISTS jobs("
                  " id TEXT PRIMARY KEY,"
                  " request_id TEXT NOT NULL DEFAULT '',"
                  " state INTEGER NOT NULL,"
                  " device INTEGER NOT NULL,"
                  " priority INTEGER NOT NULL,"
                  " created_ms INTEGER NOT NULL,"
                  " lease_id TEXT NOT NULL DEFAULT '',"
                  " lease_expires_ms INTEGER NOT NULL DEFAULT 0,"
                  " proto BLOB NOT NULL)"));
  QUANTD_RETURN_IF_ERROR(store->MigrateTenants());
  QUANTD_RETURN_IF_ERROR(
      store->Exec("CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(state, priority DESC, created_ms)"));
  QUANTD_RETURN_IF_ERROR(store->Exec("CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_ms DESC, id DESC)"));
  QUANTD_RETURN_IF_ERROR(
      store->Exec("CREATE TABLE IF NOT EXISTS events("
                  " job_id TEXT NOT NULL, seq INTEGER NOT NULL, proto BLOB NOT NULL,"
                  " PRIMARY KEY(job_id, seq)) WITHOUT ROWID"));
  return store;
}

SqliteJobStore::~SqliteJobStore() {
  sqlite3_close(db_);
}

Status SqliteJobStore::MigrateTenants() {
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  bool has_tenant = false;
  {
    Statement columns(db_, "SELECT name FROM pragma_table_info('jobs')");
    int rc;
    while ((rc = columns.Step()) == SQLITE_ROW) has_tenant = has_tenant || columns.Text(0) == "tenant";
    if (rc != SQLITE_DONE) return SqlError(db_, "read jobs columns");
  }
  if (!has_tenant) {
    // Rows from before tenants existed were created without authentication.
    QUANTD_RETURN_IF_ERROR(Exec("ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default'"));
  }
  // Idempotency keys are per tenant: one tenant's key must neither collide
  // with nor reveal another's job.
  QUANTD_RETURN_IF_ERROR(Exec("DROP INDEX IF EXISTS jobs_request"));
  QUANTD_RETURN_IF_ERROR(
      Exec("CREATE UNIQUE INDEX IF NOT EXISTS jobs_tenant_request ON jobs(tenant, request_id) WHERE request_id <> ''"));
  QUANTD_RETURN_IF_ERROR(
      Exec("CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs(tenant, created_ms DESC, id DESC)"));
  return tx.Commit();
}

Status SqliteJobStore::Exec(const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    std::string message = error ? error : "unknown error";
    sqlite3_free(error);
    return Internal("STORE_ERROR", std::string(sql).substr(0, 40) + ": " + message);
  }
  return Status::Ok();
}

StatusOr<std::optional<v1::Job>> SqliteJobStore::LoadLocked(const std::string& job_id) {
  Statement stmt(db_, "SELECT proto FROM jobs WHERE id = ?");
  stmt.Bind(1, job_id);
  int rc = stmt.Step();
  if (rc == SQLITE_DONE) return std::optional<v1::Job>();
  if (rc != SQLITE_ROW) return SqlError(db_, "load job");
  v1::Job job;
  if (!job.ParseFromString(stmt.Blob(0))) return DataLoss("STORE_CORRUPT", "stored job " + job_id + " is unreadable");
  return std::optional<v1::Job>(std::move(job));
}

StatusOr<std::pair<v1::Job, std::string>> SqliteJobStore::LoadWithLeaseLocked(const std::string& job_id) {
  Statement stmt(db_, "SELECT proto, lease_id FROM jobs WHERE id = ?");
  stmt.Bind(1, job_id);
  int rc = stmt.Step();
  if (rc == SQLITE_DONE) return JobNotFound(job_id);
  if (rc != SQLITE_ROW) return SqlError(db_, "load job");
  v1::Job job;
  if (!job.ParseFromString(stmt.Blob(0))) return DataLoss("STORE_CORRUPT", "stored job " + job_id + " is unreadable");
  return std::make_pair(std::move(job), stmt.Text(1));
}

Status SqliteJobStore::SaveLocked(const v1::Job& job, const std::string& lease_id, int64_t lease_expires_ms) {
  Statement stmt(
      db_,
      "INSERT INTO jobs(id, request_id, state, device, priority, created_ms, lease_id, lease_expires_ms, proto,"
      " tenant) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
      " ON CONFLICT(id) DO UPDATE SET state = ?3, lease_id = ?7, lease_expires_ms = ?8, proto = ?9");
  stmt.Bind(1, job.id())
      .Bind(2, job.request_id())
      .Bind(3, static_cast<int64_t>(job.state()))
      .Bind(4, static_cast<int64_t>(job.device()))
      .Bind(5, static_cast<int64_t>(job.priority()))
      .Bind(6, job.created_unix_ms())
      .Bind(7, lease_id)
      .Bind(8, lease_expires_ms)
      .BindBlob(9, job.SerializeAsString())
      .Bind(10, TenantOf(job));
  if (stmt.Step() != SQLITE_DONE) return SqlError(db_, "save job");
  return Status::Ok();
}

Status SqliteJobStore::SaveProtoLocked(const v1::Job& job) {
  Statement stmt(db_, "UPDATE jobs SET proto = ? WHERE id = ?");
  stmt.BindBlob(1, job.SerializeAsString()).Bind(2, job.id());
  if (stmt.Step() != SQLITE_DONE) return SqlError(db_, "update job");
  return Status::Ok();
}

StatusOr<v1::JobEvent> SqliteJobStore::AppendEventLocked(const std::string& job_id, v1::JobEvent event) {
  // Inside BEGIN IMMEDIATE this process is the only writer, so MAX + 1 is
  // the next dense number.
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

StatusOr<std::pair<v1::Job, bool>> SqliteJobStore::CreateJob(v1::Job job) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  if (job.tenant().empty()) job.set_tenant(kDefaultTenant);
  if (!job.request_id().empty()) {
    Statement find(db_, "SELECT proto FROM jobs WHERE request_id = ? AND tenant = ?");
    find.Bind(1, job.request_id()).Bind(2, job.tenant());
    if (find.Step() == SQLITE_ROW) {
      v1::Job existing;
      if (!existing.ParseFromString(find.Blob(0))) return DataLoss("STORE_CORRUPT", "stored job is unreadable");
      return std::make_pair(std::move(existing), true);
    }
  }
  job.set_state(v1::JOB_STATE_QUEUED);
  if (job.created_unix_ms() == 0) job.set_created_unix_ms(UnixMillisNow());
  QUANTD_RETURN_IF_ERROR(SaveLocked(job, "", 0));
  QUANTD_RETURN_IF_ERROR(AppendEventLocked(job.id(), StateEvent(v1::JOB_STATE_QUEUED, "", "queued")).status());
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return std::make_pair(std::move(job), false);
}

StatusOr<v1::Job> SqliteJobStore::GetJob(const std::string& job_id) {
  std::lock_guard lock(mutex_);
  QUANTD_ASSIGN_OR_RETURN(auto job, LoadLocked(job_id));
  if (!job) return JobNotFound(job_id);
  return std::move(*job);
}

StatusOr<JobPage> SqliteJobStore::ListJobs(const std::string& tenant, const std::vector<v1::JobState>& states,
                                           int page_size, const std::string& page_token) {
  page_size = ClampPageSize(page_size);
  QUANTD_ASSIGN_OR_RETURN(auto cursor, ParsePageToken(page_token));
  std::lock_guard lock(mutex_);
  Statement stmt(db_,
                 "SELECT proto FROM jobs"
                 " WHERE (?1 = 0 OR ((?1 >> state) & 1) = 1)"
                 "   AND (?2 = 0 OR created_ms < ?3 OR (created_ms = ?3 AND id < ?4))"
                 "   AND (?6 = '' OR tenant = ?6)"
                 " ORDER BY created_ms DESC, id DESC LIMIT ?5");
  stmt.Bind(1, StateMask(states))
      .Bind(2, int64_t{cursor ? 1 : 0})
      .Bind(3, cursor ? cursor->created_ms : int64_t{0})
      .Bind(4, cursor ? cursor->id : std::string())
      .Bind(5, static_cast<int64_t>(page_size) + 1)
      .Bind(6, tenant);
  JobPage page;
  int rc;
  while ((rc = stmt.Step()) == SQLITE_ROW) {
    if (static_cast<int>(page.jobs.size()) == page_size) {
      page.next_page_token = PageTokenAfter(page.jobs.back());
      break;
    }
    v1::Job job;
    if (!job.ParseFromString(stmt.Blob(0))) return DataLoss("STORE_CORRUPT", "stored job is unreadable");
    page.jobs.push_back(std::move(job));
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(db_, "list jobs");
  return page;
}

StatusOr<v1::JobEvent> SqliteJobStore::AppendEvent(const std::string& job_id, v1::JobEvent event) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  QUANTD_ASSIGN_OR_RETURN(auto stored, AppendEventLocked(job_id, std::move(event)));
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return stored;
}

StatusOr<std::vector<v1::JobEvent>> SqliteJobStore::EventsAfter(const std::string& job_id, int64_t after_seq,
                                                                int limit) {
  std::lock_guard lock(mutex_);
  Statement stmt(db_, "SELECT proto FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?");
  stmt.Bind(1, job_id).Bind(2, after_seq).Bind(3, static_cast<int64_t>(limit));
  return ReadProtoRows<v1::JobEvent>(db_, stmt, "event", "read events");
}

StatusOr<std::optional<LeasedJob>> SqliteJobStore::LeaseNext(v1::DeviceClass worker_device,
                                                             const std::string& worker_id, int64_t lease_ttl_ms) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  Statement pick(db_,
                 "SELECT proto FROM jobs WHERE state = ?1 AND device IN (?2, ?3, ?4)"
                 " ORDER BY priority DESC, created_ms ASC, id ASC LIMIT 1");
  pick.Bind(1, static_cast<int64_t>(v1::JOB_STATE_QUEUED))
      .Bind(2, static_cast<int64_t>(worker_device))
      .Bind(3, static_cast<int64_t>(v1::DEVICE_CLASS_ANY))
      .Bind(4, static_cast<int64_t>(v1::DEVICE_CLASS_UNSPECIFIED));
  int rc = pick.Step();
  if (rc == SQLITE_DONE) return std::optional<LeasedJob>();
  if (rc != SQLITE_ROW) return SqlError(db_, "pick job");
  v1::Job job;
  if (!job.ParseFromString(pick.Blob(0))) return DataLoss("STORE_CORRUPT", "stored job is unreadable");
  auto event = StartAttempt(job, worker_id);
  std::string lease_id = NewId("lease-");
  QUANTD_RETURN_IF_ERROR(SaveLocked(job, lease_id, UnixMillisNow() + lease_ttl_ms));
  QUANTD_RETURN_IF_ERROR(AppendEventLocked(job.id(), std::move(event)).status());
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return std::optional<LeasedJob>(LeasedJob{std::move(job), std::move(lease_id)});
}

StatusOr<v1::Job> SqliteJobStore::RenewLease(const std::string& job_id, const std::string& lease_id,
                                             int64_t lease_ttl_ms) {
  // A heartbeat without events is exactly a renewal.
  return Heartbeat(job_id, lease_id, lease_ttl_ms, {});
}

StatusOr<v1::Job> SqliteJobStore::Heartbeat(const std::string& job_id, const std::string& lease_id,
                                            int64_t lease_ttl_ms, const std::vector<v1::JobEvent>& events) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  QUANTD_ASSIGN_OR_RETURN(auto loaded, LoadWithLeaseLocked(job_id));
  auto& [job, current] = loaded;
  if (current != lease_id || job.state() != v1::JOB_STATE_RUNNING) return LeaseLost(job_id);
  bool progressed = false;
  for (const auto& event : events) {
    if (!IsWorkerEvent(event)) continue;
    if (event.has_progress()) progressed = ApplyProgress(job, event.progress().stage(), event.progress().fraction());
    QUANTD_RETURN_IF_ERROR(AppendEventLocked(job_id, event).status());
  }
  Statement stmt(db_, "UPDATE jobs SET lease_expires_ms = ? WHERE id = ?");
  stmt.Bind(1, UnixMillisNow() + lease_ttl_ms).Bind(2, job_id);
  if (stmt.Step() != SQLITE_DONE) return SqlError(db_, "renew lease");
  if (progressed) QUANTD_RETURN_IF_ERROR(SaveProtoLocked(job));
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return std::move(job);
}

Status SqliteJobStore::UpdateProgress(const std::string& job_id, const std::string& stage, double fraction) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  QUANTD_ASSIGN_OR_RETURN(auto loaded, LoadWithLeaseLocked(job_id));
  if (!ApplyProgress(loaded.first, stage, fraction)) return Status::Ok();
  QUANTD_RETURN_IF_ERROR(SaveProtoLocked(loaded.first));
  return tx.Commit();
}

Status SqliteJobStore::AddArtifact(const std::string& job_id, const std::string& lease_id,
                                   const v1::Artifact& artifact) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  QUANTD_ASSIGN_OR_RETURN(auto loaded, LoadWithLeaseLocked(job_id));
  auto& [job, current] = loaded;
  if (current != lease_id || job.state() != v1::JOB_STATE_RUNNING) return LeaseLost(job_id);
  PutArtifact(job, artifact);
  QUANTD_RETURN_IF_ERROR(SaveProtoLocked(job));
  v1::JobEvent event;
  *event.mutable_artifact() = artifact;
  QUANTD_RETURN_IF_ERROR(AppendEventLocked(job_id, std::move(event)).status());
  return tx.Commit();
}

StatusOr<v1::Job> SqliteJobStore::Complete(const std::string& job_id, const std::string& lease_id) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  QUANTD_ASSIGN_OR_RETURN(auto loaded, LoadWithLeaseLocked(job_id));
  auto& [job, current] = loaded;
  if (current != lease_id || job.state() != v1::JOB_STATE_RUNNING) return LeaseLost(job_id);
  auto event = Succeed(job);
  QUANTD_RETURN_IF_ERROR(SaveLocked(job, "", 0));
  QUANTD_RETURN_IF_ERROR(AppendEventLocked(job_id, std::move(event)).status());
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return std::move(job);
}

StatusOr<v1::Job> SqliteJobStore::Fail(const std::string& job_id, const std::string& lease_id,
                                       const std::string& reason, const std::string& message, bool retryable,
                                       int max_attempts) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  QUANTD_ASSIGN_OR_RETURN(auto loaded, LoadWithLeaseLocked(job_id));
  auto& [job, current] = loaded;
  if (current != lease_id || job.state() != v1::JOB_STATE_RUNNING) return LeaseLost(job_id);
  auto event = FailAttempt(job, reason, message, retryable, max_attempts);
  QUANTD_RETURN_IF_ERROR(SaveLocked(job, "", 0));
  QUANTD_RETURN_IF_ERROR(AppendEventLocked(job_id, std::move(event)).status());
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return std::move(job);
}

StatusOr<v1::Job> SqliteJobStore::RequestCancel(const std::string& job_id) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  QUANTD_ASSIGN_OR_RETURN(auto loaded, LoadWithLeaseLocked(job_id));
  auto& [job, current] = loaded;
  if (IsTerminal(job.state())) return std::move(job);
  auto event = job_rules::RequestCancel(job);
  if (IsTerminal(job.state())) {
    QUANTD_RETURN_IF_ERROR(SaveLocked(job, "", 0));
  } else {
    QUANTD_RETURN_IF_ERROR(SaveProtoLocked(job));
  }
  QUANTD_RETURN_IF_ERROR(AppendEventLocked(job_id, std::move(event)).status());
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return std::move(job);
}

StatusOr<std::vector<ExpiredLease>> SqliteJobStore::ExpireLeases(int max_attempts) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_);
  if (!tx.began()) return SqlError(db_, "begin");
  Statement stmt(db_, "SELECT proto FROM jobs WHERE state = ? AND lease_expires_ms < ?");
  stmt.Bind(1, static_cast<int64_t>(v1::JOB_STATE_RUNNING)).Bind(2, UnixMillisNow());
  QUANTD_ASSIGN_OR_RETURN(auto jobs, ReadProtoRows<v1::Job>(db_, stmt, "job", "find expired leases"));
  std::vector<ExpiredLease> expired;
  for (auto& job : jobs) {
    v1::JobEvent event;
    auto lease = ExpireLease(job, max_attempts, event);
    QUANTD_RETURN_IF_ERROR(SaveLocked(job, "", 0));
    QUANTD_RETURN_IF_ERROR(AppendEventLocked(job.id(), std::move(event)).status());
    expired.push_back(std::move(lease));
  }
  QUANTD_RETURN_IF_ERROR(tx.Commit());
  return expired;
}

StatusOr<std::vector<std::pair<v1::JobState, int64_t>>> SqliteJobStore::CountByState() {
  std::lock_guard lock(mutex_);
  Statement stmt(db_, "SELECT state, COUNT(*) FROM jobs GROUP BY state");
  std::vector<std::pair<v1::JobState, int64_t>> counts;
  int rc;
  while ((rc = stmt.Step()) == SQLITE_ROW) counts.emplace_back(static_cast<v1::JobState>(stmt.Int(0)), stmt.Int(1));
  if (rc != SQLITE_DONE) return SqlError(db_, "count jobs");
  return counts;
}

StatusOr<std::vector<std::pair<v1::DeviceClass, int64_t>>> SqliteJobStore::QueueDepthByDevice() {
  std::lock_guard lock(mutex_);
  Statement stmt(db_, "SELECT device, COUNT(*) FROM jobs WHERE state = ? GROUP BY device");
  stmt.Bind(1, static_cast<int64_t>(v1::JOB_STATE_QUEUED));
  std::vector<std::pair<v1::DeviceClass, int64_t>> counts;
  int rc;
  while ((rc = stmt.Step()) == SQLITE_ROW) counts.emplace_back(static_cast<v1::DeviceClass>(stmt.Int(0)), stmt.Int(1));
  if (rc != SQLITE_DONE) return SqlError(db_, "queue depth");
  return counts;
}

}  // namespace quantd::server
