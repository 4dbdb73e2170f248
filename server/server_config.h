#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "common/status.h"

namespace quantd::server {

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
};

// Reads quantd.yaml; unknown keys and wrong types are errors naming the key.
Status LoadServerConfigFile(const std::filesystem::path& file, ServerConfig& config);

}  // namespace quantd::server
