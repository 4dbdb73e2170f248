#include "server/server_config.h"

#include <yaml-cpp/yaml.h>

#include <functional>
#include <map>

#include "common/files.h"

namespace quantd::server {
namespace {

Status WrongType(const std::string& key, const std::string& expected) {
  return InvalidArgument("SERVER_CONFIG_WRONG_TYPE", "quantd.yaml: " + key + " must be " + expected);
}

}  // namespace

Status LoadServerConfigFile(const std::filesystem::path& file, ServerConfig& config) {
  QUANTD_ASSIGN_OR_RETURN(auto text, ReadFile(file, 1 << 20));
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return InvalidArgument("SERVER_CONFIG_SYNTAX", file.string() + ": " + e.what());
  }
  if (root.IsNull()) return Status::Ok();
  if (!root.IsMap()) return InvalidArgument("SERVER_CONFIG_SYNTAX", file.string() + ": top level must be a mapping");

  using Setter = std::function<Status(const YAML::Node&, const std::string&)>;
  auto string_setter = [](std::string& field) -> Setter {
    return [&field](const YAML::Node& node, const std::string& key) {
      if (!node.IsScalar()) return WrongType(key, "a string");
      field = node.as<std::string>();
      return Status::Ok();
    };
  };
  auto path_setter = [](std::filesystem::path& field) -> Setter {
    return [&field](const YAML::Node& node, const std::string& key) {
      if (!node.IsScalar()) return WrongType(key, "a path");
      field = node.as<std::string>();
      return Status::Ok();
    };
  };
  auto int_setter = [](auto& field, int64_t min, int64_t max) -> Setter {
    return [&field, min, max](const YAML::Node& node, const std::string& key) {
      int64_t value;
      try {
        value = node.as<int64_t>();
      } catch (const YAML::Exception&) {
        return WrongType(key, "an integer");
      }
      if (value < min || value > max) {
        return InvalidArgument("SERVER_CONFIG_OUT_OF_RANGE", "quantd.yaml: " + key + " = " + std::to_string(value) +
                                                                 " is outside " + std::to_string(min) + ".." +
                                                                 std::to_string(max));
      }
      field = static_cast<std::remove_reference_t<decltype(field)>>(value);
      return Status::Ok();
    };
  };
  int64_t lease_ttl_seconds = config.lease_ttl_ms / 1000;
  std::string log_format = config.log_json ? "json" : "text";
  std::string job_store = config.job_store == JobStoreBackend::kPostgres ? "postgres" : "sqlite";
  const std::map<std::string, Setter> setters = {
      {"listen", string_setter(config.listen)},
      {"data_dir", path_setter(config.data_dir)},
      {"local_workers", int_setter(config.local_workers, 0, 256)},
      {"metrics_listen", string_setter(config.metrics_listen)},
      {"lease_ttl_seconds", int_setter(lease_ttl_seconds, 1, 3600)},
      {"max_attempts", int_setter(config.max_attempts, 1, 100)},
      {"worker_heartbeat_ms", int_setter(config.worker_heartbeat_ms, 50, 60000)},
      {"calibration_root", path_setter(config.calibration_root)},
      {"max_upload_bytes", int_setter(config.max_upload_bytes, 1, int64_t{1} << 40)},
      {"worker_binary", path_setter(config.worker_binary)},
      {"log_format", string_setter(log_format)},
      {"job_store", string_setter(job_store)},
      {"postgres_dsn", string_setter(config.postgres_dsn)},
      {"postgres_connections", int_setter(config.postgres_connections, 1, 256)},
  };
  for (const auto& entry : root) {
    auto key = entry.first.as<std::string>();
    auto setter = setters.find(key);
    if (setter == setters.end()) {
      std::string known;
      for (const auto& [name, unused] : setters) known += (known.empty() ? "" : ", ") + name;
      return InvalidArgument("SERVER_CONFIG_UNKNOWN_KEY", "quantd.yaml: unknown key '" + key + "'; known: " + known);
    }
    QUANTD_RETURN_IF_ERROR(setter->second(entry.second, key));
  }
  if (log_format != "json" && log_format != "text") {
    return InvalidArgument("SERVER_CONFIG_OUT_OF_RANGE", "quantd.yaml: log_format must be text or json");
  }
  config.log_json = log_format == "json";
  if (job_store != "sqlite" && job_store != "postgres") {
    return InvalidArgument("SERVER_CONFIG_OUT_OF_RANGE",
                           "quantd.yaml: job_store must be sqlite or postgres, got '" + job_store + "'");
  }
  config.job_store = job_store == "postgres" ? JobStoreBackend::kPostgres : JobStoreBackend::kSqlite;
  if (config.job_store == JobStoreBackend::kPostgres && config.postgres_dsn.empty()) {
    return InvalidArgument("SERVER_CONFIG_MISSING_KEY", "quantd.yaml: job_store: postgres needs postgres_dsn");
  }
  config.lease_ttl_ms = lease_ttl_seconds * 1000;
  return Status::Ok();
}

}  // namespace quantd::server
