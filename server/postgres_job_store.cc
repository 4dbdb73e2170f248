#include "server/postgres_job_store.h"

#include <libpq-fe.h>

#include <chrono>
#include <utility>

#include "common/ids.h"
#include "common/log.h"

namespace quantd::server {

using namespace job_rules;

namespace {

// The SQL spells the two states it indexes on as numbers, so that partial
// indexes match the queries' predicates.
static_assert(v1::JOB_STATE_QUEUED == 1 && v1::JOB_STATE_RUNNING == 2);

// Lease deadlines use the database clock, shared by every replica.
#define QUANTD_PG_NOW_MS "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint"

constexpr int kMaxRuns = 3;
constexpr auto kAcquireTimeout = std::chrono::seconds(30);
constexpr int kExpireBatch = 200;

constexpr const char* kSchema = R"sql(
BEGIN;
-- "already exists, skipping" on every start is noise.
SET LOCAL client_min_messages = warning;
-- Replicas starting together would race on CREATE ... IF NOT EXISTS.
SELECT pg_advisory_xact_lock(7165636174640001);
CREATE TABLE IF NOT EXISTS quantd_jobs(
  id TEXT COLLATE "C" PRIMARY KEY,
  request_id TEXT NOT NULL DEFAULT '',
  state INTEGER NOT NULL,
  device INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  created_ms BIGINT NOT NULL,
  lease_id TEXT NOT NULL DEFAULT '',
  lease_expires_ms BIGINT NOT NULL DEFAULT 0,
  last_seq BIGINT NOT NULL DEFAULT 0,
  proto BYTEA NOT NULL);
-- Rows from before tenants existed were created without authentication.
ALTER TABLE quantd_jobs ADD COLUMN IF NOT EXISTS tenant TEXT COLLATE "C" NOT NULL DEFAULT 'default';
-- Idempotency keys are per tenant: one tenant's key must neither collide
-- with nor reveal another's job.
DROP INDEX IF EXISTS quantd_jobs_request;
CREATE UNIQUE INDEX IF NOT EXISTS quantd_jobs_tenant_request ON quantd_jobs(tenant, request_id)
  WHERE request_id <> '';
CREATE INDEX IF NOT EXISTS quantd_jobs_tenant_created ON quantd_jobs(tenant, created_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS quantd_jobs_queue ON quantd_jobs(priority DESC, created_ms, id) WHERE state = 1;
CREATE INDEX IF NOT EXISTS quantd_jobs_leases ON quantd_jobs(lease_expires_ms) WHERE state = 2;
CREATE INDEX IF NOT EXISTS quantd_jobs_created ON quantd_jobs(created_ms DESC, id DESC);
CREATE TABLE IF NOT EXISTS quantd_job_events(
  job_id TEXT COLLATE "C" NOT NULL REFERENCES quantd_jobs(id) ON DELETE CASCADE,
  seq BIGINT NOT NULL,
  proto BYTEA NOT NULL,
  PRIMARY KEY(job_id, seq));
COMMIT;
)sql";

constexpr const char* kGetJob = "SELECT proto FROM quantd_jobs WHERE id = $1";
constexpr const char* kLockJob = "SELECT proto, lease_id FROM quantd_jobs WHERE id = $1 FOR UPDATE";
constexpr const char* kJobExists = "SELECT 1 FROM quantd_jobs WHERE id = $1";
constexpr const char* kInsertJob =
    "INSERT INTO quantd_jobs(id, request_id, state, device, priority, created_ms, proto, tenant)"
    " VALUES($1, $2, $3::int, $4::int, $5::int, $6::bigint, $7, $8) ON CONFLICT DO NOTHING RETURNING 1";
constexpr const char* kFindRequest =
    "SELECT proto FROM quantd_jobs WHERE request_id = $1 AND request_id <> '' AND tenant = $2";
constexpr const char* kSaveJob =
    "UPDATE quantd_jobs SET state = $2::int, lease_id = $3,"
    " lease_expires_ms = CASE WHEN $4::bigint > 0 THEN " QUANTD_PG_NOW_MS
    " + $4::bigint ELSE 0 END,"
    " proto = $5 WHERE id = $1";
constexpr const char* kSaveProto = "UPDATE quantd_jobs SET proto = $2 WHERE id = $1";
// The event's bytes are stored without their number; readers put the
// column's number back, so the number can come from the same statement.
constexpr const char* kAppendEvent =
    "WITH next AS (UPDATE quantd_jobs SET last_seq = last_seq + 1 WHERE id = $1 RETURNING id, last_seq)"
    " INSERT INTO quantd_job_events(job_id, seq, proto) SELECT id, last_seq, $2 FROM next RETURNING seq";
constexpr const char* kEventsAfter =
    "SELECT seq, proto FROM quantd_job_events WHERE job_id = $1 AND seq > $2::bigint ORDER BY seq LIMIT $3::bigint";
constexpr const char* kPickNext =
    "SELECT proto FROM quantd_jobs WHERE state = 1 AND device IN ($1::int, $2::int, $3::int)"
    " ORDER BY priority DESC, created_ms, id LIMIT 1 FOR UPDATE SKIP LOCKED";
constexpr const char* kRenewLease = "UPDATE quantd_jobs SET lease_expires_ms = " QUANTD_PG_NOW_MS
                                    " + $3::bigint"
                                    " WHERE id = $1 AND lease_id = $2 AND state = 2 RETURNING proto";
constexpr const char* kExpired =
    "SELECT proto FROM quantd_jobs WHERE state = 2 AND lease_expires_ms < " QUANTD_PG_NOW_MS
    " ORDER BY lease_expires_ms LIMIT $1::bigint FOR UPDATE SKIP LOCKED";
constexpr const char* kListJobs =
    "SELECT proto FROM quantd_jobs"
    " WHERE ($1::bigint = 0 OR (($1::bigint >> state) & 1) = 1)"
    "   AND ($2::bigint IS NULL OR (created_ms, id) < ($2::bigint, $3::text))"
    "   AND ($5::text = '' OR tenant = $5::text)"
    " ORDER BY created_ms DESC, id DESC LIMIT $4::bigint";
constexpr const char* kCountByState = "SELECT state, COUNT(*) FROM quantd_jobs GROUP BY state";
constexpr const char* kQueueDepth = "SELECT device, COUNT(*) FROM quantd_jobs WHERE state = 1 GROUP BY device";

#undef QUANTD_PG_NOW_MS

// Statement parameters: numbers and text travel as text, protos as binary.
class Params {
 public:
  Params& Text(std::string value) { return Add(std::move(value), 0, false); }
  Params& Int(int64_t value) { return Add(std::to_string(value), 0, false); }
  Params& Bytes(std::string value) { return Add(std::move(value), 1, false); }
  Params& Null() { return Add("", 0, true); }

  int size() const { return static_cast<int>(values_.size()); }
  const std::string& value(int i) const { return values_[static_cast<size_t>(i)]; }
  int format(int i) const { return formats_[static_cast<size_t>(i)]; }
  bool null(int i) const { return nulls_[static_cast<size_t>(i)]; }

 private:
  Params& Add(std::string value, int format, bool null) {
    values_.push_back(std::move(value));
    formats_.push_back(format);
    nulls_.push_back(null);
    return *this;
  }
  std::vector<std::string> values_;
  std::vector<int> formats_;
  std::vector<bool> nulls_;
};

// A query result in binary format.
class Result {
 public:
  explicit Result(PGresult* result) : result_(result) {}
  ~Result() { PQclear(result_); }
  Result(Result&& other) noexcept : result_(std::exchange(other.result_, nullptr)) {}
  Result& operator=(Result&&) = delete;
  Result(const Result&) = delete;
  Result& operator=(const Result&) = delete;

  PGresult* raw() const { return result_; }
  int rows() const { return PQntuples(result_); }
  std::string Bytes(int row, int column) const {
    return std::string(PQgetvalue(result_, row, column), static_cast<size_t>(PQgetlength(result_, row, column)));
  }
  // int2, int4 and int8 arrive big-endian.
  int64_t Int(int row, int column) const {
    const auto* bytes = reinterpret_cast<const unsigned char*>(PQgetvalue(result_, row, column));
    int length = PQgetlength(result_, row, column);
    uint64_t value = 0;
    for (int i = 0; i < length; ++i) value = (value << 8) | bytes[i];
    if (length > 0 && length < 8 && (bytes[0] & 0x80)) value |= ~uint64_t{0} << (8 * length);
    return static_cast<int64_t>(value);
  }

 private:
  PGresult* result_;
};

StatusOr<v1::Job> ParseJob(const Result& result, int row, int column) {
  v1::Job job;
  if (!job.ParseFromString(result.Bytes(row, column))) return DataLoss("STORE_CORRUPT", "stored job is unreadable");
  return job;
}

}  // namespace

class PostgresJobStore::Connection {
 public:
  static StatusOr<std::unique_ptr<Connection>> Connect(const std::string& dsn) {
    // The DSN comes first among the keywords, so anything it sets wins;
    // fallback_application_name only names the sessions in pg_stat_activity.
    const char* keywords[] = {"dbname", "fallback_application_name", nullptr};
    const char* values[] = {dsn.c_str(), "quantd", nullptr};
    PGconn* conn = PQconnectdbParams(keywords, values, 1);
    if (!conn) return Status(StatusCode::kUnavailable, "STORE_UNAVAILABLE", "PostgreSQL: out of memory");
    std::unique_ptr<Connection> connection(new Connection(conn));
    // Server notices go to quantd's log (which may be JSON), not raw to stderr.
    PQsetNoticeProcessor(conn, &Connection::OnNotice, nullptr);
    if (PQstatus(conn) != CONNECTION_OK) {
      return Status(StatusCode::kUnavailable, "STORE_UNAVAILABLE",
                    "cannot connect to PostgreSQL: " + Trimmed(PQerrorMessage(conn)));
    }
    return connection;
  }
  ~Connection() { PQfinish(conn_); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  StatusOr<Result> Exec(const char* sql, const Params& params = Params()) {
    std::vector<const char*> values;
    std::vector<int> lengths, formats;
    for (int i = 0; i < params.size(); ++i) {
      values.push_back(params.null(i) ? nullptr : params.value(i).data());
      lengths.push_back(static_cast<int>(params.value(i).size()));
      formats.push_back(params.format(i));
    }
    Result result(PQexecParams(conn_, sql, params.size(), nullptr, values.data(), lengths.data(), formats.data(), 1));
    return Check(std::move(result), sql);
  }
  // Several statements in one string, no parameters.
  Status ExecScript(const char* sql) { return Check(Result(PQexec(conn_, sql)), sql).status(); }

  bool broken() const { return PQstatus(conn_) != CONNECTION_OK; }
  // The last failure leaves nothing committed and running again may succeed.
  bool retryable() const { return retryable_; }
  void ClearFailure() { retryable_ = false; }

 private:
  explicit Connection(PGconn* conn) : conn_(conn) {}

  static void OnNotice(void*, const char* message) { LogWarning("PostgreSQL: " + Trimmed(message)); }

  static std::string Trimmed(const char* text) {
    std::string message = text ? text : "";
    while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
    return message;
  }

  StatusOr<Result> Check(Result result, const char* sql) {
    PGresult* raw = result.raw();
    ExecStatusType status = raw ? PQresultStatus(raw) : PGRES_FATAL_ERROR;
    if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return result;
    const char* code = raw ? PQresultErrorField(raw, PG_DIAG_SQLSTATE) : nullptr;
    std::string sqlstate = code ? code : "";
    std::string message = Trimmed(raw ? PQresultErrorMessage(raw) : PQerrorMessage(conn_));
    if (message.empty()) message = Trimmed(PQerrorMessage(conn_));
    // 40001 serialization failure, 40P01 deadlock: the server rolled back.
    retryable_ = broken() || sqlstate == "40001" || sqlstate == "40P01";
    std::string what = std::string(sql).substr(0, 60);
    if (broken()) {
      return Status(StatusCode::kUnavailable, "STORE_UNAVAILABLE", "PostgreSQL connection lost: " + message);
    }
    return Internal("STORE_ERROR",
                    "PostgreSQL " + (sqlstate.empty() ? "" : sqlstate + " ") + "in '" + what + "': " + message);
  }

  PGconn* conn_;
  bool retryable_ = false;
};

namespace {

using Connection = PostgresJobStore::Connection;

StatusOr<std::optional<std::pair<v1::Job, std::string>>> LockJob(Connection& db, const std::string& job_id) {
  QUANTD_ASSIGN_OR_RETURN(auto result, db.Exec(kLockJob, Params().Text(job_id)));
  if (result.rows() == 0) return std::optional<std::pair<v1::Job, std::string>>();
  QUANTD_ASSIGN_OR_RETURN(auto job, ParseJob(result, 0, 0));
  return std::optional<std::pair<v1::Job, std::string>>(std::make_pair(std::move(job), result.Bytes(0, 1)));
}

// lease_ttl_ms > 0 starts a lease of that length on the database clock;
// 0 clears it.
Status SaveJob(Connection& db, const v1::Job& job, const std::string& lease_id, int64_t lease_ttl_ms) {
  return db
      .Exec(kSaveJob,
            Params().Text(job.id()).Int(job.state()).Text(lease_id).Int(lease_ttl_ms).Bytes(job.SerializeAsString()))
      .status();
}

Status SaveProto(Connection& db, const v1::Job& job) {
  return db.Exec(kSaveProto, Params().Text(job.id()).Bytes(job.SerializeAsString())).status();
}

StatusOr<v1::JobEvent> Append(Connection& db, const std::string& job_id, v1::JobEvent event) {
  if (event.unix_ms() == 0) event.set_unix_ms(UnixMillisNow());
  event.set_seq(0);
  QUANTD_ASSIGN_OR_RETURN(auto result, db.Exec(kAppendEvent, Params().Text(job_id).Bytes(event.SerializeAsString())));
  if (result.rows() == 0) return JobNotFound(job_id);
  event.set_seq(result.Int(0, 0));
  return event;
}

}  // namespace

PostgresJobStore::PostgresJobStore(std::string dsn, int max_connections)
    : dsn_(std::move(dsn)), max_connections_(max_connections < 1 ? 1 : max_connections) {}

PostgresJobStore::~PostgresJobStore() = default;

StatusOr<std::unique_ptr<PostgresJobStore>> PostgresJobStore::Open(const std::string& dsn, int max_connections) {
  std::unique_ptr<PostgresJobStore> store(new PostgresJobStore(dsn, max_connections));
  QUANTD_ASSIGN_OR_RETURN(auto connection, store->Acquire());
  if (auto status = connection->ExecScript(kSchema); !status.ok()) {
    (void)connection->ExecScript("ROLLBACK");
    return Status(status.code(), "STORE_OPEN_FAILED", "cannot create the job tables: " + status.message());
  }
  store->Release(std::move(connection));
  return store;
}

StatusOr<std::unique_ptr<PostgresJobStore::Connection>> PostgresJobStore::Acquire() {
  {
    std::unique_lock lock(mutex_);
    bool ready = released_.wait_for(lock, kAcquireTimeout, [&] { return !idle_.empty() || open_ < max_connections_; });
    if (!ready) {
      return Status(StatusCode::kUnavailable, "STORE_BUSY",
                    "all " + std::to_string(max_connections_) + " PostgreSQL connections stayed busy");
    }
    if (!idle_.empty()) {
      auto connection = std::move(idle_.back());
      idle_.pop_back();
      return connection;
    }
    ++open_;
  }
  // Connecting takes a round trip or more; other callers go on meanwhile.
  auto connection = Connection::Connect(dsn_);
  if (!connection.ok()) {
    std::lock_guard lock(mutex_);
    --open_;
    released_.notify_one();
  }
  return connection;
}

void PostgresJobStore::Release(std::unique_ptr<Connection> connection) {
  {
    std::lock_guard lock(mutex_);
    if (connection->broken()) {
      // A lost connection usually means the server restarted or failed
      // over, and then every idle one is dead too: drop them all rather
      // than spending the caller's retries on them one by one.
      open_ -= 1 + static_cast<int>(idle_.size());
      idle_.clear();
    } else {
      idle_.push_back(std::move(connection));
    }
  }
  released_.notify_all();
}

Status PostgresJobStore::Run(bool transaction, const std::function<Status(Connection&)>& body) {
  for (int run = 1;; ++run) {
    QUANTD_ASSIGN_OR_RETURN(auto connection, Acquire());
    connection->ClearFailure();
    Status status = transaction ? connection->Exec("BEGIN").status() : Status::Ok();
    if (status.ok()) status = body(*connection);
    if (status.ok() && transaction) {
      status = connection->Exec("COMMIT").status();
      // A connection lost during COMMIT leaves the outcome unknown: the
      // caller hears about it rather than risking the work twice.
      if (!status.ok() && connection->broken()) {
        Release(std::move(connection));
        return status;
      }
    }
    if (status.ok()) {
      Release(std::move(connection));
      return status;
    }
    bool again = connection->retryable() && run < kMaxRuns;
    if (transaction && !connection->broken()) (void)connection->Exec("ROLLBACK");
    Release(std::move(connection));
    if (!again) return status;
  }
}

StatusOr<std::pair<v1::Job, bool>> PostgresJobStore::CreateJob(v1::Job job) {
  job.set_state(v1::JOB_STATE_QUEUED);
  if (job.tenant().empty()) job.set_tenant(kDefaultTenant);
  if (job.created_unix_ms() == 0) job.set_created_unix_ms(UnixMillisNow());
  std::pair<v1::Job, bool> outcome;
  auto status = Run(true, [&](Connection& db) -> Status {
    QUANTD_ASSIGN_OR_RETURN(auto inserted, db.Exec(kInsertJob, Params()
                                                                   .Text(job.id())
                                                                   .Text(job.request_id())
                                                                   .Int(job.state())
                                                                   .Int(job.device())
                                                                   .Int(job.priority())
                                                                   .Int(job.created_unix_ms())
                                                                   .Bytes(job.SerializeAsString())
                                                                   .Text(job.tenant())));
    if (inserted.rows() == 0) {
      // ON CONFLICT waited for any concurrent insert of the same request
      // to commit, and this statement's fresh snapshot sees it.
      QUANTD_ASSIGN_OR_RETURN(auto existing, db.Exec(kFindRequest, Params().Text(job.request_id()).Text(job.tenant())));
      if (existing.rows() == 0) return Internal("STORE_ERROR", "job id " + job.id() + " is already taken");
      QUANTD_ASSIGN_OR_RETURN(auto found, ParseJob(existing, 0, 0));
      outcome = {std::move(found), true};
      return Status::Ok();
    }
    QUANTD_RETURN_IF_ERROR(Append(db, job.id(), StateEvent(v1::JOB_STATE_QUEUED, "", "queued")).status());
    outcome = {job, false};
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return outcome;
}

StatusOr<v1::Job> PostgresJobStore::GetJob(const std::string& job_id) {
  v1::Job job;
  auto status = Run(false, [&](Connection& db) -> Status {
    QUANTD_ASSIGN_OR_RETURN(auto result, db.Exec(kGetJob, Params().Text(job_id)));
    if (result.rows() == 0) return JobNotFound(job_id);
    QUANTD_ASSIGN_OR_RETURN(job, ParseJob(result, 0, 0));
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return job;
}

StatusOr<JobPage> PostgresJobStore::ListJobs(const std::string& tenant, const std::vector<v1::JobState>& states,
                                             int page_size, const std::string& page_token) {
  page_size = ClampPageSize(page_size);
  QUANTD_ASSIGN_OR_RETURN(auto cursor, ParsePageToken(page_token));
  Params params;
  params.Int(StateMask(states));
  if (cursor) {
    params.Int(cursor->created_ms).Text(cursor->id);
  } else {
    params.Null().Null();
  }
  params.Int(static_cast<int64_t>(page_size) + 1).Text(tenant);
  JobPage page;
  auto status = Run(false, [&](Connection& db) -> Status {
    page = JobPage();
    QUANTD_ASSIGN_OR_RETURN(auto result, db.Exec(kListJobs, params));
    for (int row = 0; row < result.rows(); ++row) {
      if (static_cast<int>(page.jobs.size()) == page_size) {
        page.next_page_token = PageTokenAfter(page.jobs.back());
        break;
      }
      QUANTD_ASSIGN_OR_RETURN(auto job, ParseJob(result, row, 0));
      page.jobs.push_back(std::move(job));
    }
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return page;
}

StatusOr<v1::JobEvent> PostgresJobStore::AppendEvent(const std::string& job_id, v1::JobEvent event) {
  v1::JobEvent stored;
  auto status = Run(true, [&](Connection& db) -> Status {
    QUANTD_ASSIGN_OR_RETURN(stored, Append(db, job_id, event));
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return stored;
}

StatusOr<std::vector<v1::JobEvent>> PostgresJobStore::EventsAfter(const std::string& job_id, int64_t after_seq,
                                                                  int limit) {
  std::vector<v1::JobEvent> events;
  auto status = Run(false, [&](Connection& db) -> Status {
    events.clear();
    QUANTD_ASSIGN_OR_RETURN(auto result,
                            db.Exec(kEventsAfter, Params().Text(job_id).Int(after_seq).Int(limit < 0 ? 0 : limit)));
    for (int row = 0; row < result.rows(); ++row) {
      v1::JobEvent event;
      if (!event.ParseFromString(result.Bytes(row, 1))) {
        return DataLoss("STORE_CORRUPT", "stored event is unreadable");
      }
      event.set_seq(result.Int(row, 0));
      events.push_back(std::move(event));
    }
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return events;
}

StatusOr<std::optional<LeasedJob>> PostgresJobStore::LeaseNext(v1::DeviceClass worker_device,
                                                               const std::string& worker_id, int64_t lease_ttl_ms) {
  std::optional<LeasedJob> leased;
  auto status = Run(true, [&](Connection& db) -> Status {
    leased.reset();
    QUANTD_ASSIGN_OR_RETURN(
        auto picked,
        db.Exec(kPickNext, Params().Int(worker_device).Int(v1::DEVICE_CLASS_ANY).Int(v1::DEVICE_CLASS_UNSPECIFIED)));
    if (picked.rows() == 0) return Status::Ok();
    QUANTD_ASSIGN_OR_RETURN(auto job, ParseJob(picked, 0, 0));
    auto event = StartAttempt(job, worker_id);
    std::string lease_id = NewId("lease-");
    QUANTD_RETURN_IF_ERROR(SaveJob(db, job, lease_id, lease_ttl_ms < 1 ? 1 : lease_ttl_ms));
    QUANTD_RETURN_IF_ERROR(Append(db, job.id(), std::move(event)).status());
    leased = LeasedJob{std::move(job), std::move(lease_id)};
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return leased;
}

StatusOr<v1::Job> PostgresJobStore::RenewLease(const std::string& job_id, const std::string& lease_id,
                                               int64_t lease_ttl_ms) {
  v1::Job job;
  auto status = Run(false, [&](Connection& db) -> Status {
    QUANTD_ASSIGN_OR_RETURN(auto renewed, db.Exec(kRenewLease, Params().Text(job_id).Text(lease_id).Int(lease_ttl_ms)));
    if (renewed.rows() == 0) {
      QUANTD_ASSIGN_OR_RETURN(auto exists, db.Exec(kJobExists, Params().Text(job_id)));
      return exists.rows() == 0 ? JobNotFound(job_id) : LeaseLost(job_id);
    }
    QUANTD_ASSIGN_OR_RETURN(job, ParseJob(renewed, 0, 0));
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return job;
}

StatusOr<v1::Job> PostgresJobStore::Heartbeat(const std::string& job_id, const std::string& lease_id,
                                              int64_t lease_ttl_ms, const std::vector<v1::JobEvent>& events) {
  v1::Job renewed;
  auto status = Run(true, [&](Connection& db) -> Status {
    QUANTD_ASSIGN_OR_RETURN(auto locked, LockJob(db, job_id));
    if (!locked) return JobNotFound(job_id);
    auto& [job, current] = *locked;
    if (current != lease_id || job.state() != v1::JOB_STATE_RUNNING) return LeaseLost(job_id);
    for (const auto& event : events) {
      if (!IsWorkerEvent(event)) continue;
      if (event.has_progress()) ApplyProgress(job, event.progress().stage(), event.progress().fraction());
      QUANTD_RETURN_IF_ERROR(Append(db, job_id, event).status());
    }
    QUANTD_RETURN_IF_ERROR(SaveJob(db, job, lease_id, lease_ttl_ms < 1 ? 1 : lease_ttl_ms));
    renewed = std::move(job);
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return renewed;
}

Status PostgresJobStore::UpdateProgress(const std::string& job_id, const std::string& stage, double fraction) {
  return Run(true, [&](Connection& db) -> Status {
    QUANTD_ASSIGN_OR_RETURN(auto locked, LockJob(db, job_id));
    if (!locked) return JobNotFound(job_id);
    if (!ApplyProgress(locked->first, stage, fraction)) return Status::Ok();
    return SaveProto(db, locked->first);
  });
}

Status PostgresJobStore::AddArtifact(const std::string& job_id, const std::string& lease_id,
                                     const v1::Artifact& artifact) {
  return Run(true, [&](Connection& db) -> Status {
    QUANTD_ASSIGN_OR_RETURN(auto locked, LockJob(db, job_id));
    if (!locked) return JobNotFound(job_id);
    auto& [job, current] = *locked;
    if (current != lease_id || job.state() != v1::JOB_STATE_RUNNING) return LeaseLost(job_id);
    PutArtifact(job, artifact);
    QUANTD_RETURN_IF_ERROR(SaveProto(db, job));
    v1::JobEvent event;
    *event.mutable_artifact() = artifact;
    return Append(db, job_id, std::move(event)).status();
  });
}

StatusOr<v1::Job> PostgresJobStore::Complete(const std::string& job_id, const std::string& lease_id) {
  v1::Job done;
  auto status = Run(true, [&](Connection& db) -> Status {
    QUANTD_ASSIGN_OR_RETURN(auto locked, LockJob(db, job_id));
    if (!locked) return JobNotFound(job_id);
    auto& [job, current] = *locked;
    if (current != lease_id || job.state() != v1::JOB_STATE_RUNNING) return LeaseLost(job_id);
    auto event = Succeed(job);
    QUANTD_RETURN_IF_ERROR(SaveJob(db, job, "", 0));
    QUANTD_RETURN_IF_ERROR(Append(db, job_id, std::move(event)).status());
    done = std::move(job);
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return done;
}

StatusOr<v1::Job> PostgresJobStore::Fail(const std::string& job_id, const std::string& lease_id,
                                         const std::string& reason, const std::string& message, bool retryable,
                                         int max_attempts) {
  v1::Job failed;
  auto status = Run(true, [&](Connection& db) -> Status {
    QUANTD_ASSIGN_OR_RETURN(auto locked, LockJob(db, job_id));
    if (!locked) return JobNotFound(job_id);
    auto& [job, current] = *locked;
    if (current != lease_id || job.state() != v1::JOB_STATE_RUNNING) return LeaseLost(job_id);
    auto event = FailAttempt(job, reason, message, retryable, max_attempts);
    QUANTD_RETURN_IF_ERROR(SaveJob(db, job, "", 0));
    QUANTD_RETURN_IF_ERROR(Append(db, job_id, std::move(event)).status());
    failed = std::move(job);
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return failed;
}

StatusOr<v1::Job> PostgresJobStore::RequestCancel(const std::string& job_id) {
  v1::Job result;
  auto status = Run(true, [&](Connection& db) -> Status {
    QUANTD_ASSIGN_OR_RETURN(auto locked, LockJob(db, job_id));
    if (!locked) return JobNotFound(job_id);
    auto& [job, current] = *locked;
    if (!IsTerminal(job.state())) {
      auto event = job_rules::RequestCancel(job);
      if (IsTerminal(job.state())) {
        QUANTD_RETURN_IF_ERROR(SaveJob(db, job, "", 0));
      } else {
        QUANTD_RETURN_IF_ERROR(SaveProto(db, job));
      }
      QUANTD_RETURN_IF_ERROR(Append(db, job_id, std::move(event)).status());
    }
    result = std::move(job);
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return result;
}

StatusOr<std::vector<ExpiredLease>> PostgresJobStore::ExpireLeases(int max_attempts) {
  std::vector<ExpiredLease> expired;
  auto status = Run(true, [&](Connection& db) -> Status {
    expired.clear();
    // Rows another replica is expiring right now, or whose worker is
    // renewing right now, are skipped rather than waited for.
    QUANTD_ASSIGN_OR_RETURN(auto result, db.Exec(kExpired, Params().Int(kExpireBatch)));
    for (int row = 0; row < result.rows(); ++row) {
      QUANTD_ASSIGN_OR_RETURN(auto job, ParseJob(result, row, 0));
      v1::JobEvent event;
      auto lease = ExpireLease(job, max_attempts, event);
      QUANTD_RETURN_IF_ERROR(SaveJob(db, job, "", 0));
      QUANTD_RETURN_IF_ERROR(Append(db, job.id(), std::move(event)).status());
      expired.push_back(std::move(lease));
    }
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return expired;
}

StatusOr<std::vector<std::pair<v1::JobState, int64_t>>> PostgresJobStore::CountByState() {
  std::vector<std::pair<v1::JobState, int64_t>> counts;
  auto status = Run(false, [&](Connection& db) -> Status {
    counts.clear();
    QUANTD_ASSIGN_OR_RETURN(auto result, db.Exec(kCountByState));
    for (int row = 0; row < result.rows(); ++row) {
      counts.emplace_back(static_cast<v1::JobState>(result.Int(row, 0)), result.Int(row, 1));
    }
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return counts;
}

StatusOr<std::vector<std::pair<v1::DeviceClass, int64_t>>> PostgresJobStore::QueueDepthByDevice() {
  std::vector<std::pair<v1::DeviceClass, int64_t>> counts;
  auto status = Run(false, [&](Connection& db) -> Status {
    counts.clear();
    QUANTD_ASSIGN_OR_RETURN(auto result, db.Exec(kQueueDepth));
    for (int row = 0; row < result.rows(); ++row) {
      counts.emplace_back(static_cast<v1::DeviceClass>(result.Int(row, 0)), result.Int(row, 1));
    }
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return counts;
}

}  // namespace quantd::server
