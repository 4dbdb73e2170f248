#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "common/status.h"

namespace quantd::server {

enum class JobStoreBackend {
  kSqlite,    // one file under data_dir; one quantd process
  kPostgres,  // shared by every quantd replica that names the same database
};

// Settings of the quantd process. Embedded defaults work with no file:
// loopback only, data under ./quantd-data, one local worker per core.
struct ServerConfig {
  std::string listen = "127.0.0.1:50051";
  std::filesystem::path data_dir = "quantd-data";
  int local_workers = -1;  // -1: number of cores
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
};

// Reads quantd.yaml; unknown keys and wrong types are errors naming the key.
Status LoadServerConfigFile(const std::filesystem::path& file, ServerConfig& config);

}  // namespace quantd::server
