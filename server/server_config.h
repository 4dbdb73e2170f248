#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/input_limits.h"
#include "common/status.h"

namespace quantd::server {

enum class JobStoreBackend {
  kSqlite,    // one file under data_dir; one quantd process
  kPostgres,  // shared by every quantd replica that names the same database
};

// A tenant's bearer token, stored only as its SHA-256.
struct TenantToken {
  std::string tenant;
  std::string sha256;  // lowercase hex of the token's bytes
};

// Settings of the quantd process. Embedded defaults work with no file:
// loopback only, data under ./quantd-data, one local worker per core.
struct ServerConfig {
  std::string listen = "127.0.0.1:50051";
  std::filesystem::path data_dir = "quantd-data";
  int local_workers = -1;                         // -1: number of cores
  std::string metrics_listen = "127.0.0.1:9464";  // empty: no metrics endpoint
  int64_t lease_ttl_ms = 15000;
  int worker_heartbeat_ms = 1000;  // passed to local workers
  int max_attempts = 3;
  std::filesystem::path calibration_root;  // empty: server-side paths refused
  int64_t max_upload_bytes = 4LL << 30;
  std::filesystem::path worker_binary;  // empty: quantd-worker beside quantd
  bool log_json = false;
  std::filesystem::path ready_file;  // written once serving: {"listen":..,"metrics":..}
  JobStoreBackend job_store = JobStoreBackend::kSqlite;
  // libpq connection string ("host=... dbname=..." or a postgresql:// URI).
  // Leave the password out: libpq reads PGPASSWORD / PGPASSFILE, which can
  // come from a secret instead of this file.
  std::string postgres_dsn;
  int postgres_connections = 8;  // pool size per quantd process

  // Authentication: with any tenant token configured, every QuantService
  // call needs one and sees only its tenant's jobs and blobs.
  std::vector<TenantToken> tenant_tokens;
  // Credentials of remote workers (SHA-256 of each token). Local workers
  // get a credential of their own from the server at start.
  std::vector<std::string> worker_token_sha256;
  // Without authentication quantd listens on loopback only, unless this says
  // the network in between is trusted.
  bool allow_insecure_remote = false;

  // TLS: certificate chain and key in PEM. With tls_client_ca set, clients
  // must present a certificate signed by it (mutual TLS).
  std::filesystem::path tls_cert;
  std::filesystem::path tls_key;
  std::filesystem::path tls_client_ca;

  // Per-job resource limits: the defaults a job gets and the most it may ask
  // for. 0 means no limit.
  int64_t job_memory_limit_bytes = 0;
  int64_t max_job_memory_limit_bytes = 0;
  int job_time_limit_seconds = 0;
  int max_job_time_limit_seconds = 0;

  // Untrusted input (quantd.yaml `limits`): the server refuses blobs over the
  // size limits at submit, and hands all of them to the worker with each job.
  InputLimits input_limits;

  bool auth_enabled() const { return !tenant_tokens.empty(); }
  bool tls_enabled() const { return !tls_cert.empty(); }
};

// Reads quantd.yaml; unknown keys and wrong types are errors naming the key.
Status LoadServerConfigFile(const std::filesystem::path& file, ServerConfig& config);

// Consistency checks across keys, run after the file and the flags are
// applied: duplicate tokens, TLS files, limits, and the refusal to listen
// beyond loopback without authentication.
Status ValidateServerConfig(const ServerConfig& config);

// Tenant names: 1-63 letters, digits, '-', '_' or '.', not leading '.'
// (they name files in the blob store).
bool IsTenantName(const std::string& name);

// Whether a listen address (host:port) only accepts local connections.
bool IsLoopbackListen(const std::string& listen);

}  // namespace quantd::server
